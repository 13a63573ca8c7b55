"""`stf eval`: accuracy on a held-out question file (the synthetic eval split, or any LLaVA-style
question file with answers) through the batch-inference job, with VQA-style answer normalisation.

Answers come from :mod:`pipelines.infer` (so evaluation is resumable and scales the same way);
this module joins them with the ground truth and scores them overall and per question type.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections import defaultdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt

from pipelines.documents import Document
from pipelines.errors import InputError
from pipelines.infer.rows import read_records
from pipelines.infer.spec import InferSpec
from pipelines.spec import InferenceModel, JobSpec, Location, StorageOptions
from pipelines.storage import filesystem, fs_path, has_magic, join, write_text
from pipelines.synth import Baselines, CorpusInfo

_ARTICLES = {"a", "an", "the"}
_DIGITS = {
    str(i): w
    for i, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    )
}


# A decimal point or a thousands comma sits between digits; other punctuation separates words,
# but apostrophes and hyphens join them (don't, t-shirt).
_NUMBER_MARK = re.compile(r"(?<=\d)[.,](?=\d)")


def normalize_answer(text: str) -> str:
    """VQA-style: Unicode compatibility forms folded (NFKC: "２" is "2", full-width and curly
    quotes plain), case folded, punctuation dropped (a decimal point kept, a thousands comma
    removed: "3.5" is not "35", "1,000" is "1000"), articles dropped unless nothing else is
    left (a multiple-choice "A"), digits spelled out, spaces squeezed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _NUMBER_MARK.sub(lambda m: "\ue000" if m.group() == "." else "", text)
    text = "".join(_word_char(c) for c in text).replace("\ue000", ".")
    words = [_DIGITS.get(w, w) for w in text.split()]
    return " ".join([w for w in words if w not in _ARTICLES] or words)


def _word_char(char: str) -> str:
    if char in "'\u2019":  # apostrophes join: "don't" is "dont"
        return ""
    if char in "-\ue000":  # hyphens, and the decimal points marked above, stay
        return char
    return " " if unicodedata.category(char).startswith(("P", "S")) else char


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
    predicted = normalize_answer(row.get("prediction") or "")
    return bool(predicted) and predicted == normalize_answer(str(row["answer"]))


def score(predictions: list[dict[str, Any]]) -> Score:
    """Accuracy overall and per ``question_type`` from rows with ``answer`` and ``prediction``
    (a row without a prediction, e.g. an unreadable image, counts as wrong)."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    for row in predictions:
        kind = row.get("question_type")
        by_type["all" if kind in (None, "") else str(kind)].append(is_correct(row))
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

    questions = _checked_questions(spec)  # before inference: a bad file fails in seconds
    inference = spec.inference_spec()
    summary = run_inference(inference)
    answers = {row["id"]: row for row in read_output(inference).to_pylist()}
    rows = []
    for record in questions:
        key = str(record[spec.id_column])
        if key not in answers:
            continue  # beyond `limit`
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


def _checked_questions(spec: EvalSpec) -> list[dict[str, Any]]:
    """The question file's records, each with an id, a question and an answer (else
    :class:`InputError`: a question without text would be asked the default prompt)."""
    if has_magic(spec.questions) and not filesystem(spec.questions, spec.storage).isfile(
        fs_path(spec.questions)
    ):
        raise InputError(f"questions {spec.questions!r}: name one file, not a pattern")
    records = read_records(spec.questions, spec.storage)
    for number, record in enumerate(records, 1):
        for column in (spec.id_column, spec.question_column, spec.answer_column):
            if record.get(column) in (None, ""):
                raise InputError(
                    f"{spec.questions} question {number} has no {column!r} "
                    "(id_column / question_column / answer_column)"
                )
    return records


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
