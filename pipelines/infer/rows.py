"""Listing the rows of a batch-inference job: image folders and globs (one row per image, one
prompt for all) or tables (Parquet or JSONL with an id, an image path and optionally a per-row
prompt). Every row is ``(id, image URL, rendered prompt)``; ids are unique across inputs."""

from __future__ import annotations

import glob
import posixpath
import string
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import strict_json
from pipelines.errors import InputError, MissingInput
from pipelines.infer.spec import InferSpec
from pipelines.spec import StorageOptions
from pipelines.storage import expand_inputs, filesystem, fs_path, has_magic, join, to_url

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TABLE_SUFFIXES = (".parquet", ".jsonl")


def list_rows(spec: InferSpec) -> pa.Table:
    """Every input row as (id, image, prompt); ids must be unique across inputs."""
    tables = []
    for location in spec.inputs:
        if location.lower().endswith(TABLE_SUFFIXES):
            for found in expand_inputs([location], spec.storage):
                tables.append(_table_rows(found.url, spec))
        else:
            tables.append(_image_rows(location, spec))
    rows = pa.concat_tables(tables) if tables else _rows_table([], [], [])
    if spec.limit is not None:
        rows = rows.slice(0, spec.limit)
    ids = rows.column("id")
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dupes = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:5]
        raise InputError(f"row ids must be unique; repeated: {', '.join(map(str, dupes))}")
    return rows


def _rows_table(ids: list[str], images: list[str | None], prompts: list[str]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "image": pa.array(images, pa.string()),
            "prompt": pa.array(prompts, pa.string()),
        }
    )


def _image_rows(location: str, spec: InferSpec) -> pa.Table:
    """A folder (recursively) or a glob of images; ids are paths relative to the folder (globs:
    relative to the folder of the pattern's first wildcard)."""
    fs = filesystem(location, spec.storage)
    path = fs_path(location).rstrip("/")
    if fs.isdir(path):  # a folder, even one named like a glob ("photos [2023]")
        base, pattern = path, glob.escape(path) + "/**"
    elif has_magic(path):
        base, pattern = posixpath.dirname(path.split("*")[0].split("?")[0].split("[")[0]), path
    else:
        raise MissingInput(
            f"input {location!r} is neither a folder nor a table ({', '.join(TABLE_SUFFIXES)})"
        )
    matches = expand_inputs([to_url(location, pattern)], spec.storage)
    urls = sorted(m.url for m in matches if m.url.lower().endswith(IMAGE_SUFFIXES))
    if not urls:
        raise MissingInput(f"input {location!r} has no image files ({', '.join(IMAGE_SUFFIXES)})")
    prefix = len(to_url(location, base).rstrip("/")) + 1
    ids = [u[prefix:] for u in urls]
    prompts = [_render(spec, {"prompt": spec.prompt})] * len(urls)
    return _rows_table(ids, urls, prompts)


def read_records(
    url: str, storage: StorageOptions, columns: set[str] | None = None
) -> list[dict[str, Any]]:
    """The rows of a Parquet or JSONL table (local or s3://) as dicts."""
    return list(iter_records(url, storage, columns))


def iter_records(
    url: str, storage: StorageOptions, columns: set[str] | None = None
) -> Iterator[dict[str, Any]]:
    """The rows of a Parquet or JSONL table as dicts, streamed: Parquet a row group at a time,
    with only ``columns`` (those it has; None: all), JSONL a line at a time."""
    fs = filesystem(url, storage)
    with fs.open(fs_path(url), "rb") as f:
        if url.lower().endswith(".parquet"):
            table = pq.ParquetFile(f)
            names = [n for n in table.schema_arrow.names if columns is None or n in columns]
            for batch in table.iter_batches(columns=names):
                yield from batch.to_pylist()
            return
        yield from strict_json.objects_per_line(f, url)


def _table_rows(url: str, spec: InferSpec) -> pa.Table:
    root = spec.image_root or posixpath.dirname(url)
    required = (spec.id_column,) if spec.text_only_rows else (spec.id_column, spec.image_column)
    ids, images, prompts = [], [], []
    for number, record in enumerate(iter_records(url, spec.storage, _columns_read(spec)), 1):
        for column in required:
            if record.get(column) in (None, ""):
                raise InputError(f"{url} row {number} has no {column!r} (id_column/image_column)")
        ids.append(str(record[spec.id_column]))
        image = record.get(spec.image_column)
        if image in (None, ""):
            images.append(None)  # asked without an image (text_only_rows)
        else:
            image = str(image)
            images.append(image if image.startswith(("s3://", "/")) else join(root, image))
        own = record.get(spec.prompt_column)  # null or "": the row has none of its own
        prompts.append(
            _render(spec, {**record, "prompt": spec.prompt if own in (None, "") else own})
        )
    if not ids:  # as a pattern that matches no file: never a silent job of zero rows
        raise MissingInput(f"table {url!r} has no rows")
    return _rows_table(ids, images, prompts)


def _columns_read(spec: InferSpec) -> set[str]:
    """The columns a table's rows are read with: the id, image and prompt columns and the
    fields ``prompt_template`` names (a table may hold large columns the job never uses)."""
    fields = {
        name.split(".")[0].split("[")[0]
        for _, name, _, _ in string.Formatter().parse(spec.prompt_template)
        if name
    }
    return {spec.id_column, spec.image_column, spec.prompt_column, *fields}


def _render(spec: InferSpec, values: dict[str, Any]) -> str:
    try:
        return spec.prompt_template.format_map(values)
    except KeyError as err:
        raise InputError(f"prompt_template names {err}, which the input rows do not have") from None
