"""The preprocessed dataset on storage: Parquet shards, a quarantine, and the manifest.

Layout under the output URL::

    manifest.json     the commit point: written last, lists every shard and quarantine file
    spec.yaml         the resolved spec of the run that wrote it
    shards/*.parquet  SHARD_SCHEMA rows
    quarantine/*.parquet  QUARANTINE_SCHEMA rows, one per rejected record

Readers trust only files listed by a manifest whose ``status`` is ``complete``, so a job killed
half-way (files but no manifest) can never be mistaken for a finished dataset, on local disks or
on S3 alike (S3 has no atomic rename; one PUT of the manifest is atomic). Preprocessing writes
this layout (:mod:`pipelines.preprocess`); training reads it through :func:`read_shards`.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines.documents import Document
from pipelines.errors import InputError, MissingInput
from pipelines.spec import StorageOptions
from pipelines.storage import filesystem, fs_path, join

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
        ("reason", pa.string()),  # a key of pipelines.reasons.REASONS
        ("detail", pa.string()),
    ]
)


# ---- the manifest ------------------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShardFile(_Part):
    path: str = Field(description="relative to the output directory")
    rows: int


class FileCounts(_Part):
    read: int
    written: int
    quarantined: int


class Counts(_Part):
    read: int
    written: int
    quarantined: int
    truncated: int
    error_rate: float
    by_reason: dict[str, int]
    by_modality: dict[str, int]
    tokens: int
    supervised_tokens: int
    longest: int | None = Field(None, description="the longest row, one placeholder per image")


class ImageGeometry(_Part):
    size: int = Field(description="the tower's input side: pixels are (3, size, size)")
    aspect: Literal["pad", "crop"]
    layout: Literal["CHW"] = "CHW"
    dtype: Literal["uint8"] = "uint8"
    normalized: bool = False


class TokenizerInfo(_Part):
    source: str
    fingerprint: str
    vocab_size: int
    image_token_id: int
    pad_token_id: int | None


class ShardManifest(Document):
    """What a preprocessing run wrote and how: the contract between preprocessing and training.

    ``skipped`` is not stored: it tells the caller of a run that the output was already complete
    for the same spec and inputs, and nothing was rebuilt."""

    KIND = "shard manifest"
    REMEDY = "re-run `stf preprocess` with this version"

    schema_version: Literal[1] = 1
    status: Literal["complete", "failed"]
    failure: str | None = None
    fingerprint: str
    created: str
    seconds: float
    counts: Counts
    files: dict[str, FileCounts]
    shards: list[ShardFile]
    quarantine: list[ShardFile]
    template: str
    max_length: int
    image_tokens: int
    image: ImageGeometry
    tokenizer: TokenizerInfo
    spec: dict[str, Any]
    skipped: bool = Field(False, exclude=True)


def read_manifest(output: str, storage: StorageOptions | None = None) -> ShardManifest:
    """The manifest of a finished preprocessing run; raises when the output is missing,
    unfinished, failed or of another schema version, so a trainer never starts on partial data."""
    manifest = ShardManifest.read(join(output, MANIFEST), storage or StorageOptions())
    if manifest is None:
        raise MissingInput(
            f"{output} has no {MANIFEST}: preprocessing did not run there or did not finish; "
            "run `stf preprocess` (it rebuilds unfinished outputs)"
        )
    if manifest.status != "complete":
        raise InputError(f"{output}: preprocessing {manifest.status}: {manifest.failure}")
    return manifest


def shard_urls(output: str, manifest: ShardManifest, folder: str = "shards") -> list[str]:
    """Full URLs of the files a manifest lists (``shards`` or ``quarantine``)."""
    return [join(output, part.path) for part in getattr(manifest, folder)]


# ---- reading the shards ------------------------------------------------------------------------


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


def read_shards(urls: list[str], storage: StorageOptions, concurrency: int):
    """A Ray Dataset over shard files (from :func:`shard_urls`), reserving no CPU, reading at
    most ``concurrency`` files at once. Read tasks that reserve no CPU are otherwise all started
    at once, each in a worker process of its own: one per shard file, so the number of processes
    (and the memory they hold) grew with the dataset."""
    import ray

    return ray.data.read_datasource(
        ShardsDatasource(urls, storage), num_cpus=0, concurrency=max(1, concurrency)
    )
