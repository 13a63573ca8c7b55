"""``stf infer``: batch generation over an image dataset with Ray Data, resumable, errors as rows.

The driver lists the rows (:mod:`~pipelines.infer.rows`), drops the ids an earlier run already
wrote, and streams the rest through an actor pool of model replicas
(:class:`~pipelines.infer.replica.Answerer`); the driver writes the answers as they come back,
in Parquet files of at most ``rows_per_file`` rows under ``OUTPUT/parts/``. A row whose image
cannot be read or decoded becomes an error row, never a failed job. The job ends by checking
that every input id is in the output exactly once, then writes ``summary.json`` (and, if asked,
LLaVA's answers file).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import JobFailed
from pipelines.infer.output import (
    ANSWER_COLUMNS,
    InferSummary,
    PartWriter,
    claim_output,
    read_output,
    write_answers,
    write_summary,
)
from pipelines.infer.replica import Answerer
from pipelines.infer.rows import list_rows
from pipelines.infer.spec import InferSpec

log = logging.getLogger(__name__)


class InferFailed(JobFailed):
    """The job could not produce a complete output (the message says what is missing)."""


def run(spec: InferSpec) -> InferSummary:
    """Runs (or resumes) the job; returns the summary it writes to ``OUTPUT/summary.json``."""
    started = time.perf_counter()
    rows = list_rows(spec)
    earlier = read_output(spec, columns=("id",), repair=True)
    claim_output(spec, holds_answers=len(earlier) > 0)
    done = _of(rows, earlier)
    resumed = len(done)
    todo = rows.filter(pc.invert(pc.is_in(rows.column("id"), value_set=pc.unique(done["id"]))))
    del earlier, done
    log.info("%d rows: %d already written, %d to do", len(rows), resumed, len(todo))
    if len(todo):
        _generate(spec, todo, total=len(rows), already_done=len(rows) - len(todo))
    del todo
    # Of the rows asked: an earlier run may have had more. The answers file's columns are read
    # in the same pass when it is asked for.
    columns = ANSWER_COLUMNS if spec.answers_jsonl else ("id", "error")
    output = _of(rows, read_output(spec, columns=columns, repair=True))
    missing = pc.invert(pc.is_in(rows.column("id"), value_set=output.column("id")))
    n_missing = pc.sum(missing).as_py() or 0
    if n_missing or pc.count_distinct(output.column("id")).as_py() != len(output):
        examples = rows.filter(missing).column("id").slice(0, 3).to_pylist()
        raise InferFailed(
            f"{n_missing} of {len(rows)} rows have no output (e.g. {examples}) or ids repeat; "
            "re-run the same spec to finish"
        )
    errors = output.filter(pc.is_valid(output.column("error"))).column("error")
    by_reason = Counter(errors.to_pylist())
    summary = InferSummary(
        rows=len(rows),
        answered=len(output) - len(errors),
        errors=len(errors),
        errors_by_reason=dict(by_reason),
        resumed_rows=resumed,
        model=spec.model.path,
        model_id=spec.served_model_id,
        seconds=round(time.perf_counter() - started, 2),
        spec=spec.resolved(),
    )
    if spec.answers_jsonl:
        write_answers(spec, output)
    write_summary(spec, summary)
    return summary


def _of(rows: pa.Table, output: pa.Table) -> pa.Table:
    """The output rows whose ids are among ``rows``."""
    return output.filter(pc.is_in(output.column("id"), value_set=rows.column("id")))


def summary_line(spec: InferSpec, summary: InferSummary) -> str:
    reasons = ", ".join(f"{r} {n}" for r, n in summary.errors_by_reason.items()) or "none"
    return (
        f"infer {spec.output}: {summary.rows} rows, {summary.answered} answered, "
        f"{summary.errors} error rows ({reasons}), {summary.resumed_rows} from an earlier run "
        f"[{summary.seconds:.1f} s]"
    )


def _generate(spec: InferSpec, todo: pa.Table, total: int, already_done: int) -> None:
    """Answers ``todo`` (see :func:`_answer_all`) under a progress bar, giving up after
    ``schedule_timeout_s`` when the replicas cannot start."""
    import ray

    from pipelines.infer.progress import InferProgress
    from pipelines.ray_env import (
        ResourceAsk,
        gave_up,
        init_ray,
        ray_data_settings,
        require_resources,
    )

    init_ray()
    each = {"CPU": spec.num_cpus, "GPU": spec.num_gpus}
    ask = ResourceAsk("stf infer", spec.concurrency, "replicas", each, spec.schedule_timeout_s)
    require_resources(ask)
    # Ray Data waits this long for the pool's replicas to start, then raises GetTimeoutError.
    try:
        with (
            ray_data_settings(wait_for_min_actors_s=spec.schedule_timeout_s),
            InferProgress(total, already_done) as progress,
        ):
            _answer_all(spec, todo, progress.counter)
    except ray.exceptions.GetTimeoutError as err:  # the replicas did not start in time
        raise gave_up(ask) from err


def _answer_all(spec: InferSpec, todo: pa.Table, progress: Any) -> None:
    """Answers ``todo`` through the actor pool into Parquet files of at most ``rows_per_file``
    rows under ``parts/``; the replicas report their counts to ``progress`` (a
    :class:`RowCounter` handle)."""
    import ray

    per_block = min(
        spec.rows_per_file, max(spec.batch_size, math.ceil(len(todo) / spec.concurrency))
    )
    blocks = [todo.slice(i, per_block) for i in range(0, len(todo), per_block)]
    # from_blocks keeps our blocks and reads their row counts here; from_arrow would run a
    # remote task per block for the same numbers, before any replica could start (about 1 s).
    dataset = ray.data.from_blocks(blocks).map_batches(
        Answerer,
        fn_constructor_kwargs={"spec": spec, "progress": progress},
        batch_size=spec.batch_size,
        batch_format="numpy",
        concurrency=spec.concurrency,
        num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus,
    )
    # The answered blocks are written here, on the driver, each as it arrives, rather than by
    # Ray Data's write tasks: the rows are a few hundred bytes of text, and with every worker
    # process held by a replica the first write task waits for a new one to start (about 1 s of
    # a short job). Ray Data joins blocks smaller than a batch into one task, so a block that
    # comes back can hold more than rows_per_file rows: the writer splits it.
    parts = PartWriter(spec)
    for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        parts.write(block)
