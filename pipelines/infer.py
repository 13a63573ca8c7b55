"""`stf infer`: batch generation over an image dataset with Ray Data, resumable, errors as rows.

Inputs are image folders or globs (one row per image, one prompt for all), or tables (Parquet or
JSONL with an id, an image path and optionally a per-row prompt). The driver lists the rows, drops
the ids an earlier run already wrote, and streams the rest through an actor pool of model replicas
(:class:`Answerer`) doing batched generation; each block lands as one Parquet file under
``OUTPUT/parts/``. A row whose image cannot be read or decoded becomes an error row, never a failed
job. The job ends by checking that every input id is in the output exactly once, then writes
``summary.json`` (and, if asked, LLaVA's answers file).
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, NonNegativeFloat, PositiveInt

from pipelines.model_loader import InferenceModel
from pipelines.spec import JobSpec, StorageOptions
from pipelines.storage import (
    Location,
    Locations,
    arrow_filesystem,
    expand_inputs,
    filesystem,
    fs_path,
    is_s3,
    join,
    read_json,
    read_many,
    write_json_atomic,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TABLE_SUFFIXES = (".parquet", ".jsonl")

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.string()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("error", pa.string()),
        ("model_id", pa.string()),
    ]
)


class InferSpec(JobSpec):
    """Batch generation over images (folders, globs, or Parquet/JSONL tables of image paths)."""

    model: InferenceModel = Field(description="the model directory and where it runs")
    model_id: str | None = Field(None, description="recorded with each answer (default: dir name)")
    inputs: Locations = Field(
        description="image folders, image globs, or .parquet/.jsonl tables (local or s3://)"
    )
    output: Location = Field(description="output directory (parts/*.parquet, summary.json)")
    image_root: Location | None = Field(
        None, description="tables: relative image paths resolve here (default: the table's folder)"
    )
    id_column: str = Field("id", description="tables: the row id column")
    image_column: str = Field("image", description="tables: the image path column")
    prompt_column: str = Field("prompt", description="tables: per-row prompt column, if present")
    prompt: str = Field("Describe this image.", description="the prompt of rows without their own")
    prompt_template: str = Field(
        "{prompt}",
        description="wraps each row's prompt; may name other table columns, e.g. "
        "'{prompt} Answer with one word.' or 'Question: {question}'",
    )
    system: str | None = Field(None, description="a system message before each prompt")
    max_new_tokens: PositiveInt = Field(64, description="tokens generated per row at most")
    temperature: NonNegativeFloat = Field(0.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: PositiveInt = Field(8, description="rows per generate call")
    concurrency: PositiveInt = Field(1, description="model replicas (actors)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs each replica reserves")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each replica reserves")
    rows_per_file: PositiveInt = Field(
        256, description="rows per output Parquet file (also the resume granularity)"
    )
    max_image_pixels: PositiveInt = Field(40_000_000, description="decompression-bomb guard")
    limit: PositiveInt | None = Field(None, description="only the first N rows (a quick look)")
    answers_jsonl: bool = Field(
        False, description="also write answers.jsonl in LLaVA's format (question_id, prompt, text)"
    )
    storage: StorageOptions = Field(default_factory=StorageOptions)

    @property
    def served_model_id(self) -> str:
        return self.model_id or posixpath.basename(self.model.path.rstrip("/")) or "stf"


class InferFailed(RuntimeError):
    """The job could not produce a complete output (the message says what is missing)."""


# ---- listing the rows --------------------------------------------------------------------------


def list_rows(spec: InferSpec) -> pa.Table:
    """Every input row as (id, image, prompt); ids must be unique across inputs."""
    tables = []
    for location in spec.inputs:
        if location.lower().endswith(TABLE_SUFFIXES):
            for url, _ in expand_inputs([location], spec.storage):
                tables.append(_table_rows(url, spec))
        else:
            tables.append(_image_rows(location, spec))
    rows = pa.concat_tables(tables) if tables else _rows_table([], [], [])
    if spec.limit is not None:
        rows = rows.slice(0, spec.limit)
    ids = rows.column("id")
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dupes = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:5]
        raise ValueError(f"row ids must be unique; repeated: {', '.join(map(str, dupes))}")
    return rows


def _rows_table(ids: list[str], images: list[str], prompts: list[str]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.string()), "image": pa.array(images, pa.string()),
                     "prompt": pa.array(prompts, pa.string())})  # fmt: skip


def _image_rows(location: str, spec: InferSpec) -> pa.Table:
    """A folder (recursively) or a glob of images; ids are paths relative to the folder (globs:
    relative to the folder of the pattern's first wildcard)."""
    fs = filesystem(location, spec.storage)
    path = fs_path(location).rstrip("/")
    if not any(c in path for c in "*?["):
        if not fs.isdir(path):
            raise FileNotFoundError(f"input {location!r} is neither a folder nor a table")
        base, pattern = path, path + "/**"
    else:
        base, pattern = posixpath.dirname(path.split("*")[0].split("?")[0].split("[")[0]), path
    urls = sorted(
        u for u, _ in expand_inputs([_url(location, pattern)], spec.storage)
        if u.lower().endswith(IMAGE_SUFFIXES)
    )  # fmt: skip
    if not urls:
        raise FileNotFoundError(
            f"input {location!r} has no image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    prefix = len(_url(location, base).rstrip("/")) + 1
    ids = [u[prefix:] for u in urls]
    prompts = [_render(spec, {"prompt": spec.prompt})] * len(urls)
    return _rows_table(ids, urls, prompts)


def _url(like: str, path: str) -> str:
    return f"s3://{path}" if is_s3(like) else path


def read_records(url: str, storage: StorageOptions) -> list[dict[str, Any]]:
    """The rows of a Parquet or JSONL table (local or s3://) as dicts."""
    fs = filesystem(url, storage)
    with fs.open(fs_path(url), "rb") as f:
        if url.lower().endswith(".parquet"):
            return pq.read_table(f).to_pylist()
        records = []
        for number, line in enumerate(f.read().decode().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{url} line {number} is not JSON: {err}") from None
        return records


def _table_rows(url: str, spec: InferSpec) -> pa.Table:
    records = read_records(url, spec.storage)
    root = spec.image_root or posixpath.dirname(url)
    ids, images, prompts = [], [], []
    for number, record in enumerate(records, 1):
        for column in (spec.id_column, spec.image_column):
            if record.get(column) in (None, ""):
                raise ValueError(f"{url} row {number} has no {column!r} (id_column/image_column)")
        image = str(record[spec.image_column])
        is_absolute = image.startswith(("s3://", "/"))
        ids.append(str(record[spec.id_column]))
        images.append(image if is_absolute else join(root, image))
        own = record.get(spec.prompt_column)
        prompts.append(_render(spec, {**record, "prompt": own if own else spec.prompt}))
    return _rows_table(ids, images, prompts)


def _render(spec: InferSpec, values: dict[str, Any]) -> str:
    try:
        return spec.prompt_template.format_map(values)
    except KeyError as err:
        raise ValueError(f"prompt_template names {err}, which the input rows do not have") from None


# ---- the replica -------------------------------------------------------------------------------


class Answerer:
    """One model replica in the actor pool: reads and decodes a batch's images, generates for the
    rows whose image is fine, and returns every row (errors included)."""

    def __init__(self, spec: InferSpec):
        from pipelines.model_loader import load_generator

        self.spec = spec
        self.generator = load_generator(spec.model, spec.storage)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from stf_model.generation import ChatPrompt, SamplingParams
        from stf_model.processing import decode_image
        from stf_model.records import RecordError

        spec = self.spec
        ids, urls, texts = (list(batch[k]) for k in ("id", "image", "prompt"))
        data = read_many(urls, spec.storage)
        params = SamplingParams(spec.max_new_tokens, spec.temperature, spec.top_p)
        out: dict[str, list] = {name: [] for name in OUTPUT_SCHEMA.names}
        prompts, rows = [], []
        errors: dict[int, str] = {}
        for row, (url, text) in enumerate(zip(urls, texts, strict=True)):
            raw = data[url]
            try:
                if isinstance(raw, FileNotFoundError):
                    raise RecordError("image_missing", f"{url} does not exist")
                if isinstance(raw, Exception):
                    raise RecordError("image_unreadable", f"{url}: {raw!r}")
                image = decode_image(raw, spec.max_image_pixels)
            except RecordError as err:
                errors[row] = f"{err.reason}: {err.detail}"
                continue
            messages = [{"role": "system", "content": spec.system}] if spec.system else []
            messages.append(
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
            )
            prompts.append(ChatPrompt(self.generator.render(messages), [image], params))
            rows.append(row)
        results = dict(zip(rows, self.generator.generate(prompts), strict=True)) if prompts else {}
        for row, row_id in enumerate(ids):
            done = results.get(row)
            out["id"].append(row_id)
            out["image"].append(urls[row])
            out["prompt"].append(texts[row])
            out["answer"].append(done.text if done else None)
            out["finish_reason"].append(done.finish_reason if done else None)
            out["prompt_tokens"].append(done.prompt_tokens if done else None)
            out["completion_tokens"].append(done.completion_tokens if done else None)
            out["error"].append(errors.get(row))
            out["model_id"].append(spec.served_model_id)
        return out


# ---- the output --------------------------------------------------------------------------------


def _parts_dir(spec: InferSpec) -> str:
    return join(spec.output, "parts")


def read_output(spec: InferSpec, repair: bool = False) -> pa.Table:
    """All rows written so far. With ``repair``, files a killed run left half-written (no Parquet
    footer) and files whose every id another file already holds (a retried task's twin) are
    deleted, so each id is counted once."""
    fs = filesystem(spec.output, spec.storage)
    parts = _parts_dir(spec)
    fs.invalidate_cache()
    if not fs.exists(fs_path(parts)):
        return OUTPUT_SCHEMA.empty_table()
    tables, seen = [], set()
    for path in sorted(fs.find(fs_path(parts))):
        if not path.endswith(".parquet"):
            continue
        try:
            with fs.open(path, "rb") as f:
                table = pq.read_table(f, schema=OUTPUT_SCHEMA)
        except (pa.ArrowInvalid, OSError) as err:
            if not repair:
                raise
            log.warning("removing unreadable output file %s (%s)", path, err)
            fs.rm(path)
            continue
        ids = set(table.column("id").to_pylist())
        if repair and ids <= seen:
            log.warning("removing %s: a duplicate of rows already written", path)
            fs.rm(path)
            continue
        seen |= ids
        tables.append(table)
    return pa.concat_tables(tables) if tables else OUTPUT_SCHEMA.empty_table()


def run(spec: InferSpec) -> dict[str, Any]:
    """Runs (or resumes) the job; returns the summary it writes to ``OUTPUT/summary.json``."""
    import ray

    from pipelines.ray_env import init_ray

    started = time.perf_counter()
    rows = list_rows(spec)
    done = read_output(spec, repair=True)
    done_ids = pa.array(sorted(set(done.column("id").to_pylist())), pa.string())
    todo = rows.filter(pc.invert(pc.is_in(rows.column("id"), value_set=done_ids)))
    log.info("%d rows: %d already written, %d to do", len(rows), len(done), len(todo))
    if len(todo):
        init_ray()
        per_block = min(
            spec.rows_per_file, max(spec.batch_size, math.ceil(len(todo) / spec.concurrency))
        )
        blocks = [todo.slice(i, per_block) for i in range(0, len(todo), per_block)]
        dataset = ray.data.from_arrow(blocks).map_batches(
            Answerer,
            fn_constructor_kwargs={"spec": spec},
            batch_size=spec.batch_size,
            batch_format="numpy",
            concurrency=spec.concurrency,
            num_cpus=spec.num_cpus,
            num_gpus=spec.num_gpus,
        )
        # The writes reserve no CPU: with every CPU held by replicas, a 1-CPU write task would
        # never be scheduled.
        dataset.write_parquet(
            _parts_dir(spec),
            filesystem=arrow_filesystem(spec.output, spec.storage),
            schema=OUTPUT_SCHEMA,
            ray_remote_args={"num_cpus": 0},
            min_rows_per_file=per_block,
        )
    output = read_output(spec, repair=True)
    written = set(output.column("id").to_pylist())
    missing = [i for i in rows.column("id").to_pylist() if i not in written]
    if missing or len(output) != len(written):
        raise InferFailed(
            f"{len(missing)} of {len(rows)} rows have no output (e.g. {missing[:3]}) or ids repeat; "
            "re-run the same spec to finish"
        )
    errors = output.filter(pc.is_valid(output.column("error")))
    by_reason: dict[str, int] = {}
    for message in errors.column("error").to_pylist():
        reason = message.split(":", 1)[0]
        by_reason[reason] = by_reason.get(reason, 0) + 1
    summary = {
        "rows": len(rows),
        "answered": len(output) - len(errors),
        "errors": len(errors),
        "errors_by_reason": by_reason,
        "resumed_rows": len(done),
        "model": spec.model.path,
        "model_id": spec.served_model_id,
        "seconds": round(time.perf_counter() - started, 2),
        "spec": spec.resolved(),
    }
    if spec.answers_jsonl:
        _write_answers(spec, output)
    write_json_atomic(join(spec.output, "summary.json"), summary, spec.storage)
    return summary


def _write_answers(spec: InferSpec, output: pa.Table) -> None:
    """LLaVA's answers file: one JSON object per question, in id order."""
    lines = []
    for row in sorted(output.to_pylist(), key=lambda r: r["id"]):
        answer = {"question_id": row["id"], "prompt": row["prompt"], "text": row["answer"] or "",
                  "answer_id": row["id"], "model_id": row["model_id"], "metadata": {}}  # fmt: skip
        if row["error"]:
            answer["error"] = row["error"]
        lines.append(json.dumps(answer))
    fs = filesystem(spec.output, spec.storage)
    fs.pipe_file(fs_path(join(spec.output, "answers.jsonl")), ("\n".join(lines) + "\n").encode())


def summary_of(spec: InferSpec) -> dict[str, Any] | None:
    """The summary a finished run wrote, or None."""
    return read_json(join(spec.output, "summary.json"), spec.storage)
