"""`stf eval`: accuracy on a held-out question file (the synthetic eval split, or any LLaVA-style
question file with answers) through the batch-inference job, with VQA-style answer normalisation.

Answers come from :mod:`pipelines.infer` (so evaluation is resumable and scales the same way);
this module joins them with the ground truth and scores them overall and per question type.
"""

from __future__ import annotations

import posixpath
import string
from collections import defaultdict
from typing import Any

from pydantic import Field, NonNegativeFloat, PositiveInt

from pipelines.infer import InferSpec, read_output, read_records
from pipelines.infer import run as run_inference
from pipelines.model_loader import InferenceModel
from pipelines.spec import JobSpec, StorageOptions
from pipelines.storage import Location, join, read_json, write_json_atomic

_ARTICLES = {"a", "an", "the"}
_DIGITS = {
    str(i): w
    for i, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    )
}


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, spell out digits, squeeze spaces (VQA-style)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation.replace("-", "")))
    words = [_DIGITS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def score(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and per ``question_type`` from rows with ``answer`` and ``prediction``
    (a row without a prediction, e.g. an unreadable image, counts as wrong)."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    for row in predictions:
        prediction = row.get("prediction")
        hit = prediction is not None and normalize_answer(prediction) == normalize_answer(
            str(row["answer"])
        )
        by_type[row.get("question_type") or "all"].append(hit)
    hits = [h for values in by_type.values() for h in values]
    return {
        "n": len(hits),
        "accuracy": sum(hits) / len(hits) if hits else 0.0,
        "by_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
    }


class EvalSpec(JobSpec):
    """Accuracy of a model on a question file with ground-truth answers."""

    model: InferenceModel = Field(description="the model directory and where it runs")
    questions: Location = Field(
        description="JSONL or Parquet: question_id, image, text, answer[, question_type]"
    )
    image_folder: Location | None = Field(
        None, description="where relative image paths resolve (default: the file's folder)"
    )
    output: Location = Field(description="output directory (report.json, predictions/)")
    id_column: str = Field("question_id")
    image_column: str = Field("image")
    question_column: str = Field("text")
    answer_column: str = Field("answer")
    type_column: str = Field("question_type", description="per-type accuracy when present")
    prompt_template: str = Field(
        "{prompt}",
        description="wraps each question, e.g. LLaVA's '{prompt}\\nAnswer the question using a "
        "single word or phrase.'",
    )
    max_new_tokens: PositiveInt = Field(16, description="short answers")
    temperature: NonNegativeFloat = Field(0.0, description="0 = greedy, as VQA evaluation does")
    limit: PositiveInt | None = Field(None, description="only the first N questions")
    batch_size: PositiveInt = Field(16)
    concurrency: PositiveInt = Field(1, description="model replicas (actors)")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    storage: StorageOptions = Field(default_factory=StorageOptions)

    def inference_spec(self) -> InferSpec:
        return InferSpec(
            model=self.model, inputs=[self.questions], output=join(self.output, "predictions"),
            image_root=self.image_folder, id_column=self.id_column, image_column=self.image_column,
            prompt_column=self.question_column, prompt_template=self.prompt_template,
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, limit=self.limit,
            batch_size=self.batch_size, concurrency=self.concurrency, num_cpus=self.num_cpus,
            num_gpus=self.num_gpus, answers_jsonl=True, storage=self.storage,
        )  # fmt: skip


def run(spec: EvalSpec) -> dict[str, Any]:
    """Answers every question (resuming an interrupted run), scores, writes ``report.json``."""
    inference = spec.inference_spec()
    summary = run_inference(inference)
    answers = {row["id"]: row for row in read_output(inference).to_pylist()}
    rows = []
    for record in read_records(spec.questions, spec.storage):
        key = str(record[spec.id_column])
        if key not in answers:
            continue  # beyond `limit`
        if record.get(spec.answer_column) is None:
            raise ValueError(f"question {key!r} has no {spec.answer_column!r} (answer_column)")
        rows.append(
            {
                "question_id": key,
                "question": record.get(spec.question_column),
                "answer": record[spec.answer_column],
                "question_type": record.get(spec.type_column),
                "prediction": answers[key]["answer"],
                "error": answers[key]["error"],
            }
        )
    report = {
        **score(rows),
        "errors": summary["errors"],
        "model": spec.model.path,
        "questions": spec.questions,
    }
    meta = read_json(join(posixpath.dirname(spec.questions), "synth.json"), spec.storage)
    if meta and "baselines" in meta:
        report["baselines"] = meta["baselines"]
    report["examples"] = [{k: r[k] for k in ("question", "answer", "prediction")} for r in rows[:5]]
    write_json_atomic(join(spec.output, "report.json"), report, spec.storage)
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One line: accuracy, per type, errors and the baselines when known."""
    per_type = ", ".join(f"{t} {a:.0%}" for t, a in report["by_type"].items())
    line = f"eval: accuracy {report['accuracy']:.1%} on {report['n']} questions ({per_type})"
    if report.get("errors"):
        line += f"; {report['errors']} unanswered (error rows)"
    baselines = report.get("baselines")
    if baselines:
        line += f"; chance {baselines['chance']:.1%}, majority answer {baselines['majority']:.1%}"
    return line


__all__ = ["EvalSpec", "normalize_answer", "run", "score", "summary_line"]
