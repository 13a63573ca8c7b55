"""`stf eval` scoring answers files (no model, no Ray) on small files in each benchmark's
published format, against scores worked out by hand; the submission files of the splits without
public answers; and every kind of bad input, refused with a message naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import benchmark_files as bf
from support.benchmark_files import read_jsonl
from support.eval_runs import eval_spec
from support.report_page import read_page

from pipelines.errors import InputError, MissingInput
from pipelines.eval.job import run, summary_line
from pipelines.eval.spec import EvalSpec


def evaluate(tmp_path: Path, **fields):
    """Runs `stf eval` on an answers file; returns the report."""
    return run(eval_spec(output=tmp_path / "out", **fields))


POPE_ANSWERS = [
    (1, "Yes"),  # adversarial: label yes -> TP
    (2, "No, there is not."),  # label no -> TN
    (3, "no"),  # label yes -> FN
    (4, "There is a dog."),  # label no, read as yes -> FP
    (20000001, "Yes"),  # popular: TP
    (20000002, "No"),  # TN
    (10000001, "yes"),  # random: TP
    (10000002, "Not really"),  # "Not" is not "not": yes -> FP
]


def test_pope_by_hand(tmp_path):
    files = bf.pope(tmp_path / "pope")
    answers = bf.answers(tmp_path / "a.jsonl", POPE_ANSWERS)
    report = evaluate(tmp_path, benchmark="pope", answers=answers, **files)
    # F1 per split: adversarial P = R = 1/2 -> 50; popular 100; random P 1/2, R 1 -> 66.67.
    assert report.breakdown["adversarial"]["f1"] == pytest.approx(50.0)
    assert report.breakdown["popular"]["f1"] == pytest.approx(100.0)
    assert report.breakdown["random"]["f1"] == pytest.approx(200 / 3)
    assert report.score == pytest.approx((50 + 100 + 200 / 3) / 3)
    assert report.breakdown["random"]["yes_ratio"] == 100.0 and report.n == 8
    assert report.unanswered == 0 and report.split == "test"


def test_pope_counts_a_missing_answer_as_wrong_and_says_how_many(tmp_path):
    files = bf.pope(tmp_path / "pope")
    answers = bf.answers(tmp_path / "a.jsonl", [a for a in POPE_ANSWERS if a[0] != 1])
    report = evaluate(tmp_path, benchmark="pope", answers=answers, **files)
    adversarial = report.breakdown["adversarial"]
    assert report.unanswered == 1 and report.n == 8  # the denominator stays
    assert (adversarial["tp"], adversarial["fn"], adversarial["n"]) == (0, 2, 4)
    assert "1 unanswered, counted wrong" in summary_line(
        EvalSpec.model_validate(
            {
                "benchmark": "pope",
                "answers": str(answers),
                **{k: str(v) for k, v in files.items()},
                "output": str(tmp_path / "o"),
            }
        ),
        report,
    )


def test_pope_refuses_a_label_file_of_another_version(tmp_path):
    files = bf.pope(tmp_path / "pope")
    labels = files["annotations"] / "coco_pope_random.json"
    rows = read_jsonl(labels)
    bf.jsonl(labels, [rows[1], rows[0]])  # another order: positional pairing would misalign
    answers = bf.answers(tmp_path / "a.jsonl", POPE_ANSWERS)
    with pytest.raises(InputError, match="random question 1 .* differ"):
        evaluate(tmp_path, benchmark="pope", answers=answers, **files)


@pytest.mark.parametrize(
    "change, message",
    [
        ("category", "category 'unknown', with no label file"),
        ("extra", "more random questions than coco_pope_random.json's 2 labels"),
        ("repeat", "question id 1 repeats"),
    ],
)
def test_pope_refuses_questions_its_labels_cannot_pair(tmp_path, change, message):
    files = bf.pope(tmp_path / "pope")
    rows = read_jsonl(files["questions"])
    if change == "category":
        rows[0]["category"] = "unknown"
    elif change == "extra":
        rows.append({**rows[-1], "question_id": 99})
    else:
        rows[1]["question_id"] = rows[0]["question_id"]
    bf.jsonl(files["questions"], rows)
    answers = bf.answers(tmp_path / "a.jsonl", POPE_ANSWERS)
    with pytest.raises(InputError, match=message):
        evaluate(tmp_path, benchmark="pope", answers=answers, **files)


def test_pope_a_label_line_no_question_asks_is_counted_unanswered(tmp_path):
    files = bf.pope(tmp_path / "pope")
    rows = read_jsonl(files["questions"])
    bf.jsonl(files["questions"], [r for r in rows if r["question_id"] != 4])  # the last one
    answers = bf.answers(tmp_path / "a.jsonl", [a for a in POPE_ANSWERS if a[0] != 4])
    report = evaluate(tmp_path, benchmark="pope", answers=answers, **files)
    assert report.n == 8 and report.unanswered == 1
    assert report.breakdown["adversarial"]["fp"] == 1  # its label is "no": a false positive


def test_mme_by_hand_in_both_folder_layouts(tmp_path):
    files = bf.mme(tmp_path / "mme")
    questions = read_jsonl(files["questions"])
    texts = ["Yes", "No", "yes", "Yes", "Yes", "no", "I think yes", "No"]
    answers = bf.answers(
        tmp_path / "a.jsonl",
        [(q["question_id"], q["text"], t) for q, t in zip(questions, texts, strict=True)],
    )
    report = evaluate(tmp_path, benchmark="mme", answers=answers, annotations=files["annotations"])
    # existence: 3 of 4 right, 1 of 2 images both right -> 75 + 50; artwork 200; code 50 + 0.
    assert report.breakdown["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "n": 4}
    assert report.breakdown["artwork"]["score"] == 200.0
    assert report.breakdown["code_reasoning"]["score"] == 50.0
    assert report.score == 325.0 and report.metrics["cognition"] == 50.0
    assert report.metrics["perception"] == report.score and report.n == 8


def test_mme_without_an_answer_loses_the_image_too(tmp_path):
    files = bf.mme(tmp_path / "mme")
    questions = read_jsonl(files["questions"])
    right = [("Yes", "No"), ("Yes", "No"), ("Yes", "No"), ("Yes", "No")]
    texts = [t for pair in right for t in pair]
    pairs = [(q["question_id"], q["text"], t) for q, t in zip(questions, texts, strict=True)][1:]
    report = evaluate(
        tmp_path,
        benchmark="mme",
        answers=bf.answers(tmp_path / "a.jsonl", pairs),
        annotations=files["annotations"],
    )
    assert report.unanswered == 1
    assert (
        report.breakdown["existence"]["acc"] == 75.0
        and report.breakdown["existence"]["acc_plus"] == 50.0
    )


MMBENCH_ANSWERS = [
    (0, "A"),
    (1000000, "D"),
    (2000000, "C"),
    (3000000, "B"),  # all four rounds right
    (1, "B"),
    (1000001, "B"),  # the second round is wrong: the question is wrong
    (2, "C"),
    (1000002, "The answer is B."),
    (2000002, "one"),  # "one" is option B, not A
]


@pytest.mark.parametrize("rotations", [True, False])
def test_mmbench_circular_by_hand(tmp_path, rotations):
    """The same answers whether the TSV holds its shifted rounds or they are made here."""
    files = bf.mmbench(tmp_path / "mmb", rotations=rotations)
    answers = bf.answers(tmp_path / "a.jsonl", MMBENCH_ANSWERS)
    report = evaluate(tmp_path, benchmark="mmbench", answers=answers, questions=files["questions"])
    assert report.score == pytest.approx(100 / 3) and report.n == 3
    assert report.metrics["first_round_accuracy"] == 100.0
    assert report.breakdown == {
        "color": {"accuracy": 100.0, "n": 1},
        "count": {"accuracy": 0.0, "n": 1},
        "shape": {"accuracy": 0.0, "n": 1},
    }
    assert report.metrics["l2:FP-S"] == 50.0 and report.metrics["l2:CP"] == 0.0


def test_mmbench_a_missing_round_fails_its_question(tmp_path):
    files = bf.mmbench(tmp_path / "mmb")
    answers = bf.answers(tmp_path / "a.jsonl", [a for a in MMBENCH_ANSWERS if a[0] != 3000000])
    report = evaluate(tmp_path, benchmark="mmbench", answers=answers, questions=files["questions"])
    assert report.score == 0.0 and report.unanswered == 1


def test_mmbench_test_split_writes_the_servers_xlsx(tmp_path):
    import pandas as pd

    files = bf.mmbench(tmp_path / "mmb", rotations=True, with_answers=False)
    answers = bf.answers(tmp_path / "a.jsonl", MMBENCH_ANSWERS[:-1])
    report = evaluate(
        tmp_path, benchmark="mmbench", answers=answers, questions=files["questions"], split="test"
    )
    assert report.score is None and report.unanswered == 1 and report.split == "test"
    table = pd.read_excel(report.submission)
    assert list(table.columns) == ["index", "question", "A", "B", "C", "D", "prediction", "split"]
    assert (
        len(table) == 9
        and table.loc[table["index"] == 1000002, "prediction"].item() == "The answer is B."
    )
    assert table.loc[table["index"] == 2000002, "prediction"].isna().item()


def test_scienceqa_by_hand(tmp_path):
    files = bf.sqa(tmp_path / "sqa")
    answers = bf.answers(
        tmp_path / "a.jsonl",
        [("4", "B"), ("11", "B. New Hampshire"), ("12", "A."), ("13", "The answer is B. Because")],
    )
    report = evaluate(
        tmp_path, benchmark="sqa_img", answers=answers, annotations=[files["annotations"]]
    )
    # image problems 11 (right), 12 ("A." is not a letter: wrong), 13 (right); 4 has no image.
    assert report.score == pytest.approx(200 / 3) and report.metrics["accuracy"] == 75.0
    assert report.n == 4 and report.split == "test"


def test_scienceqa_a_letter_beyond_the_choices_and_a_missing_answer_are_wrong(tmp_path):
    files = bf.sqa(tmp_path / "sqa")
    answers = bf.answers(
        tmp_path / "a.jsonl", [("4", "B"), ("11", "The answer is B."), ("12", "D")]
    )
    report = evaluate(
        tmp_path, benchmark="sqa_img", answers=answers, annotations=[files["annotations"]]
    )
    assert report.unanswered == 1 and report.score == pytest.approx(100 / 3)  # 13 unanswered


def test_gqa_textvqa_vqav2_by_hand(tmp_path):
    gqa = bf.gqa(tmp_path / "gqa")
    answers = bf.answers(
        tmp_path / "g.jsonl",
        [("201307251", "No."), ("201640614", "Woman"), ("202225914", "the white")],
    )
    report = evaluate(
        tmp_path / "g", benchmark="gqa", answers=answers, annotations=[gqa["annotations"]]
    )
    assert (
        report.score == pytest.approx(200 / 3) and report.n == 3
    )  # the unbalanced one is not scored
    assert report.metrics["binary"] == 100.0 and report.metrics["open"] == 50.0

    textvqa = bf.textvqa(tmp_path / "tv")
    questions = read_jsonl(textvqa["questions"])
    pairs = [
        (q["question_id"], q["text"], t)
        for q, t in zip(questions, ["Dakota", "Copenhagen", "30."], strict=True)
    ]
    report = evaluate(
        tmp_path / "t",
        benchmark="textvqa",
        answers=bf.answers(tmp_path / "t.jsonl", pairs),
        annotations=[textvqa["annotations"]],
    )
    assert report.score == pytest.approx((1 + 0.6 + 1) / 3 * 100)

    vqa = bf.vqav2(tmp_path / "vqa")
    answers = bf.answers(
        tmp_path / "v.jsonl", [(262148000, "Two"), (262148001, "Yes."), (393225000, "red")]
    )
    report = evaluate(
        tmp_path / "v", benchmark="vqav2", answers=answers, annotations=vqa["annotations"]
    )
    assert report.score == pytest.approx((1 + 1 + 0.6) / 3 * 100) and report.split == "val"
    assert report.metrics["other"] == pytest.approx(60.0) and report.metrics["number"] == 100.0


def test_test_dev_and_test_write_the_evalai_files(tmp_path):
    questions = bf.jsonl(
        tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl",
        [
            {
                "question_id": 262144000,
                "image": "COCO_test2015_000000262144.jpg",
                "text": "Is the ball flying?" + bf.SHORT,
                "category": "default",
            },
            {
                "question_id": 262144001,
                "image": "COCO_test2015_000000262144.jpg",
                "text": "How many?" + bf.SHORT,
                "category": "default",
            },
        ],
    )
    answers = bf.answers(tmp_path / "a.jsonl", [(262144000, "Yes, it is."), (262144001, "Two")])
    report = evaluate(tmp_path / "v", benchmark="vqav2", answers=answers, questions=questions)
    assert report.score is None and report.split == "test-dev"
    assert json.loads(Path(report.submission).read_text()) == [
        {"question_id": 262144000, "answer": "yes it is"},
        {"question_id": 262144001, "answer": "2"},
    ]
    vizwiz = bf.jsonl(
        tmp_path / "llava_test.jsonl",
        [
            {
                "question_id": 0,
                "image": "VizWiz_test_00000000.jpg",
                "text": "What is this?",
                "category": "default",
            }
        ],
    )
    answers = bf.answers(tmp_path / "w.jsonl", [(0, "Unanswerable")])
    report = evaluate(tmp_path / "w", benchmark="vizwiz", answers=answers, questions=vizwiz)
    assert json.loads(Path(report.submission).read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"}
    ]


def test_the_report_page_shows_the_reports_numbers(tmp_path):
    files = bf.pope(tmp_path / "pope")
    report = evaluate(
        tmp_path, benchmark="pope", answers=bf.answers(tmp_path / "a.jsonl", POPE_ANSWERS), **files
    )
    page = read_page((tmp_path / "out" / "report.html").read_text())
    assert page.values[("score", "headline")] == report.score
    for split, values in report.breakdown.items():
        assert page.values[("f1", split)] == values["f1"]
    assert page.values[("metric", "yes_ratio")] == report.metrics["yes_ratio"]
    assert page.rows[:3] == ["wrong"] * 3 and len(page.rows) == 8  # wrong ones first
    assert len(page.images) == 8 and page.scripts == 0


def test_answers_of_another_benchmark_or_twice_are_refused(tmp_path):
    files = bf.pope(tmp_path / "pope")
    strays = bf.answers(tmp_path / "s.jsonl", [*POPE_ANSWERS, ("201307251", "no")])
    with pytest.raises(
        InputError, match=r"1 answers are not in pope's ground truth \(line 9: '201307251'\)"
    ):
        evaluate(tmp_path, benchmark="pope", answers=strays, **files)
    twice = bf.answers(tmp_path / "t.jsonl", [*POPE_ANSWERS, (1, "Yes")])
    with pytest.raises(InputError, match="repeat an answered question"):
        evaluate(tmp_path, benchmark="pope", answers=twice, **files)


def test_a_wrong_file_for_the_benchmark_is_named(tmp_path):
    pope = bf.pope(tmp_path / "pope")
    gqa = bf.gqa(tmp_path / "gqa")
    answers = bf.answers(tmp_path / "a.jsonl", POPE_ANSWERS)
    with pytest.raises(InputError, match="not in gqa's ground truth"):
        evaluate(tmp_path, benchmark="gqa", answers=answers, annotations=[gqa["annotations"]])
    with pytest.raises(InputError, match="is not JSON"):
        evaluate(tmp_path, benchmark="gqa", answers=answers, annotations=[pope["questions"]])
    vqa = bf.vqav2(tmp_path / "vqa")
    with pytest.raises(InputError, match="is not GQA's questions file"):
        evaluate(tmp_path, benchmark="gqa", answers=answers, annotations=vqa["annotations"][:1])
    with pytest.raises(InputError, match="not an answers file in LLaVA.s format"):
        evaluate(tmp_path, benchmark="pope", answers=gqa["annotations"], **pope)
    with pytest.raises(InputError, match="not an MMBench .tsv"):
        evaluate(tmp_path, benchmark="mmbench", answers=answers, questions=pope["questions"])
    with pytest.raises(InputError, match="is not a JSON list"):
        evaluate(
            tmp_path,
            benchmark="sqa_img",
            model={"path": "/m"},
            questions=gqa["annotations"],
            annotations=[bf.sqa(tmp_path / "sqa")["annotations"]],
        )


def test_a_missing_path_is_named(tmp_path):
    files = bf.pope(tmp_path / "pope")
    with pytest.raises(MissingInput, match="answers .*nowhere.jsonl' does not exist"):
        evaluate(tmp_path, benchmark="pope", answers=tmp_path / "nowhere.jsonl", **files)
    answers = bf.answers(tmp_path / "a.jsonl", POPE_ANSWERS)
    with pytest.raises(MissingInput, match="no coco_pope_<split>.json"):
        evaluate(
            tmp_path,
            benchmark="pope",
            answers=answers,
            questions=files["questions"],
            annotations=tmp_path / "empty",
        )


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"benchmark": "nope"}, "benchmark"),
        (
            {"benchmark": "pope", "answers": "a.jsonl", "questions": "q.jsonl"},
            "annotations is required",
        ),
        ({"benchmark": "pope", "questions": "q", "annotations": ["c"]}, "give model"),
        (
            {
                "benchmark": "pope",
                "answers": "a",
                "model": {"path": "m"},
                "questions": "q",
                "annotations": ["c"],
            },
            "give model",
        ),
        ({"benchmark": "pope", "answers": "a", "annotations": ["c"]}, "needs questions"),
        ({"benchmark": "gqa", "answers": "a", "annotations": ["c"], "limit": 3}, "limit applies"),
        (
            {"benchmark": "gqa", "answers": "a", "annotations": ["c"], "custom": {"id": "x"}},
            "custom: options",
        ),
        (
            {"benchmark": "custom", "answers": "a", "questions": "q", "annotations": ["c"]},
            "not annotations",
        ),
    ],
)
def test_inconsistent_specs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        EvalSpec.model_validate({"output": "/o", **fields})


def test_the_cli_says_what_is_wrong_in_one_line(tmp_path):
    files = bf.pope(tmp_path / "pope")
    answers = bf.answers(tmp_path / "a.jsonl", [*POPE_ANSWERS, (777, "no")])
    args = [
        "--set",
        "benchmark=pope",
        "--set",
        f"answers={answers}",
        "--set",
        f"questions={files['questions']}",
    ]
    args += ["--set", f"annotations={files['annotations']}", "--set", f"output={tmp_path / 'o'}"]
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "eval", *args], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "stf eval: error: 1 answers are not in pope's ground truth (line 9: 777)" in done.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "eval", "--set", "benchmark=vqa3"],
        capture_output=True,
        text=True,
    )
    assert (
        unknown.returncode == 2
        and "benchmark" in unknown.stderr
        and "Traceback" not in unknown.stderr
    )


def test_mmbench_questions_in_each_language_and_a_limit_keeps_whole_questions(tmp_path):
    from pipelines.eval.job import make_benchmark

    for lang, name, instruction in (
        ("en", "mmbench", "Answer with the option's letter"),
        ("cn", "mmbench_cn", "请直接回答选项字母。"),
    ):
        files = bf.mmbench(tmp_path / lang, lang=lang)
        spec = EvalSpec.model_validate(
            {
                "benchmark": name,
                "model": {"path": "/m"},
                "questions": str(files["questions"]),
                "output": str(tmp_path / "o"),
            }
        )
        benchmark = make_benchmark(spec)
        questions = benchmark.questions(str(tmp_path / f"staging-{lang}"))
        assert len(questions) == 9 and all(
            q.prompt.endswith(instruction) or instruction in q.prompt.splitlines()[-1]
            for q in questions
        )
        assert all(instruction not in q.answer_line("A", "m")["prompt"] for q in questions)
        kept = benchmark.first(questions, 2)
        assert sorted(q.question_id for q in kept) == [0, 1, 1000000, 1000001, 2000000, 3000000]


def test_published_files_answers_and_report_on_s3(s3_server, monkeypatch, tmp_path):
    """Every location may be s3://: POPE's files and an answers file read from moto's S3 server,
    the report written there."""
    from pipelines.spec import StorageOptions
    from pipelines.storage import filesystem

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage = {
        "endpoint_url": s3_server,
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    fs = filesystem("s3://x", StorageOptions(**storage))
    fs.mkdir("eval-bucket")
    files = bf.pope(tmp_path / "pope")
    bf.answers(tmp_path / "pope" / "answers.jsonl", POPE_ANSWERS)
    fs.put(str(tmp_path / "pope") + "/", "eval-bucket/pope/", recursive=True)
    remote = {
        k: f"s3://eval-bucket/pope/{Path(v).relative_to(tmp_path / 'pope')}"
        for k, v in files.items()
    }
    spec = EvalSpec.model_validate(
        {
            "benchmark": "pope",
            "answers": "s3://eval-bucket/pope/answers.jsonl",
            **remote,
            "output": "s3://eval-bucket/out",
            "storage": storage,
        }
    )
    report = run(spec)
    assert report.score == pytest.approx((50 + 100 + 200 / 3) / 3)
    fs.invalidate_cache()
    assert fs.exists("eval-bucket/out/report.json") and fs.exists("eval-bucket/out/report.html")


def test_mmbench_reads_llavas_all_rounds_answers_too(tmp_path):
    """LLaVA's --all-rounds writes each round under the question's own index with its round_id."""
    files = bf.mmbench(tmp_path / "mmb")
    pairs = [(a[0] % 1_000_000, "", a[1]) for a in MMBENCH_ANSWERS]
    rounds = [a[0] // 1_000_000 for a in MMBENCH_ANSWERS]
    path = bf.answers(tmp_path / "a.jsonl", pairs)
    lines = [
        {**json.loads(line), "round_id": r}
        for line, r in zip(path.read_text().splitlines(), rounds, strict=True)
    ]
    bf.jsonl(path, lines)
    report = evaluate(tmp_path, benchmark="mmbench", answers=path, questions=files["questions"])
    assert report.score == pytest.approx(100 / 3) and report.unanswered == 0


def test_vizwiz_val_from_its_annotations(tmp_path):
    root = tmp_path / "vizwiz"
    root.mkdir()
    humans = [["unanswerable"] * 10, ["red"] * 2 + ["pink"] * 8]
    data = [
        {
            "image": f"VizWiz_val_{i:08d}.jpg",
            "question": q,
            "answers": [{"answer": a, "answer_confidence": "yes"} for a in h],
            "answer_type": t,
            "answerable": int(t != "unanswerable"),
        }
        for i, (q, h, t) in enumerate(
            zip(["What is this?", "What color?"], humans, ["unanswerable", "other"], strict=True)
        )
    ]
    (root / "val.json").write_text(json.dumps(data))
    answers = bf.answers(tmp_path / "a.jsonl", [(0, "Unanswerable"), (1, "Red.")])
    report = evaluate(
        tmp_path, benchmark="vizwiz", answers=answers, annotations=[root / "val.json"]
    )
    assert report.score == pytest.approx((1 + 0.6) / 2 * 100) and report.split == "val"
    assert report.breakdown["unanswerable"]["accuracy"] == 100.0


def test_val_questions_are_asked_from_the_annotations_with_llavas_instructions(tmp_path):
    from pipelines.eval.job import make_benchmark

    vqa = bf.vqav2(tmp_path / "vqa")
    spec = EvalSpec.model_validate(
        {
            "benchmark": "vqav2",
            "model": {"path": "/m"},
            "annotations": [str(a) for a in vqa["annotations"]],
            "images": str(vqa["images"]),
            "output": str(tmp_path / "o"),
        }
    )
    questions = make_benchmark(spec).questions(str(tmp_path / "staging"))
    assert [q.question_id for q in questions] == [262148000, 262148001, 393225000]
    assert (
        questions[0].prompt == "How many dogs?\nAnswer the question using a single word or phrase."
    )
    assert questions[2].image == str(vqa["images"] / "COCO_val2014_000000393225.jpg")


def test_mmbench_answers_of_the_tsvs_rows_alone_are_scored_on_those_rows(tmp_path):
    """LLaVA's script answers each row of a TSV without rounds once; MMBench's evaluator then
    groups those rows alone (a plain accuracy), and the report says one round was asked."""
    files = bf.mmbench(tmp_path / "mmb")  # no rounds written out
    answers = bf.answers(tmp_path / "a.jsonl", [(0, "A"), (1, "B"), (2, "A")])
    report = evaluate(tmp_path, benchmark="mmbench", answers=answers, questions=files["questions"])
    assert report.score == pytest.approx(200 / 3) and report.unanswered == 0
    assert report.metrics["rounds_per_question"] == 1.0


@pytest.mark.parametrize("cell", ["N/A", "NA", "null", "NULL", "#N/A", "<NA>", "None", "nan"])
def test_mmbench_cells_pandas_reads_as_missing_are_no_option(tmp_path, cell):
    files = bf.mmbench(tmp_path / "mmb")
    lines = files["questions"].read_text().splitlines()
    header = lines[0].split("\t")
    row = lines[1].split("\t")
    row[header.index("D")] = cell  # question 0: options red, green, blue, and no fourth
    files["questions"].write_text("\n".join([lines[0], "\t".join(row), *lines[2:]]) + "\n")
    from pipelines.eval.job import make_benchmark

    spec = EvalSpec.model_validate(
        {
            "benchmark": "mmbench",
            "model": {"path": "/m"},
            "questions": str(files["questions"]),
            "output": str(tmp_path / "o"),
        }
    )
    first = make_benchmark(spec).questions(str(tmp_path / "staging"))[0]
    assert first.recorded["options"] == ["red", "green", "blue"] and "\nD." not in first.prompt


def test_the_mmbench_upload_writes_indices_as_numbers(tmp_path):
    import openpyxl

    files = bf.mmbench(tmp_path / "mmb", rotations=True, with_answers=False)
    report = evaluate(
        tmp_path,
        benchmark="mmbench",
        answers=bf.answers(tmp_path / "a.jsonl", MMBENCH_ANSWERS),
        questions=files["questions"],
        split="test",
    )
    sheet = openpyxl.load_workbook(report.submission).active
    assert [cell.value for cell in sheet["A"]][:3] == ["index", 0, 1000000]


def test_annotations_may_be_the_folders_that_hold_the_files(tmp_path):
    bf.vqav2(tmp_path / "vqa")  # the two VQA files in one folder
    answers = bf.answers(
        tmp_path / "v.jsonl", [(262148000, "Two"), (262148001, "Yes."), (393225000, "red")]
    )
    report = evaluate(
        tmp_path / "v", benchmark="vqav2", answers=answers, annotations=[tmp_path / "vqa"]
    )
    assert report.score == pytest.approx((1 + 1 + 0.6) / 3 * 100)
    mme = bf.mme(tmp_path / "MME")  # LLaVA's MME/ holds MME_Benchmark_release_version
    questions = read_jsonl(mme["questions"])
    pairs = [(q["question_id"], q["text"], "Yes") for q in questions]
    report = evaluate(
        tmp_path / "m",
        benchmark="mme",
        answers=bf.answers(tmp_path / "m.jsonl", pairs),
        annotations=[tmp_path / "MME"],
    )
    assert report.n == 8 and report.unanswered == 0
