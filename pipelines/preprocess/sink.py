"""The preprocessing sink: processed rows -> ``shards/`` and ``quarantine/`` Parquet files, with
the per-file tally that lets the driver check that every record read was written or quarantined.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, WriteResult

from pipelines.shards import QUARANTINE_SCHEMA, SHARD_SCHEMA, ShardFile
from pipelines.spec import StorageOptions
from pipelines.storage import filesystem, fs_path, join


class Outcome(StrEnum):
    """What a row the preprocessing map emits is (its ``status`` column)."""

    SAMPLE = "ok"  # a record made into a shard row
    REJECTED = "error"  # a record for the quarantine, with its reason and detail
    FILE_COUNT = "count"  # a file's count of records read (``file_records``; no index or line)


# What the preprocessing map emits: one row per record (a sample or a rejection) and one count
# row per input file.
PROCESSED_SCHEMA = pa.schema(
    [("status", pa.string())]
    + [f for f in SHARD_SCHEMA if f.name not in ("id", "source", "index")]
    + list(QUARANTINE_SCHEMA)
    + [("file_records", pa.int64())]
)


@dataclass
class WriteTally:
    """What one write task (or, summed, the whole run) wrote and counted. It crosses from the
    write tasks to the driver, so it is typed rather than a dict of string keys."""

    shards: list[ShardFile] = field(default_factory=list)
    quarantine: list[ShardFile] = field(default_factory=list)
    read: Counter = field(default_factory=Counter)  # source file -> records read
    written: Counter = field(default_factory=Counter)  # source file -> rows written
    quarantined: Counter = field(default_factory=Counter)  # source file -> rows quarantined
    reasons: Counter = field(default_factory=Counter)
    modality: Counter = field(default_factory=Counter)
    truncated: int = 0
    tokens: int = 0
    supervised: int = 0
    longest: int = 0  # the longest written row, one placeholder per image

    def add(self, other: WriteTally) -> None:
        self.shards += other.shards
        self.quarantine += other.quarantine
        for name in ("read", "written", "quarantined", "reasons", "modality"):
            getattr(self, name).update(getattr(other, name))
        self.truncated += other.truncated
        self.tokens += other.tokens
        self.supervised += other.supervised
        self.longest = max(self.longest, other.longest)


class ShardsDatasink(Datasink[WriteTally]):
    """Writes processed rows: ``ok`` rows to ``shards/``, ``error`` rows to ``quarantine/``, and
    tallies the count rows. The driver-side instance keeps the combined tally in ``summary``."""

    def __init__(self, output: str, storage: StorageOptions, rows_per_shard: int, image_bytes: int):
        self._output = output
        self._storage = storage
        self._rows_per_shard = rows_per_shard
        # Row groups of about 64 MiB: small enough to stream, large enough to read efficiently.
        self._row_group = max(1, min(rows_per_shard, (64 << 20) // max(image_bytes, 1)))
        self.summary: WriteTally | None = None

    @property
    def min_rows_per_write(self) -> int:
        return self._rows_per_shard

    def write(self, blocks: Iterable[Block], ctx) -> WriteTally:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        table = pa.concat_tables(tables) if tables else PROCESSED_SCHEMA.empty_table()
        status = table.column("status")
        prefix = f"{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}"
        ok = table.filter(pc.equal(status, Outcome.SAMPLE.value))
        bad = table.filter(pc.equal(status, Outcome.REJECTED.value))
        counts = table.filter(pc.equal(status, Outcome.FILE_COUNT.value))
        return WriteTally(
            shards=self._write_parts("shards", prefix, ok, SHARD_SCHEMA),
            quarantine=self._write_parts("quarantine", prefix, bad, QUARANTINE_SCHEMA),
            read=_tally(counts, "source", weights=counts.column("file_records").to_pylist()),
            written=_tally(ok, "source"),
            quarantined=_tally(bad, "source"),
            reasons=_tally(bad, "reason"),
            modality=_tally(ok, "modality"),
            truncated=int(pc.sum(ok.column("truncated")).as_py() or 0),
            tokens=int(pc.sum(ok.column("length")).as_py() or 0),
            supervised=int(pc.sum(ok.column("num_supervised")).as_py() or 0),
            longest=int(pc.max(ok.column("length")).as_py() or 0),
        )

    def _write_parts(
        self, folder: str, prefix: str, table: pa.Table, schema: pa.Schema
    ) -> list[ShardFile]:
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
            parts.append(ShardFile(path=rel, rows=part.num_rows))
        return parts

    def on_write_complete(self, write_result: WriteResult[WriteTally]) -> None:
        summary = WriteTally()
        for part in write_result.write_returns:
            summary.add(part)
        summary.shards.sort(key=lambda p: p.path)
        summary.quarantine.sort(key=lambda p: p.path)
        self.summary = summary


def _tally(table: pa.Table, column: str, weights: list[int] | None = None) -> Counter:
    counts: Counter = Counter()
    values = table.column(column).to_pylist()
    for value, weight in zip(values, weights or [1] * len(values), strict=True):
        counts[value] += weight
    return counts
