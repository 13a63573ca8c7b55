"""`stf eval`: accuracy on a held-out question file (the synthetic eval split, or any LLaVA-style
question file with answers) through the batch-inference job, with VQA-style answer normalisation.

Answers come from :mod:`pipelines.infer` (so evaluation is resumable and scales the same way);
this module joins them with the ground truth and scores them overall and per question type.
"""

from __future__ import annotations

import posixpath
import string
from collections import defaultdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt

from pipelines.documents import Document
from pipelines.errors import InputError
from pipelines.infer.rows import read_records
from pipelines.infer.spec import InferSpec
from pipelines.spec import InferenceModel, JobSpec, Location, StorageOptions
from pipelines.storage import join, write_text
from pipelines.synth import Baselines, CorpusInfo

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


class Score(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int
    accuracy: float
    by_type: dict[str, float]


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str | None
    answer: str
    prediction: str | None


class EvalReport(Document):
    """``OUTPUT/report.json``: accuracy overall and per question type, with the baselines when
    the questions come from the synthetic corpus."""

    KIND = "evaluation report"
    REMEDY = "re-run `stf eval` with this version"

    schema_version: Literal[1] = 1
    n: int
    accuracy: float
    by_type: dict[str, float]
    errors: int = Field(description="questions without an answer (error rows), counted wrong")
    model: str
    questions: str
    baselines: Baselines | None = None
    examples: list[Example]


def is_correct(row: dict[str, Any]) -> bool:
    """The row's prediction equals its answer once both are normalised (no prediction: wrong)."""
    prediction = row.get("prediction")
    return prediction is not None and normalize_answer(prediction) == normalize_answer(
        str(row["answer"])
    )


def score(predictions: list[dict[str, Any]]) -> Score:
    """Accuracy overall and per ``question_type`` from rows with ``answer`` and ``prediction``
    (a row without a prediction, e.g. an unreadable image, counts as wrong)."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    for row in predictions:
        by_type[row.get("question_type") or "all"].append(is_correct(row))
    hits = [h for values in by_type.values() for h in values]
    return Score(
        n=len(hits),
        accuracy=sum(hits) / len(hits) if hits else 0.0,
        by_type={t: sum(v) / len(v) for t, v in sorted(by_type.items())},
    )


class EvalSpec(JobSpec):
    """Accuracy of a model on a question file with ground-truth answers."""

    model: InferenceModel = Field(description="the model directory and where it runs")
    questions: Location = Field(
        description="JSONL or Parquet: question_id, image, text, answer[, question_type]"
    )
    image_folder: Location | None = Field(
        None, description="where relative image paths resolve (default: the file's folder)"
    )
    output: Location = Field(
        description="output directory (report.json, report.html, predictions/)"
    )
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
            model=self.model,
            inputs=[self.questions],
            output=join(self.output, "predictions"),
            image_root=self.image_folder,
            id_column=self.id_column,
            image_column=self.image_column,
            prompt_column=self.question_column,
            prompt_template=self.prompt_template,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            limit=self.limit,
            batch_size=self.batch_size,
            concurrency=self.concurrency,
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            answers_jsonl=True,
            storage=self.storage,
        )


def run(spec: EvalSpec) -> EvalReport:
    """Answers every question (resuming an interrupted run), scores, writes ``report.json`` and
    ``report.html``."""
    from pipelines.eval_report import render_report
    from pipelines.infer.job import read_output  # the driver imports Ray; the spec must not
    from pipelines.infer.job import run as run_inference

    inference = spec.inference_spec()
    summary = run_inference(inference)
    answers = {row["id"]: row for row in read_output(inference).to_pylist()}
    rows = []
    for record in read_records(spec.questions, spec.storage):
        key = str(record[spec.id_column])
        if key not in answers:
            continue  # beyond `limit`
        if record.get(spec.answer_column) is None:
            raise InputError(f"question {key!r} has no {spec.answer_column!r} (answer_column)")
        rows.append(
            {
                "question": record.get(spec.question_column),
                "answer": str(record[spec.answer_column]),
                "question_type": record.get(spec.type_column),
                "prediction": answers[key]["answer"],
                "image": answers[key]["image"],
            }
        )
    corpus = CorpusInfo.read(join(posixpath.dirname(spec.questions), "synth.json"), spec.storage)
    report = EvalReport(
        **score(rows).model_dump(),
        errors=summary.errors,
        model=spec.model.path,
        questions=spec.questions,
        baselines=corpus.baselines if corpus is not None else None,
        examples=[
            Example(**{k: r[k] for k in ("question", "answer", "prediction")}) for r in rows[:5]
        ],
    )
    report.write(join(spec.output, "report.json"), spec.storage)
    for row in rows:
        row["correct"] = is_correct(row)
    page = render_report(report, rows, spec.storage)
    write_text(join(spec.output, "report.html"), page, spec.storage)
    return report


def summary_line(spec: EvalSpec, report: EvalReport) -> str:
    """One line: accuracy, per type, errors and the baselines when known."""
    per_type = ", ".join(f"{t} {a:.0%}" for t, a in report.by_type.items())
    line = f"eval: accuracy {report.accuracy:.1%} on {report.n} questions ({per_type})"
    if report.errors:
        line += f"; {report.errors} unanswered (error rows)"
    if report.baselines is not None:
        b = report.baselines
        line += f"; chance {b.chance:.1%}, majority answer {b.majority:.1%}"
    return line + f"\nreport: {join(spec.output, 'report.html')}"
