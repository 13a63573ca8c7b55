"""Eval's scoring at scale, pinned at sizes CI affords (`bench/scale.py` measures it at 100,000
answers): the question files are read a line at a time and once, and what scoring keeps is what
the metrics need, not the questions' text."""

from __future__ import annotations

import json

import pytest


def test_custom_questions_are_read_once_for_scoring_and_again_only_for_the_shown(
    tmp_path, monkeypatch
):
    """Scoring reads the question file once per run, with the columns it needs, however often it
    scores; each score reads it once more for the questions and images of the items the report
    shows; asking the questions reads every column (a prompt template may name any)."""
    from pipelines.eval.benchmarks import custom
    from pipelines.eval.job import make_benchmark
    from pipelines.eval.spec import EvalSpec

    questions = tmp_path / "q.jsonl"
    questions.write_text(
        "\n".join(
            json.dumps({"question_id": i, "image": f"{i}.jpg", "text": "Q?", "answer": "a"})
            for i in range(5)
        )
    )
    reads = []
    real = custom.iter_records
    monkeypatch.setattr(
        custom,
        "iter_records",
        lambda url, storage, columns: reads.append(columns) or real(url, storage, columns),
    )
    spec = EvalSpec.model_validate(
        {"model": {"path": "/no-model"}, "questions": str(questions), "output": str(tmp_path / "o")}
    )
    benchmark = make_benchmark(spec)
    benchmark.check()
    asked = benchmark.questions(str(tmp_path / "staging"))
    first, second = benchmark.score([], asked), benchmark.score([], asked)
    state = {"question_id", "image", "text", "answer", "question_type"}
    shown = {"question_id", "image", "text", "answer"}
    assert reads == [state, None, shown, shown]
    assert first.items.lowest() == second.items.lowest()
    assert [i.question for i in first.items.lowest()] == ["Q?"] * 5


def _pope_files(root, n: int, padding: int) -> dict:
    """POPE's question file and one label file of ``n`` questions whose text is ``padding``
    characters longer than usual, and an answers file."""
    root.mkdir(parents=True, exist_ok=True)
    pad = "x" * padding
    labels = [
        {"image": f"{i}.jpg", "text": f"Is there a thing {i}{pad}?", "label": "yes"}
        for i in range(n)
    ]
    with open(root / "coco_pope_random.json", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in labels)
    with open(root / "q.jsonl", "w") as f:
        f.writelines(
            json.dumps(
                {
                    "question_id": i,
                    "image": line["image"],
                    "text": line["text"] + "\nA?",
                    "category": "random",
                }
            )
            + "\n"
            for i, line in enumerate(labels)
        )
    with open(root / "a.jsonl", "w") as f:
        f.writelines(
            json.dumps({"question_id": i, "prompt": labels[i]["text"], "text": "No"}) + "\n"
            for i in range(n)
        )
    return {
        "benchmark": "pope",
        "questions": str(root / "q.jsonl"),
        "annotations": [str(root / "coco_pope_random.json")],
        "answers": str(root / "a.jsonl"),
    }


def _custom_files(root, n: int, padding: int) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    pad = "x" * padding
    with open(root / "q.jsonl", "w") as f:
        f.writelines(
            json.dumps(
                {
                    "question_id": i,
                    "image": f"{i}{pad}.jpg",
                    "text": f"What {i}{pad}?",
                    "answer": "red",
                }
            )
            + "\n"
            for i in range(n)
        )
    with open(root / "a.jsonl", "w") as f:
        f.writelines(json.dumps({"question_id": i, "text": "blue"}) + "\n" for i in range(n))
    return {
        "benchmark": "custom",
        "questions": str(root / "q.jsonl"),
        "answers": str(root / "a.jsonl"),
    }


@pytest.mark.parametrize("files", [_pope_files, _custom_files])
def test_scoring_holds_what_the_metrics_need_not_the_questions(tmp_path, files):
    """The memory scoring holds does not grow with the questions' text (a benchmark has up to
    214,354 questions): questions 4,000 characters longer cost less than a tenth of their
    text; the report's examples still show the whole question."""
    import tracemalloc

    from pipelines.eval.answers import read_answers
    from pipelines.eval.job import make_benchmark
    from pipelines.eval.spec import EvalSpec

    n, padding = 1_000, 4_000

    def held(pad: int):
        spec = EvalSpec.model_validate(
            {**files(tmp_path / str(pad), n, pad), "output": str(tmp_path / f"out{pad}")}
        )
        tracemalloc.start()
        benchmark = make_benchmark(spec)
        benchmark.check()
        scored = benchmark.score(read_answers(spec.answers, benchmark.files), None)
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return size, scored

    short, _ = held(0)
    long, scored = held(padding)
    shown = scored.items.lowest()
    assert len(shown) == 200 and all(item.question.count("x") == padding for item in shown)
    # The 200 items kept for the report hold 200 padded questions (and custom's images): 1.6 MB.
    assert long - short < 200 * 2 * padding + n * padding / 10, (short, long)
