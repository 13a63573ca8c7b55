"""Evaluation throughput: scoring answers files, and `stf eval` against `stf infer`.

1. Scoring: per benchmark, an answers file of N answers (default 100,000) and its ground truth
   in the published format, made up here, scored by `stf eval` without a model (one process, so
   one core): answers per second, the whole job (reading both files, scoring, report.json and
   report.html) and the scorer alone.
2. Generation: the same rows (POPE-format questions over 320x240 JPEGs) through `stf eval` (POPE)
   and through `stf infer` (a table of the same images and prompts), same model, batch and
   replicas, each on the same local Ray: rows per second and their ratio.

    python bench/eval.py [--answers 100000] [--rows 256] [--skip-generation]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

SHORT = "\nAnswer the question using a single word or phrase."


def _jsonl(path: Path, records) -> Path:
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def pope_files(root: Path, n: int, rng: random.Random) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    (root / "coco").mkdir(exist_ok=True)
    questions, answers = [], []
    splits = ("adversarial", "popular", "random")
    for s, split in enumerate(splits):
        labels = []
        for i in range(n // 3):
            image, text = f"COCO_val2014_{i:012d}.jpg", f"Is there a thing {i} in the image?"
            labels.append(
                {
                    "question_id": i + 1,
                    "image": image,
                    "text": text,
                    "label": rng.choice(["yes", "no"]),
                }
            )
            qid = s * 10_000_000 + i + 1
            questions.append(
                {"question_id": qid, "image": image, "text": text + SHORT, "category": split}
            )
            answers.append(
                {
                    "question_id": qid,
                    "prompt": text + SHORT,
                    "text": rng.choice(["Yes", "No", "No, there is not."]),
                }
            )
        _jsonl(root / "coco" / f"coco_pope_{split}.json", labels)
    return {
        "benchmark": "pope",
        "questions": str(_jsonl(root / "q.jsonl", questions)),
        "annotations": [str(root / "coco")],
        "answers": str(_jsonl(root / "a.jsonl", answers)),
    }


def mme_files(root: Path, n: int, rng: random.Random) -> dict:
    subtasks = ("existence", "count", "position", "color", "OCR", "code_reasoning")
    answers = []
    for s, subtask in enumerate(subtasks):
        folder = root / "release" / subtask
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n // len(subtasks) // 2):
            name = f"{i:06d}"
            pairs = [(f"Is there a {w} {i}?", rng.choice(["Yes", "No"])) for w in ("cat", "dog")]
            (folder / f"{name}.txt").write_text(
                "".join(f"{q} Please answer yes or no.\t{a}\n" for q, a in pairs)
            )
            for q, _ in pairs:
                answers.append(
                    {
                        "question_id": f"{subtask}/{name}.jpg",
                        "prompt": q + SHORT,
                        "text": rng.choice(["Yes", "No"]),
                    }
                )
        del s
    return {
        "benchmark": "mme",
        "annotations": [str(root / "release")],
        "answers": str(_jsonl(root / "a.jsonl", answers)),
    }


def vqav2_files(root: Path, n: int, rng: random.Random) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    words = ["yes", "no", "2", "red", "dark red", "t-shirt", "the dog", "1,000"]
    annotations, questions, answers = [], [], []
    for i in range(n):
        humans = [
            {"answer": rng.choice(words), "answer_confidence": "yes", "answer_id": k + 1}
            for k in range(10)
        ]
        annotations.append(
            {
                "question_id": i,
                "image_id": i // 3,
                "answer_type": "other",
                "question_type": "what",
                "answers": humans,
            }
        )
        questions.append({"question_id": i, "image_id": i // 3, "question": f"What is {i}?"})
        answers.append(
            {
                "question_id": i,
                "prompt": f"What is {i}?{SHORT}",
                "text": rng.choice(words).title() + ".",
            }
        )
    (root / "ann.json").write_text(json.dumps({"annotations": annotations}))
    (root / "q.json").write_text(json.dumps({"questions": questions}))
    return {
        "benchmark": "vqav2",
        "annotations": [str(root / "ann.json"), str(root / "q.json")],
        "answers": str(_jsonl(root / "a.jsonl", answers)),
    }


def mmbench_files(root: Path, n: int, rng: random.Random) -> dict:
    """n rows: n/4 questions of 4 options, their rounds written out (index + k * 1e6)."""
    import base64
    import io

    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    picture = base64.b64encode(buffer.getvalue()).decode()
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
        "l2-category",
    ]
    lines, answers = ["\t".join(columns)], []
    for i in range(n // 4):
        options = [f"option {i}-{k}" for k in range(4)]
        answer = rng.randrange(4)
        for k in range(4):
            shifted = options[k:] + options[:k]
            row = [
                str(i + k * 1_000_000),
                f"Question {i}?",
                "nan",
                *shifted,
                "ABCD"[(answer - k) % 4],
                "cat",
                picture if k == 0 else str(i),
                "l2",
            ]
            lines.append("\t".join(row))
            answers.append(
                {"question_id": i + k * 1_000_000, "prompt": "", "text": rng.choice("ABCD")}
            )
    (root / "dev.tsv").write_text("\n".join(lines) + "\n")
    return {
        "benchmark": "mmbench",
        "questions": str(root / "dev.tsv"),
        "answers": str(_jsonl(root / "a.jsonl", answers)),
    }


def scoring(n: int, work: Path) -> list[tuple[str, int, float, float]]:
    from pipelines.eval.answers import read_answers
    from pipelines.eval.job import make_benchmark, run
    from pipelines.eval.spec import EvalSpec

    rng = random.Random(0)
    results = []
    for make in (pope_files, mme_files, vqav2_files, mmbench_files):
        fields = make(work / make.__name__, n, rng)
        spec = EvalSpec.model_validate({**fields, "output": str(work / "out" / make.__name__)})
        start = time.perf_counter()
        report = run(spec)
        whole = time.perf_counter() - start
        benchmark = make_benchmark(spec)
        answers = read_answers(spec.answers, benchmark.files)
        start = time.perf_counter()
        benchmark.score(answers, None)
        alone = time.perf_counter() - start
        results.append((spec.benchmark, len(answers), whole, alone))
        print(f"{spec.benchmark}: {len(answers)} answers, {report.n} items scored", flush=True)
    return results


def generation(rows: int, work: Path) -> dict[str, float]:
    """rows/s of `stf eval` (POPE) and `stf infer` over the same images and prompts."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from PIL import Image

    from pipelines.eval.job import run as evaluate
    from pipelines.eval.spec import EvalSpec
    from pipelines.infer import InferSpec
    from pipelines.infer.job import run as infer
    from pipelines.ray_env import start_local_ray
    from stf_model import build_tiny, save_model_dir

    root = work / "generation"
    (root / "images").mkdir(parents=True, exist_ok=True)
    save_model_dir(*build_tiny(seed=0), root / "tiny")
    labels, questions = [], []
    for i in range(rows):
        name = f"{i:05d}.jpg"
        Image.effect_noise((320, 240), 40 + i % 50).convert("RGB").save(root / "images" / name)
        labels.append(
            {"question_id": i + 1, "image": name, "text": f"Is there a dog {i}?", "label": "yes"}
        )
        questions.append(
            {
                "question_id": i + 1,
                "image": name,
                "text": f"Is there a dog {i}?{SHORT}",
                "category": "random",
            }
        )
    (root / "coco").mkdir(exist_ok=True)
    _jsonl(root / "coco" / "coco_pope_random.json", labels)
    _jsonl(root / "q.jsonl", questions)
    table = pa.table(
        {
            "id": [str(q["question_id"]) for q in questions],
            "image": [str(root / "images" / q["image"]) for q in questions],
            "prompt": [q["text"] for q in questions],
        }
    )
    pq.write_table(table, root / "rows.parquet")
    cores = os.cpu_count() or 1
    generation = {"max_new_tokens": 8, "batch_size": 16, "concurrency": cores, "num_cpus": 1}
    start_local_ray(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    timings = {}
    for attempt in range(2):  # interleaved, twice: the second round without first-use costs
        start = time.perf_counter()
        evaluate(
            EvalSpec.model_validate(
                {
                    "benchmark": "pope",
                    "model": {"path": str(root / "tiny")},
                    "questions": str(root / "q.jsonl"),
                    "annotations": [str(root / "coco")],
                    "images": str(root / "images"),
                    "output": str(root / f"eval-{attempt}"),
                    "inference": generation,
                }
            )
        )
        timings.setdefault("stf eval (pope)", []).append(time.perf_counter() - start)
        start = time.perf_counter()
        infer(
            InferSpec(
                model={"path": str(root / "tiny")},
                inputs=[str(root / "rows.parquet")],
                output=str(root / f"infer-{attempt}"),
                **generation,
            )
        )
        timings.setdefault("stf infer", []).append(time.perf_counter() - start)
    ray.shutdown()
    return {k: rows / min(v) for k, v in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    results = scoring(args.answers, work)
    print(
        f"\n{'benchmark':<12}{'answers':>9}{'job s':>8}{'answers/s':>11}{'scorer s':>10}{'answers/s':>11}"
    )
    for name, n, whole, alone in results:
        print(f"{name:<12}{n:>9}{whole:>8.2f}{n / whole:>11.0f}{alone:>10.2f}{n / alone:>11.0f}")
    if not args.skip_generation:
        rates = generation(args.rows, work)
        base = rates["stf infer"]
        print(f"\n{args.rows} rows (320x240 JPEG), 8 greedy tokens, batch 16, one replica per CPU")
        for name, rate in rates.items():
            print(f"{name:<20}{rate:>8.1f} rows/s{rate / base:>8.2f}x")
    print(json.dumps({"scoring": results, "work": str(work)}))


if __name__ == "__main__":
    main()
