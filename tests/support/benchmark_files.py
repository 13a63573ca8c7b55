"""Small benchmark files in each benchmark's published format, written by the tests (no download):
LLaVA's question files, the benchmarks' own ground truth, images, and answers files in LLaVA's
format. The records copy the published files' shapes (ids, field names, suffixes, folder layouts)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def image(path: Path, colour: str = "red", size: tuple[int, int] = (40, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.name


def png_base64(colour: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def answers(path: Path, pairs: list[tuple], **extra) -> Path:
    """LLaVA's answers file from (question_id, text) or (question_id, prompt, text) tuples."""
    lines = []
    for pair in pairs:
        qid, prompt, text = pair if len(pair) == 3 else (pair[0], "", pair[1])
        lines.append(
            {
                "question_id": qid,
                "prompt": prompt,
                "text": text,
                "answer_id": "x",
                "model_id": "m",
                "metadata": {},
                **extra,
            }
        )
    return jsonl(path, lines)


# -- POPE: LLaVA's question file in three category blocks; POPE's label files (JSON lines) --

POPE_LABELS = {
    "adversarial": [
        ("a.jpg", "dog", "yes"),
        ("a.jpg", "cat", "no"),
        ("b.jpg", "car", "yes"),
        ("b.jpg", "bus", "no"),
    ],
    "popular": [("a.jpg", "dog", "yes"), ("b.jpg", "tree", "no")],
    "random": [("b.jpg", "car", "yes"), ("a.jpg", "boat", "no")],
}
POPE_FIRST_ID = {"adversarial": 1, "random": 10000001, "popular": 20000001}


def pope(root: Path) -> dict[str, Path]:
    for name, colour in (("a.jpg", "red"), ("b.jpg", "blue")):
        image(root / "val2014" / name, colour)
    questions = []
    for split, labels in POPE_LABELS.items():
        lines = [
            {
                "question_id": n,
                "image": img,
                "text": f"Is there a {obj} in the image?",
                "label": label,
            }
            for n, (img, obj, label) in enumerate(labels, 1)
        ]
        jsonl(root / "coco" / f"coco_pope_{split}.json", lines)
        for n, line in enumerate(lines):
            questions.append(
                {
                    "question_id": POPE_FIRST_ID[split] + n,
                    "image": line["image"],
                    "text": line["text"] + SHORT,
                    "category": split,
                }
            )
    return {
        "questions": jsonl(root / "llava_pope_test.jsonl", questions),
        "annotations": root / "coco",
        "images": root / "val2014",
    }


# -- MME: LLaVA's llava_mme.jsonl; MME_Benchmark_release_version in both of its layouts --

MME_TRUTH = {  # subtask -> image -> [(question, answer), (question, answer)]
    "existence": {
        "000000006040.jpg": [
            ("Is there a train in this image?", "Yes"),
            ("Is there a bed in this image?", "No"),
        ],
        "000000044279.jpg": [("Is there a cat?", "Yes"), ("Is there a dog?", "No")],
    },
    "artwork": {
        "10002.jpg": [
            ("Does this artwork exist in the form of painting?", "Yes"),
            ("Does this artwork exist in the form of glassware?", "No"),
        ]
    },
    "code_reasoning": {
        "0020.png": [
            ("Is a python code shown in the picture?", "Yes"),
            ("Is a c++ code shown in the picture?", "No"),
        ]
    },
}
NESTED = ("artwork", "celebrity", "landmark", "posters", "scene")


def mme(root: Path) -> dict[str, Path]:
    release = root / "MME_Benchmark_release_version"
    questions = []
    for subtask, images in MME_TRUTH.items():
        for name, pairs in images.items():
            nested = subtask in NESTED
            folder = release / subtask / ("images" if nested else "")
            qa = release / subtask / ("questions_answers_YN" if nested else "")
            image(folder / name, "green")
            qa.mkdir(parents=True, exist_ok=True)
            (qa / (name.split(".")[0] + ".txt")).write_text(
                "".join(f"{q} Please answer yes or no.\t{a}\n" for q, a in pairs)
            )
            path = f"{subtask}/images/{name}" if nested else f"{subtask}/{name}"
            questions += [
                {"question_id": path, "image": path, "text": q + SHORT, "category": subtask}
                for q, _ in pairs
            ]
    return {"questions": jsonl(root / "llava_mme.jsonl", questions), "annotations": release}


# -- MMBench: the dev .tsv, base64 images, options A-D, hint, category, l2-category --

MMBENCH_ROWS = [
    # index, question, hint, options, answer, category, l2
    (
        0,
        "What color is the square?",
        "nan",
        ["red", "green", "blue", "black"],
        "A",
        "color",
        "FP-S",
    ),
    (1, "Which shape?", "The picture shows one shape.", ["circle", "square"], "B", "shape", "CP"),
    (2, "How many?", "", ["one", "two", "three"], "C", "count", "FP-S"),
]


def mmbench(
    root: Path, rotations: bool = False, with_answers: bool = True, lang: str = "en"
) -> dict[str, Path]:
    """The TSV; ``rotations``: with the shifted rows written out (index + k * 1e6), as LLaVA's
    2023 dev file has them."""
    columns = [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "image",
        "source",
        "l2-category",
        "comment",
        "split",
    ]
    if not with_answers:
        columns.remove("answer")
    lines = ["\t".join(columns)]
    for index, question, hint, options, answer, category, l2 in MMBENCH_ROWS:
        rounds = range(len(options)) if rotations else range(1)
        for k in rounds:
            shifted = options[k:] + options[:k]
            letter = "ABCD"[("ABCD".index(answer) - k) % len(options)]
            cells = {
                "index": str(index + k * 1_000_000),
                "question": question,
                "hint": hint,
                "answer": letter,
                "category": category,
                "image": png_base64("red") if k == 0 else str(index),
                "source": "s",
                "l2-category": l2,
                "comment": "nan",
                "split": "dev",
            }
            cells.update(
                {o: (shifted[i] if i < len(shifted) else "") for i, o in enumerate("ABCD")}
            )
            lines.append("\t".join(cells[c] for c in columns))
    path = root / f"mmbench_dev_{lang}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return {"questions": path}


# -- ScienceQA: LLaVA's llava_test_CQM-A.json; problems.json, pid_splits.json --

SQA_PROBLEMS = {
    "4": {
        "question": "Which figure of speech is used?",
        "choices": ["chiasmus", "apostrophe"],
        "answer": 1,
        "hint": "",
        "image": None,
        "subject": "language science",
    },
    "11": {
        "question": "What is the name of the colony shown?",
        "choices": ["Maryland", "New Hampshire", "Rhode Island", "Vermont"],
        "answer": 1,
        "hint": "",
        "image": "image.png",
        "subject": "social science",
    },
    "12": {
        "question": "Which animal's feet are adapted?",
        "choices": ["duck", "cat", "dog"],
        "answer": 0,
        "hint": "Ducks swim.",
        "image": "image.png",
        "subject": "natural science",
    },
    "13": {
        "question": "Which is a solid?",
        "choices": ["milk", "rock"],
        "answer": 1,
        "hint": "",
        "image": "image.png",
        "subject": "natural science",
    },
    "99": {
        "question": "Not in the test split",
        "choices": ["a", "b"],
        "answer": 0,
        "hint": "",
        "image": None,
        "subject": "x",
    },
}


def sqa(root: Path) -> dict[str, Path]:
    records = []
    for pid in ("4", "11", "12", "13"):
        p = SQA_PROBLEMS[pid]
        text = (
            (f"Context: {p['hint']}\n" if p["hint"] else "")
            + p["question"]
            + "".join(f"\n{'ABCDE'[i]}. {c}" for i, c in enumerate(p["choices"]))
        )
        record = {
            "id": pid,
            "conversations": [
                {"from": "human", "value": ("<image>\n" if p["image"] else "") + text},
                {"from": "gpt", "value": "ABCDE"[p["answer"]]},
            ],
        }
        if p["image"]:
            record["image"] = f"{pid}/image.png"
            image(root / "images" / "test" / pid / "image.png", "yellow")
        records.append(record)
    root.mkdir(parents=True, exist_ok=True)
    (root / "llava_test_CQM-A.json").write_text(json.dumps(records, indent=1))
    (root / "scienceqa").mkdir(exist_ok=True)
    (root / "scienceqa" / "problems.json").write_text(json.dumps(SQA_PROBLEMS))
    (root / "scienceqa" / "pid_splits.json").write_text(
        json.dumps({"train": ["99"], "test": ["4", "11", "12", "13"]})
    )
    return {
        "questions": root / "llava_test_CQM-A.json",
        "annotations": root / "scienceqa",
        "images": root / "images" / "test",
    }


# -- GQA: LLaVA's question file (string ids); testdev_balanced_questions.json --


def gqa(root: Path) -> dict[str, Path]:
    truth = {
        "201307251": {
            "imageId": "n161313",
            "question": "Is it overcast?",
            "answer": "no",
            "isBalanced": True,
            "types": {"structural": "verify", "semantic": "global"},
        },
        "201640614": {
            "imageId": "n235859",
            "question": "Who is wearing the dress?",
            "answer": "woman",
            "isBalanced": True,
            "types": {"structural": "query", "semantic": "rel"},
        },
        "202225914": {
            "imageId": "n235859",
            "question": "What color is the dress?",
            "answer": "white",
            "isBalanced": True,
            "types": {"structural": "query", "semantic": "attr"},
        },
        "20000000": {
            "imageId": "n161313",
            "question": "Unbalanced?",
            "answer": "yes",
            "isBalanced": False,
            "types": {"structural": "verify", "semantic": "global"},
        },
    }
    image(root / "images" / "n161313.jpg"), image(root / "images" / "n235859.jpg")
    (root / "testdev_balanced_questions.json").write_text(json.dumps(truth))
    questions = [
        {
            "question_id": qid,
            "image": f"{q['imageId']}.jpg",
            "text": q["question"] + SHORT,
            "category": "default",
        }
        for qid, q in truth.items()
    ]
    return {
        "questions": jsonl(root / "llava_gqa_testdev_balanced.jsonl", questions),
        "annotations": root / "testdev_balanced_questions.json",
        "images": root / "images",
    }


# -- TextVQA: LLaVA's question file (image id as question_id, OCR line); TextVQA_0.5.1_val.json --


def textvqa(root: Path) -> dict[str, Path]:
    data = [
        {
            "image_id": "003a8ae2ef43b901",
            "question": "What is the brand of this camera?",
            "answers": ["dakota"] * 7 + ["dakota digital"] * 3,
            "question_id": 34602,
        },
        {
            "image_id": "003a8ae2ef43b901",
            "question": "What does the small white text say?",
            "answers": ["copenhagen"] * 2 + ["thursday"] * 8,
            "question_id": 34603,
        },
        {
            "image_id": "97b1112b17015396",
            "question": "Whats the lowest number yard line that you can see?",
            "answers": ["30"] * 10,
            "question_id": 34604,
        },
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_type": "val", "data": data}))
    (
        image(root / "train_images" / "003a8ae2ef43b901.jpg"),
        image(root / "train_images" / "97b1112b17015396.jpg"),
    )
    ocr = {"003a8ae2ef43b901": "DAKOTA, DIGITAL, Single-Use", "97b1112b17015396": ""}
    questions = [
        {
            "question_id": d["image_id"],
            "image": f"{d['image_id']}.jpg",
            "text": f"{d['question']}\nReference OCR token: {ocr[d['image_id']]}{SHORT}",
            "category": "default",
        }
        for d in data
    ]
    return {
        "questions": jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", questions),
        "annotations": root / "TextVQA_0.5.1_val.json",
        "images": root / "train_images",
    }


# -- VQAv2 val: the VQA API's annotation and question files --


def vqav2(root: Path) -> dict[str, object]:
    def answers_of(*words):
        return [
            {"answer": w, "answer_confidence": "yes", "answer_id": i + 1}
            for i, w in enumerate(words)
        ]

    annotations = [
        {
            "question_id": 262148000,
            "image_id": 262148,
            "question_type": "how many",
            "answer_type": "number",
            "multiple_choice_answer": "2",
            "answers": answers_of(*(["2"] * 9 + ["3"])),
        },
        {
            "question_id": 262148001,
            "image_id": 262148,
            "question_type": "is the",
            "answer_type": "yes/no",
            "multiple_choice_answer": "yes",
            "answers": answers_of(*(["yes"] * 10)),
        },
        {
            "question_id": 393225000,
            "image_id": 393225,
            "question_type": "what color",
            "answer_type": "other",
            "multiple_choice_answer": "red",
            "answers": answers_of(*(["red"] * 2 + ["dark red"] * 8)),
        },
    ]
    questions = [
        {"image_id": a["image_id"], "question": q, "question_id": a["question_id"]}
        for a, q in zip(
            annotations,
            ["How many dogs?", "Is the sky blue?", "What color is the bus?"],
            strict=True,
        )
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "v2_mscoco_val2014_annotations.json").write_text(
        json.dumps({"annotations": annotations})
    )
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(
        json.dumps({"questions": questions})
    )
    for image_id in (262148, 393225):
        image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    return {
        "annotations": [
            root / "v2_mscoco_val2014_annotations.json",
            root / "v2_OpenEnded_mscoco_val2014_questions.json",
        ],
        "images": root / "val2014",
    }
