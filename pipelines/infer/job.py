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

import json
import logging
import math
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.documents import Document
from pipelines.errors import InputError, JobFailed
from pipelines.infer.replica import OUTPUT_SCHEMA, Answerer
from pipelines.infer.rows import list_rows
from pipelines.infer.spec import InferSpec
from pipelines.storage import (
    filesystem,
    fs_path,
    join,
    read_json,
    write_json_atomic,
    write_lines,
)

log = logging.getLogger(__name__)


class InferFailed(JobFailed):
    """The job could not produce a complete output (the message says what is missing)."""


class InferSummary(Document):
    """``OUTPUT/summary.json``: what a finished run answered."""

    KIND = "batch-inference summary"
    REMEDY = "re-run `stf infer` with this version"

    schema_version: Literal[1] = 1
    rows: int
    answered: int
    errors: int
    errors_by_reason: dict[str, int]
    resumed_rows: int  # written by an earlier run of the same output
    model: str
    model_id: str
    seconds: float
    spec: dict[str, Any]


def _parts_dir(spec: InferSpec) -> str:
    return join(spec.output, "parts")


# What answers.jsonl holds.
ANSWER_COLUMNS = ("id", "prompt", "answer", "model_id", "error", "error_detail")
READ_THREADS = 16  # part files read at once: on S3 each is a few round trips


def read_output(
    spec: InferSpec, columns: tuple[str, ...] = tuple(OUTPUT_SCHEMA.names), repair: bool = False
) -> pa.Table:
    """The rows written so far, with ``columns`` only: a resume needs the ids alone, and reading
    one column chunk per file keeps the driver's memory and reads at the ids' size. With
    ``repair``, files a killed run left half-written (no Parquet footer) and files whose every id
    earlier files (in name order) already hold are deleted, so each id is counted once. (Such
    twins came from retried Ray Data write tasks; the driver now writes each block once, but a
    run resumes outputs that earlier versions wrote.)"""
    fs = filesystem(spec.output, spec.storage)
    parts = _parts_dir(spec)
    fs.invalidate_cache()
    wanted = list(dict.fromkeys(("id", *columns)))
    if not fs.exists(fs_path(parts)):
        return OUTPUT_SCHEMA.empty_table().select(list(columns))
    paths = sorted(p for p in fs.find(fs_path(parts)) if p.endswith(".parquet"))

    def read(path: str) -> pa.Table | Exception:
        try:
            with fs.open(path, "rb") as f:
                return pq.read_table(f, columns=wanted, schema=OUTPUT_SCHEMA)
        except (pa.ArrowInvalid, OSError) as err:
            return err

    with ThreadPoolExecutor(READ_THREADS) as pool:
        tables = dict(zip(paths, pool.map(read, paths), strict=True))
    for path, table in list(tables.items()):
        if isinstance(table, Exception):
            if not repair:
                raise table
            log.warning("removing unreadable output file %s (%s)", path, table)
            fs.rm(path)
            del tables[path]
    if repair:
        for path in _twins(tables):
            log.warning("removing %s: a duplicate of rows already written", path)
            fs.rm(path)
            del tables[path]
    if not tables:
        return OUTPUT_SCHEMA.empty_table().select(list(columns))
    return pa.concat_tables(tables.values()).select(list(columns))


def _twins(tables: dict[str, pa.Table]) -> list[str]:
    """The files (keys of ``tables``, in name order) whose every id an earlier file holds: the
    files that are no id's first. Found in Arrow, by each id's smallest file number, rather than
    with a Python set of every id."""
    names = list(tables)
    if not names:
        return []
    files = pa.concat_arrays(
        [pa.array([n] * len(t), pa.int32()) for n, t in enumerate(tables.values())]
    )
    ids = pa.chunked_array([t.column("id") for t in tables.values()], pa.string())
    first = pa.table({"id": ids, "file": files}).group_by("id").aggregate([("file", "min")])
    firsts = set(pc.unique(first.column("file_min")).to_pylist())
    return [name for n, name in enumerate(names) if n not in firsts]


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
        _write_answers(spec, output)
    summary.write(join(spec.output, "summary.json"), spec.storage)
    return summary


def _of(rows: pa.Table, output: pa.Table) -> pa.Table:
    """The output rows whose ids are among ``rows``."""
    return output.filter(pc.is_in(output.column("id"), value_set=rows.column("id")))


# The spec fields an answer depends on: a run may resume or extend an output only with these
# unchanged (batch sizes, replicas, devices and limit change how and how much, not what).
ANSWER_FIELDS = (
    "inputs",
    "image_root",
    "id_column",
    "image_column",
    "prompt_column",
    "prompt",
    "prompt_template",
    "system",
    "max_new_tokens",
    "temperature",
    "top_p",
    "max_image_pixels",
    "model_id",
)
RUN_FILE = "run.json"
# The parts' layout, recorded in run.json: 2 has the error reason and detail in two columns (1,
# unversioned, had one "reason: detail" string). A resume reads the parts it finds, so it needs
# the same layout.
OUTPUT_LAYOUT = 2


def claim_output(spec: InferSpec, holds_answers: bool) -> None:
    """Records in ``OUTPUT/run.json`` what this spec's answers depend on (the model's path and
    dtype, :data:`ANSWER_FIELDS`); refuses an output that holds answers under a record that
    differs. Resuming skips every id already written, so another model's or prompt's answers
    would be passed off as this spec's. (A run that failed before answering anything, say on a
    mistyped model path, claimed nothing.)"""
    resolved = spec.resolved()
    mine: dict = {"layout": OUTPUT_LAYOUT}
    mine["model"] = {k: resolved["model"][k] for k in ("path", "dtype")}
    if resolved["model"].get("adapter"):
        mine["model"]["adapter"] = resolved["model"]["adapter"]
    mine |= {k: resolved[k] for k in ANSWER_FIELDS}
    url = join(spec.output, RUN_FILE)
    theirs = read_json(url, spec.storage)
    if holds_answers and theirs is not None and theirs.get("layout") != OUTPUT_LAYOUT:
        raise InputError(
            f"{spec.output} holds answers written by an earlier version of stf infer, in another "
            "layout (one error column of 'reason: detail'); write to another output, or delete "
            "it to answer everything again"
        )
    if holds_answers and theirs is not None and theirs != mine:
        changed = ", ".join(
            f"{k}: {theirs.get(k)!r} -> {v!r}" for k, v in mine.items() if theirs.get(k) != v
        )
        raise InputError(
            f"{spec.output} holds answers of another spec ({changed}); write to another output, "
            "or delete it to answer everything again"
        )
    if theirs != mine:
        write_json_atomic(url, mine, spec.storage)


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
    # a short job). A killed driver leaves at most one half-written file, which read_output
    # removes.
    fs = filesystem(spec.output, spec.storage)
    parts = fs_path(_parts_dir(spec))
    fs.makedirs(parts, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    answered = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    files = 0
    for block in answered:
        table = block.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)
        # Ray Data joins blocks smaller than a batch into one task, so a block that comes back
        # can hold more than rows_per_file rows.
        for start in range(0, len(table), spec.rows_per_file):
            with fs.open(f"{parts}/{run_id}-{files:06d}.parquet", "wb") as f:
                pq.write_table(table.slice(start, spec.rows_per_file), f)
            files += 1


ANSWER_BATCH = 4096  # rows turned into JSON lines at a time


def _write_answers(spec: InferSpec, output: pa.Table) -> None:
    """LLaVA's answers file: one JSON object per row of ``output`` (with
    :data:`ANSWER_COLUMNS`), in id order (Arrow sorts strings by their UTF-8 bytes: code-point
    order, as Python's). Written as it is made, a batch of lines at a time."""
    ordered = output.sort_by("id")

    def lines():
        for batch in ordered.to_batches(max_chunksize=ANSWER_BATCH):
            for row in batch.to_pylist():
                answer = {
                    "question_id": row["id"],
                    "prompt": row["prompt"],
                    "text": row["answer"] or "",
                    "answer_id": row["id"],
                    "model_id": row["model_id"],
                    "metadata": {},
                }
                if row["error"]:
                    answer |= {"error": row["error"], "error_detail": row["error_detail"]}
                yield json.dumps(answer) + "\n"

    write_lines(join(spec.output, "answers.jsonl"), lines(), spec.storage)
