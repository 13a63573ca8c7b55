"""The output folder of ``stf infer`` (local or S3): its layout, defined here once, and typed
reads and writes of what it holds.

    run.json          what the answers depend on: the layout version, the model, ANSWER_FIELDS
    parts/*.parquet   the answered rows (OUTPUT_SCHEMA), at most rows_per_file a file; every
                      input id once, an error row (reason code and detail) where no answer came
    summary.json      what a finished run answered (:class:`InferSummary`)
    answers.jsonl     LLaVA's answers file, one JSON object per row in id order (answers_jsonl)

A run resumes an output by reading the ids in ``parts/``; ``run.json`` keeps it from resuming
answers of another model or prompt.
"""

from __future__ import annotations

import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.documents import Document
from pipelines.errors import InputError
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

RUN_FILE = "run.json"
PARTS_DIR = "parts"
SUMMARY_FILE = "summary.json"
ANSWERS_FILE = "answers.jsonl"

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.string()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("error", pa.string()),  # why a row got no answer: a reason code (pipelines.reasons)
        ("error_detail", pa.string()),  # and what exactly, for a person
        ("model_id", pa.string()),
    ]
)


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
    return join(spec.output, PARTS_DIR)


# What answers.jsonl holds.
ANSWER_COLUMNS = ("id", "prompt", "answer", "model_id", "error", "error_detail")
READ_THREADS = 16  # part files read at once: on S3 each is a few round trips


def read_output(
    spec: InferSpec, columns: tuple[str, ...] = tuple(OUTPUT_SCHEMA.names), repair: bool = False
) -> pa.Table:
    """The rows written so far, with ``columns`` only: a resume needs the ids alone, and reading
    one column chunk per file keeps the driver's memory and reads at the ids' size. With
    ``repair``, files a killed run left half-written (no Parquet footer) and files whose every id
    earlier files (in name order) already hold are deleted, so each id is counted once. (Twins
    are found in outputs written through Ray Data's write tasks, which a retry could run twice;
    such outputs are still resumed.)"""
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


class PartWriter:
    """Writes answered rows into new files under ``parts/``, at most ``rows_per_file`` a file,
    named by this run (so a resumed run never overwrites an earlier run's files). A killed
    driver leaves at most one half-written file, which :func:`read_output` removes."""

    def __init__(self, spec: InferSpec):
        self.fs = filesystem(spec.output, spec.storage)
        self.folder = fs_path(_parts_dir(spec))
        self.fs.makedirs(self.folder, exist_ok=True)
        self.rows_per_file = spec.rows_per_file
        self.run_id = uuid.uuid4().hex[:12]
        self.files = 0

    def write(self, rows: pa.Table) -> None:
        table = rows.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)
        for start in range(0, len(table), self.rows_per_file):
            with self.fs.open(f"{self.folder}/{self.run_id}-{self.files:06d}.parquet", "wb") as f:
                pq.write_table(table.slice(start, self.rows_per_file), f)
            self.files += 1


def write_summary(spec: InferSpec, summary: InferSummary) -> None:
    summary.write(join(spec.output, SUMMARY_FILE), spec.storage)


ANSWER_BATCH = 4096  # rows turned into JSON lines at a time


def write_answers(spec: InferSpec, output: pa.Table) -> None:
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

    write_lines(join(spec.output, ANSWERS_FILE), lines(), spec.storage)
