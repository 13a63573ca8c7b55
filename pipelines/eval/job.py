"""``stf eval``: a benchmark's questions answered through the batch-inference job (Ray Data,
model replicas, resumable, a progress bar), or an answers file given as it is, then scored by the
benchmark's official rules into ``report.json`` and ``report.html``.

Everything that can be checked without the model is checked before it loads: the ground truth is
read, every question finds its ground truth (a question file of another benchmark or version fails
here), and the first images exist.
"""

from __future__ import annotations

import hashlib
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import MissingInput
from pipelines.eval.answers import as_answers, read_answers, write_answers
from pipelines.eval.benchmarks import BENCHMARKS, Answer, Benchmark, Question, Scored
from pipelines.eval.files import Files
from pipelines.eval.report import EvalReport, Example, corpus_baselines
from pipelines.eval.spec import EvalSpec
from pipelines.infer.spec import InferSpec
from pipelines.storage import filesystem, fs_path, join, write_bytes, write_text

EXAMPLES = 5  # in report.json; report.html shows up to 200
CHART_KEYS = ("score", "f1", "accuracy")  # the breakdown's main value, as report.html's chart
IMAGES_CHECKED = 3


def make_benchmark(spec: EvalSpec) -> Benchmark:
    benchmark = BENCHMARKS[spec.benchmark](
        Files(spec.annotations or [], spec.storage), spec.questions, spec.images, spec.split
    )
    if spec.benchmark == "custom":
        benchmark.columns = spec.custom
    return benchmark


def run(spec: EvalSpec) -> EvalReport:
    """Answers (or reads the answers), scores, writes the report; returns it."""
    benchmark = make_benchmark(spec)
    if spec.answers is not None:
        answers = read_answers(spec.answers, benchmark.files, benchmark.reads_prompt)
        asked, errors = None, 0
        answers_url = spec.answers
    else:
        asked, answers, errors = _generate(spec, benchmark)
        answers_url = join(spec.output, "answers.jsonl")
    scored = benchmark.score(answers, asked if spec.limit else None)
    return _report(spec, benchmark, scored, answers_url, errors)


def _placeholders(questions: list[Question]) -> list[Answer]:
    """An empty answer per question, to check every question finds its ground truth."""
    return as_answers([q.answer_line("", "-") for q in questions])


def _generate(spec: EvalSpec, benchmark: Benchmark) -> tuple[list[Question], list[Answer], int]:
    from pipelines.infer.job import run as run_inference
    from pipelines.infer.output import read_output

    benchmark.check()
    questions = benchmark.questions(join(spec.output, "staging"))
    if spec.limit is not None:
        questions = benchmark.first(questions, spec.limit)
    benchmark.score(_placeholders(questions), questions)
    _check_images(questions, spec)
    inference = _inference_spec(spec, _write_rows(spec, questions))
    summary = run_inference(inference)
    output = read_output(inference, columns=("id", "answer"))
    answered = dict(zip(output["id"].to_pylist(), output["answer"].to_pylist(), strict=True))
    del output
    lines = [
        # Stripped, as LLaVA's scripts write their answers (a letter is "A", not " A").
        q.answer_line(answered[q.key].strip(), spec.served_model_id)
        for q in questions
        if answered.get(q.key) is not None  # an error row (an unreadable image): unanswered
    ]
    write_answers(join(spec.output, "answers.jsonl"), lines, spec.storage)
    return questions, as_answers(lines), summary.errors


def _check_images(questions: list[Question], spec: EvalSpec) -> None:
    """The first questions' images exist (a wrong ``images`` folder fails before the model)."""
    urls = [q.image for q in questions if q.image is not None][:IMAGES_CHECKED]
    missing = [u for u in urls if not filesystem(u, spec.storage).exists(fs_path(u))]
    if missing:
        raise MissingInput(
            f"{spec.benchmark}: image {missing[0]!r} does not exist; set images to the folder "
            "the question file's image paths are relative to"
        )


def _write_rows(spec: EvalSpec, questions: list[Question]) -> str:
    """The rows to generate for as a Parquet table named by its content: an output keeps its
    answers for the same questions, and refuses other questions (infer's ``run.json``)."""
    table = pa.table(
        {
            "key": [q.key for q in questions],
            "image": pa.array([q.image for q in questions], pa.string()),
            "prompt": [q.prompt for q in questions],
        }
    )
    digest = hashlib.sha256()
    for q in questions:
        digest.update(f"{q.key}\0{q.image}\0{q.prompt}\0".encode())
    url = join(spec.output, f"questions-{digest.hexdigest()[:12]}.parquet")
    fs = filesystem(url, spec.storage)
    fs.makedirs(posixpath.dirname(fs_path(url)), exist_ok=True)
    with fs.open(fs_path(url), "wb") as f:
        pq.write_table(table, f)
    return url


def _inference_spec(spec: EvalSpec, rows: str) -> InferSpec:
    return InferSpec(
        **spec.inference.model_dump(),
        model=spec.model,
        model_id=spec.served_model_id,
        inputs=[rows],
        output=join(spec.output, "predictions"),
        id_column="key",
        image_column="image",
        text_only_rows=True,
        prompt_column="prompt",
        storage=spec.storage,
    )


def _report(
    spec: EvalSpec, benchmark: Benchmark, scored: Scored, answers_url: str, errors: int
) -> EvalReport:
    from pipelines.eval.page import render_report

    submission = None
    if scored.submission is not None:
        name, data = scored.submission
        submission = join(spec.output, name)
        write_bytes(submission, data, spec.storage)
    shown = scored.items.lowest()
    custom = spec.benchmark == "custom" and spec.questions is not None
    overall, per_type = corpus_baselines(spec.questions, spec.storage) if custom else ({}, None)
    report = EvalReport(
        benchmark=spec.benchmark,
        title=benchmark.title,
        split=scored.split,
        headline=benchmark.headline,
        score=scored.score,
        n=scored.items.n,
        unanswered=scored.unanswered,
        errors=errors,
        metrics=scored.metrics | overall,
        breakdown=scored.breakdown,
        model=spec.model.path if spec.model else None,
        answers=answers_url,
        questions=spec.questions,
        limit=spec.limit,
        submission=submission,
        baselines=per_type,
        examples=[
            Example(
                question=i.question,
                expected=i.expected,
                prediction=i.prediction,
                score=i.score,
                category=i.category,
            )
            for i in shown[:EXAMPLES]
        ],
    )
    report.write(join(spec.output, "report.json"), spec.storage)
    page = render_report(report, shown, spec.storage)
    write_text(join(spec.output, "report.html"), page, spec.storage)
    return report


def summary_line(spec: EvalSpec, report: EvalReport) -> str:
    """One line: the headline (or where the submission is), the breakdown, what was missing."""
    where = f"{report.title} ({report.split})"
    if report.score is None:
        line = f"eval {where}: no public answers; upload {report.submission} to the server"
    else:
        line = f"eval {where}: {report.headline}: {report.score:.2f} on {report.n} items"
    parts = [
        f"{k} {next(v[m] for m in CHART_KEYS if m in v):.1f}"
        for k, v in list(report.breakdown.items())[:10]
        if any(m in v for m in CHART_KEYS)
    ]
    if parts:
        line += f" ({', '.join(parts)})"
    if report.unanswered:
        line += f"; {report.unanswered} unanswered, counted wrong"
    if "chance" in report.metrics:
        line += (
            f"; chance {report.metrics['chance']:.1f}, majority {report.metrics['majority']:.1f}"
        )
    if report.limit:
        line += f"; limit {report.limit}: a partial score"
    return line + f"\nreport: {join(spec.output, 'report.html')}"
