"""The preprocessed dataset on storage: Parquet shards, a quarantine, and the manifest.

Layout under the output URL::

    manifest.json     the commit point: written last, lists every shard and quarantine file
    spec.yaml         the resolved spec of the run that wrote it
    shards/*.parquet  SHARD_SCHEMA rows
    quarantine/*.parquet  QUARANTINE_SCHEMA rows, one per rejected record

Readers trust only files listed by a manifest whose ``status`` is ``complete``, so a job killed
half-way (files but no manifest) can never be mistaken for a finished dataset, on local disks or
on S3 alike (S3 has no atomic rename; one PUT of the manifest is atomic).
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource import Datasink, Datasource, ReadTask, WriteResult

from pipelines.spec import StorageOptions
from pipelines.storage import filesystem, fs_path, join, read_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

SHARD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("index", pa.int64()),
        ("input_ids", pa.list_(pa.int32())),  # one <image> id per image, not expanded
        ("labels", pa.list_(pa.int32())),  # -100 where not supervised
        ("pixels", pa.binary()),  # uint8 (3, S, S) C-order, not normalised; null without image
        ("num_images", pa.int8()),
        ("length", pa.int32()),  # len(input_ids)
        ("modality", pa.string()),  # "image" | "text", for modality-grouped batches
        ("num_supervised", pa.int32()),
        ("truncated", pa.bool_()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("index", pa.int64()),  # 0-based record position in the file
        ("line", pa.int64()),  # 1-based line where the record starts
        ("id", pa.string()),
        ("reason", pa.string()),  # a key of stf_model.records.REASONS
        ("detail", pa.string()),
    ]
)
# What the preprocessing map emits: a record's outcome (ok / error) or a file's count row.
PROCESSED_SCHEMA = pa.schema(
    [("status", pa.string())]
    + [f for f in SHARD_SCHEMA if f.name not in ("id", "source", "index")]
    + list(QUARANTINE_SCHEMA)
    + [("file_records", pa.int64())]
)


class ShardsDatasink(Datasink[dict]):
    """Writes processed rows: ``ok`` rows to ``shards/``, ``error`` rows to ``quarantine/``, and
    tallies the count rows. The driver-side instance keeps the combined tally in ``summary``."""

    def __init__(self, output: str, storage: StorageOptions, rows_per_shard: int, image_bytes: int):
        self._output = output
        self._storage = storage
        self._rows_per_shard = rows_per_shard
        # Row groups of about 64 MiB: small enough to stream, large enough to read efficiently.
        self._row_group = max(1, min(rows_per_shard, (64 << 20) // max(image_bytes, 1)))
        self.summary: dict[str, Any] | None = None

    @property
    def min_rows_per_write(self) -> int:
        return self._rows_per_shard

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        table = pa.concat_tables(tables) if tables else PROCESSED_SCHEMA.empty_table()
        status = table.column("status")
        prefix = f"{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}"
        ok = table.filter(pc.equal(status, "ok"))
        bad = table.filter(pc.equal(status, "error"))
        counts = table.filter(pc.equal(status, "count"))
        return {
            "shards": self._write_parts("shards", prefix, ok, SHARD_SCHEMA),
            "quarantine": self._write_parts("quarantine", prefix, bad, QUARANTINE_SCHEMA),
            "read": _tally(counts, "source", weights=counts.column("file_records").to_pylist()),
            "written": _tally(ok, "source"),
            "quarantined": _tally(bad, "source"),
            "reasons": _tally(bad, "reason"),
            "modality": _tally(ok, "modality"),
            "truncated": int(pc.sum(ok.column("truncated")).as_py() or 0),
            "tokens": int(pc.sum(ok.column("length")).as_py() or 0),
            "supervised": int(pc.sum(ok.column("num_supervised")).as_py() or 0),
        }

    def _write_parts(
        self, folder: str, prefix: str, table: pa.Table, schema: pa.Schema
    ) -> list[dict]:
        parts = []
        fs = filesystem(self._output, self._storage)
        # Ray hands us at least rows_per_shard rows (more when blocks do not divide evenly):
        # split them into the nearest whole number of equal parts.
        n_parts = max(1, round(table.num_rows / self._rows_per_shard)) if table.num_rows else 0
        bounds = [table.num_rows * k // max(n_parts, 1) for k in range(n_parts + 1)]
        for k in range(n_parts):
            part = table.slice(bounds[k], bounds[k + 1] - bounds[k])
            rel = f"{folder}/part-{prefix}-{k:04d}.parquet"
            path = fs_path(join(self._output, rel))
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with fs.open(path, "wb") as f:
                pq.write_table(
                    part.select(schema.names).cast(schema),
                    f,
                    row_group_size=self._row_group,
                    compression="zstd",
                )
            parts.append({"path": rel, "rows": part.num_rows})
        return parts

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        lists, counters = (
            ("shards", "quarantine"),
            ("read", "written", "quarantined", "reasons", "modality"),
        )
        summary: dict[str, Any] = {key: [] for key in lists}
        summary.update({key: Counter() for key in counters})
        summary.update(truncated=0, tokens=0, supervised=0)
        for part in write_result.write_returns:
            for key, value in part.items():
                if key in lists:
                    summary[key].extend(value)
                elif key in counters:
                    summary[key].update(value)
                else:
                    summary[key] += value
        for key in lists:
            summary[key].sort(key=lambda p: p["path"])
        self.summary = summary


def _tally(table: pa.Table, column: str, weights: list[int] | None = None) -> dict[str, int]:
    counts: Counter = Counter()
    values = table.column(column).to_pylist()
    for value, weight in zip(values, weights or [1] * len(values), strict=True):
        counts[value] += weight
    return dict(counts)


def read_manifest(output: str, storage: StorageOptions | None = None) -> dict[str, Any]:
    """The manifest of a finished preprocessing run; raises when the output is missing,
    unfinished or failed, so a trainer never starts on partial data."""
    storage = storage or StorageOptions()
    manifest = read_json(join(output, MANIFEST), storage)
    if manifest is None:
        raise FileNotFoundError(
            f"{output} has no {MANIFEST}: preprocessing did not run there or did not finish; "
            "run `stf preprocess` (it rebuilds unfinished outputs)"
        )
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{output}: shard schema version {manifest.get('schema_version')}, this code reads "
            f"{SCHEMA_VERSION}; re-run `stf preprocess` with this version"
        )
    if manifest.get("status") != "complete":
        raise ValueError(
            f"{output}: preprocessing {manifest.get('status')}: {manifest.get('failure')}"
        )
    return manifest


def shard_urls(output: str, manifest: dict[str, Any], folder: str = "shards") -> list[str]:
    """Full URLs of the files a manifest lists (``shards`` or ``quarantine``)."""
    return [join(output, part["path"]) for part in manifest[folder]]


class ShardsDatasource(Datasource):
    """Reads the shard files a manifest lists, one read task per file, one block per row group.

    ``ray.data.read_parquet`` first lists files in a task that needs a whole CPU; under Ray Train
    the workers already hold every CPU of a small cluster, so that task would never run. The files
    are known from the manifest, so this reads them directly, reserving no CPU."""

    def __init__(self, urls: list[str], storage: StorageOptions):
        super().__init__()
        self._urls = urls
        self._storage = storage

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        return [
            ReadTask(
                functools.partial(_read_row_groups, url, self._storage),
                BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=[url]),
            )
            for url in self._urls
        ]


def _read_row_groups(url: str, storage: StorageOptions):
    fs = filesystem(url, storage)
    with fs.open(fs_path(url), "rb") as f:
        parquet = pq.ParquetFile(f)
        for group in range(parquet.num_row_groups):
            yield parquet.read_row_group(group)


def read_shards(outputs: list[str], storage: StorageOptions | None = None):
    """A Ray Dataset over the shards of finished preprocessing outputs (manifests checked)."""
    import ray

    storage = storage or StorageOptions()
    urls = [url for out in outputs for url in shard_urls(out, read_manifest(out, storage))]
    return ray.data.read_datasource(ShardsDatasource(urls, storage), num_cpus=0)
