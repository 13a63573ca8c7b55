"""``stf preprocess``: LLaVA JSON/JSONL + images -> tokenised Parquet shards, with a quarantine.

setup (resolve inputs, load the tokenizer, skip if the output is already complete for this spec)
-> Ray Data: read records (one streaming task per file) -> map in an actor pool (validate,
decode + resize the image once, render the template, tokenise, check the label mask) -> write
shards and quarantine -> check records read == written + quarantined -> commit the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import ray
import yaml
from pydantic import Field, PositiveInt
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pipelines.llava_source import LlavaRecordsDatasource
from pipelines.ray_env import cluster_cpus, init_ray
from pipelines.shards import (
    MANIFEST,
    PROCESSED_SCHEMA,
    SCHEMA_VERSION,
    ShardsDatasink,
    read_manifest,
)
from pipelines.spec import JobSpec, StorageOptions
from pipelines.storage import (
    Location,
    Locations,
    ModelRef,
    expand_inputs,
    filesystem,
    fs_path,
    join,
    local_copy,
    read_many,
    remove_tree,
    write_json_atomic,
)
from stf_model import (
    PRESETS,
    STFConfig,
    build_image_processor,
    build_tiny_tokenizer,
    get_chat_template,
    image_to_uint8,
    preset_config,
)
from stf_model.constants import IMAGE_TOKEN
from stf_model.processing import decode_image
from stf_model.records import Conversation, RecordError, parse_record, tokenize_conversation
from stf_model.tokenizer import tokenizer_fingerprint

log = logging.getLogger(__name__)

# Spec keys that change how fast a run goes, not what it writes: not part of the fingerprint.
EXECUTION_ONLY = ("workers", "cpus_per_worker", "batch_size", "overwrite", "storage")


class PreprocessSpec(JobSpec):
    """Turns LLaVA record files and their images into training shards."""

    inputs: Locations = Field(
        min_length=1, description="LLaVA record files or globs (JSON list or JSONL), local or s3://"
    )
    output: Location = Field(description="output directory, local or s3://")
    image_root: Location | None = Field(
        None, description="folder image paths are relative to (default: each record file's folder)"
    )
    template: Literal["plain", "vicuna_v1"] = Field(
        "vicuna_v1", description="chat template: plain (pretraining) or vicuna_v1 (finetuning)"
    )
    model: ModelRef = Field(
        "tiny",
        description="preset 'tiny' or a model directory (local or s3://): its tokenizer, image "
        "size and vision-token count are used",
    )
    image_aspect: Literal["pad", "crop"] = Field(
        "pad", description="pad to square with the mean colour (LLaVA-1.5) or centre-crop"
    )
    max_length: PositiveInt = Field(
        2048, description="LLM context the trainer will use, image tokens included"
    )
    image_tokens: PositiveInt | None = Field(
        None,
        description="LLM positions one image takes, for the length check (default: the "
        "model's count; set 576 to keep shards valid for window-1 models too)",
    )
    max_image_pixels: PositiveInt = Field(
        89_478_485, description="width*height limit per image (decompression-bomb guard)"
    )
    add_missing_image_token: bool = Field(
        False, description="put <image> first in image records that lack it instead of rejecting"
    )
    rows_per_shard: PositiveInt = Field(1024, description="target rows per Parquet shard")
    max_error_rate: float = Field(
        0.05, ge=0, le=1, description="fail the job when quarantined/read exceeds this"
    )
    overwrite: bool = Field(False, description="rebuild even if the output is complete")
    workers: PositiveInt | None = Field(
        None, description="actor-pool size (default: one per cluster CPU)"
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker actor reserves")
    batch_size: PositiveInt = Field(32, description="records per map batch")
    storage: StorageOptions = Field(default_factory=StorageOptions)

    def fingerprint_fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.resolved().items() if k not in EXECUTION_ONLY}


class PreprocessFailed(RuntimeError):
    """The job ran but must not be used: too many errors, or records unaccounted for."""


@dataclass
class ModelInputs:
    """What preprocessing needs from the model: tokenizer, image geometry, token ids."""

    tokenizer: PreTrainedTokenizerBase
    config: STFConfig
    image_token_id: int
    image_tokens: int
    tokenizer_fingerprint: str

    @property
    def image_size(self) -> int:
        return self.config.vision_config.image_size


def load_model_inputs(spec: PreprocessSpec) -> ModelInputs:
    """Tokenizer and config from the ``tiny`` preset or from a model directory."""
    if spec.model in PRESETS:
        if spec.model != "tiny":
            raise ValueError(
                f"model {spec.model!r}: that preset has no local tokenizer; set model to a model "
                "directory (e.g. one written by `stf convert`)"
            )
        config, tokenizer = preset_config("tiny"), build_tiny_tokenizer()
    else:
        # Only the small files: a model directory may also hold many GB of weights.
        local = local_copy(spec.model, spec.storage, patterns=("*.json", "*.model", "*.jinja"))
        if not os.path.exists(os.path.join(local, "config.json")):
            raise FileNotFoundError(f"model {spec.model!r}: no config.json there")
        config = STFConfig.from_pretrained(local)
        tokenizer = AutoTokenizer.from_pretrained(local)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id != config.image_token_index:
        raise ValueError(
            f"model {spec.model!r}: the tokenizer maps {IMAGE_TOKEN} to {image_token_id}, the "
            f"config expects {config.image_token_index}; the tokenizer must have {IMAGE_TOKEN} "
            "as one special token (`stf convert` adds it)"
        )
    return ModelInputs(
        tokenizer=tokenizer,
        config=config,
        image_token_id=image_token_id,
        image_tokens=spec.image_tokens or config.num_image_tokens,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )


def image_url(root: str, relative: str) -> str:
    """The image's URL under ``root``; raises ``image_path_escapes_root`` for absolute paths
    and for ``..`` leaving the root."""
    if relative.startswith(("/", "\\")) or "://" in relative or os.path.isabs(relative):
        raise RecordError("image_path_escapes_root", f"{relative!r} is absolute")
    normal = posixpath.normpath(relative.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        raise RecordError("image_path_escapes_root", f"{relative!r} leaves the image root")
    return join(root, normal)


@dataclass
class Parsed:
    """One raw row after parsing: a conversation and its image URL, or the error."""

    record_id: str | None = None
    conversation: Conversation | None = None
    url: str | None = None
    error: RecordError | None = None
    file_records: int | None = None


class RecordProcessor:
    """The map stage: one actor holds the tokenizer and image processor and turns batches of raw
    records into processed rows (``ok`` / ``error``), passing the count rows through."""

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec
        self.model = load_model_inputs(spec)
        self.template = get_chat_template(spec.template)
        self.image_processor = build_image_processor(self.model.config, spec.image_aspect)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        parsed = [self.parse(row) for row in rows]
        images = self.fetch_images([p.url for p in parsed if p.url is not None])
        out = []
        for row, item in zip(rows, parsed, strict=True):
            base = {"source": row["source"], "index": row["index"], "line": row["line"]}
            if item.file_records is not None:
                out.append({**base, "status": "count", "file_records": item.file_records})
                continue
            base["id"] = item.record_id
            error = item.error
            if error is None:
                try:
                    out.append({**base, "status": "ok", **self.sample(item, images)})
                    continue
                except RecordError as err:
                    error = err
                except Exception as err:  # a bug, not bad input: fail loudly, naming the record
                    raise RuntimeError(
                        f"{row['source']} line {row['line']} (id {item.record_id}): {err!r}"
                    ) from err
            out.append({**base, "status": "error", "reason": error.reason, "detail": error.detail})
        return pa.Table.from_pylist(out, schema=PROCESSED_SCHEMA)

    def parse(self, row: dict) -> Parsed:
        if row["file_records"] is not None:
            return Parsed(file_records=row["file_records"])
        if row["error"] is not None:
            return Parsed(error=RecordError("broken_json_list", row["error"]))
        try:
            record = json.loads(row["raw"])
        except json.JSONDecodeError as err:
            return Parsed(error=RecordError("malformed_json", f"{err.msg} at column {err.colno}"))
        raw_id = record.get("id") if isinstance(record, dict) else None
        record_id = str(raw_id) if raw_id is not None else None
        try:
            conversation = parse_record(
                record,
                add_missing_image_token=self.spec.add_missing_image_token,
                single_exchange=self.spec.template == "plain",
            )
            url = None
            if conversation.image is not None:
                root = self.spec.image_root or posixpath.dirname(row["source"])
                url = image_url(root, conversation.image)
        except RecordError as err:
            return Parsed(record_id=record_id, error=err)
        record_id = record_id or f"{posixpath.basename(row['source'])}:{row['line']}"
        return Parsed(record_id=record_id, conversation=conversation, url=url)

    def fetch_images(self, wanted: list[str]) -> dict[str, bytes | Exception]:
        """Every image of the batch, or the error reading it (S3 reads run concurrently)."""
        return read_many(wanted, self.spec.storage)

    def sample(self, item: Parsed, images: dict) -> dict[str, Any]:
        conversation, url, pixels = item.conversation, item.url, None
        if url is not None:
            data = images[url]
            if isinstance(data, FileNotFoundError):
                raise RecordError("image_missing", f"{url} does not exist")
            if isinstance(data, Exception):
                raise RecordError("image_unreadable", f"{url}: {data!r}")
            image = decode_image(data, self.spec.max_image_pixels)
            pixels = image_to_uint8(image, self.image_processor).tobytes()
        sample = tokenize_conversation(
            conversation.messages,
            self.model.tokenizer,
            self.template,
            max_length=self.spec.max_length,
            image_token_id=self.model.image_token_id,
            num_images=conversation.num_images,
            image_tokens=self.model.image_tokens,
        )
        return {
            "input_ids": sample.input_ids,
            "labels": sample.labels,
            "pixels": pixels,
            "num_images": conversation.num_images,
            "length": len(sample.input_ids),
            "modality": "image" if conversation.num_images else "text",
            "num_supervised": sample.num_supervised,
            "truncated": sample.truncated,
        }


def fingerprint(spec: PreprocessSpec, files: list[tuple[str, int]], model: ModelInputs) -> str:
    """Identifies what a run would write: the output-affecting spec, the input files and their
    sizes, the tokenizer and the shard schema version."""
    payload = {
        "spec": spec.fingerprint_fields(),
        "inputs": files,
        "tokenizer": model.tokenizer_fingerprint,
        "schema_version": SCHEMA_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def run(spec: PreprocessSpec) -> dict[str, Any]:
    """Runs the job and returns its manifest; raises :class:`PreprocessFailed` (after writing the
    quarantine and a ``failed`` manifest) when the output must not be used."""
    storage = spec.storage
    files = expand_inputs(spec.inputs, storage)
    model = load_model_inputs(spec)
    run_fingerprint = fingerprint(spec, files, model)
    manifest_url = join(spec.output, MANIFEST)

    if not spec.overwrite:
        try:
            previous = read_manifest(spec.output, storage)
        except (ValueError, FileNotFoundError):
            previous = None  # none, failed, unfinished or another schema: rebuild below
        if (
            previous is not None
            and previous["fingerprint"] == run_fingerprint
            and _all_listed_files_exist(spec.output, previous, storage)
        ):
            log.info("%s is complete for this spec (%s): skipped", spec.output, run_fingerprint)
            return {**previous, "skipped": True}
    # Invalidate first (the manifest is the commit point), then clear what earlier runs left.
    _remove_file(manifest_url, storage)
    for folder in ("shards", "quarantine"):
        remove_tree(join(spec.output, folder), storage)

    init_ray()
    started = time.time()
    workers = spec.workers or max(1, int(cluster_cpus() / spec.cpus_per_worker))
    # Reading record text and writing Parquet are light next to decoding images; they reserve no
    # CPU so that a pool using every CPU cannot starve them (a deadlock on small machines).
    records = ray.data.read_datasource(LlavaRecordsDatasource(files, storage), num_cpus=0)
    processed = records.map_batches(
        RecordProcessor,
        fn_constructor_args=(spec,),
        batch_format="pyarrow",
        batch_size=spec.batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=spec.cpus_per_worker,
    )
    sink = ShardsDatasink(
        spec.output, storage, spec.rows_per_shard, image_bytes=3 * model.image_size**2
    )
    processed.write_datasink(
        sink, ray_remote_args={"num_cpus": 0}, concurrency=max(1, workers // 2)
    )
    summary = sink.summary
    elapsed = time.time() - started

    manifest = _manifest(spec, files, model, run_fingerprint, summary, elapsed)
    _write_text(join(spec.output, "spec.yaml"), yaml.safe_dump(spec.resolved()), storage)
    _remove_unlisted(spec.output, manifest, storage)
    write_json_atomic(manifest_url, manifest, storage)
    if manifest["status"] != "complete":
        raise PreprocessFailed(manifest["failure"])
    return manifest


def _manifest(
    spec: PreprocessSpec,
    files: list[tuple[str, int]],
    model: ModelInputs,
    run_fingerprint: str,
    summary: dict,
    elapsed: float,
) -> dict:
    read = sum(summary["read"].values())
    written = sum(summary["written"].values())
    quarantined = sum(summary["quarantined"].values())
    per_file = {
        url: {
            "read": summary["read"].get(url, 0),
            "written": summary["written"].get(url, 0),
            "quarantined": summary["quarantined"].get(url, 0),
        }
        for url, _ in files
    }
    failures = []
    unbalanced = [u for u, c in per_file.items() if c["read"] != c["written"] + c["quarantined"]]
    if unbalanced or read != written + quarantined:
        failures.append(
            f"records unaccounted for: read {read} != written {written} + quarantined "
            f"{quarantined} (files: {', '.join(unbalanced)})"
        )
    if summary["reasons"].get("broken_json_list"):
        failures.append(
            "a JSON list file is broken part-way; the records after the break were not read "
            "(see the quarantine rows with reason broken_json_list)"
        )
    error_rate = quarantined / read if read else 0.0
    if error_rate > spec.max_error_rate:
        top = ", ".join(f"{r} {n}" for r, n in summary["reasons"].most_common(5))
        failures.append(
            f"{quarantined} of {read} records quarantined ({error_rate:.1%} > max_error_rate "
            f"{spec.max_error_rate:.1%}): {top}; see {join(spec.output, 'quarantine')}"
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "failed" if failures else "complete",
        "failure": "; ".join(failures) or None,
        "fingerprint": run_fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(elapsed, 2),
        "counts": {
            "read": read,
            "written": written,
            "quarantined": quarantined,
            "truncated": summary["truncated"],
            "error_rate": round(error_rate, 6),
            "by_reason": dict(summary["reasons"].most_common()),
            "by_modality": dict(summary["modality"]),
            "tokens": summary["tokens"],
            "supervised_tokens": summary["supervised"],
        },
        "files": per_file,
        "shards": summary["shards"],
        "quarantine": summary["quarantine"],
        "template": spec.template,
        "max_length": spec.max_length,
        "image_tokens": model.image_tokens,
        "image": {
            "size": model.image_size,
            "aspect": spec.image_aspect,
            "layout": "CHW",
            "dtype": "uint8",
            "normalized": False,
        },
        "tokenizer": {
            "source": spec.model,
            "fingerprint": model.tokenizer_fingerprint,
            "vocab_size": len(model.tokenizer),
            "image_token_id": model.image_token_id,
            "pad_token_id": model.tokenizer.pad_token_id,
        },
        "spec": spec.resolved(),
    }


def _all_listed_files_exist(output: str, manifest: dict, storage: StorageOptions) -> bool:
    fs = filesystem(output, storage)
    fs.invalidate_cache()
    parts = manifest["shards"] + manifest["quarantine"]
    return all(fs.exists(fs_path(join(output, p["path"]))) for p in parts)


def _remove_unlisted(output: str, manifest: dict, storage: StorageOptions) -> None:
    """Deletes files a retried write task left behind, so the folders hold exactly what the
    manifest lists."""
    fs = filesystem(output, storage)
    fs.invalidate_cache()
    listed = {fs_path(join(output, p["path"])) for p in manifest["shards"] + manifest["quarantine"]}
    for folder in ("shards", "quarantine"):
        root = fs_path(join(output, folder))
        if fs.exists(root):
            for path in fs.find(root):
                if path not in listed:
                    fs.rm(path)


def _remove_file(url: str, storage: StorageOptions) -> None:
    fs = filesystem(url, storage)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(fs_path(url))
    fs.invalidate_cache()


def _write_text(url: str, text: str, storage: StorageOptions) -> None:
    fs = filesystem(url, storage)
    fs.makedirs(posixpath.dirname(fs_path(url)), exist_ok=True)
    fs.pipe_file(fs_path(url), text.encode())
