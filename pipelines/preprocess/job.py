"""``stf preprocess``: LLaVA JSON/JSONL + images -> tokenised Parquet shards, with a quarantine.

setup (resolve inputs, load the tokenizer, skip if the output is already complete for this spec)
-> Ray Data: read records (one streaming task per file) -> map in an actor pool
(:class:`~pipelines.preprocess.processor.RecordProcessor`) -> write shards and quarantine
(:class:`~pipelines.preprocess.sink.ShardsDatasink`) -> check records read == written +
quarantined -> commit the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import ray
import yaml

from pipelines.errors import InputError, JobFailed, MissingInput
from pipelines.preprocess.processor import ModelInputs, RecordProcessor, load_model_inputs
from pipelines.preprocess.sink import ShardsDatasink, WriteTally
from pipelines.preprocess.source import LlavaRecordsDatasource
from pipelines.preprocess.spec import PreprocessSpec
from pipelines.ray_env import cluster_cpus, init_ray, ray_data_settings
from pipelines.shards import (
    MANIFEST,
    Counts,
    FileCounts,
    ImageGeometry,
    ShardManifest,
    TokenizerInfo,
    read_manifest,
)
from pipelines.spec import StorageOptions
from pipelines.storage import (
    InputFile,
    expand_inputs,
    filesystem,
    fs_path,
    join,
    remove_file,
    remove_tree,
    write_text,
)

log = logging.getLogger(__name__)

# Record files read at once per image worker: parsing a record's text is light next to decoding
# and resizing its image.
WORKERS_PER_READER = 8


class PreprocessFailed(JobFailed):
    """The job ran but must not be used: too many errors, or records unaccounted for."""


def fingerprint(spec: PreprocessSpec, files: list[InputFile], model: ModelInputs) -> str:
    """Identifies what a run would write: the output-affecting spec, the input files with their
    sizes and versions (so a same-size edit counts), the tokenizer and the shard schema version."""
    payload = {
        "spec": spec.fingerprint_fields(),
        "inputs": files,
        "tokenizer": model.tokenizer_fingerprint,
        "schema_version": ShardManifest.schema_version_read(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def run(spec: PreprocessSpec) -> ShardManifest:
    """Runs the job and returns its manifest; raises :class:`PreprocessFailed` (after writing the
    quarantine and a ``failed`` manifest) when the output must not be used."""
    storage = spec.storage
    files = expand_inputs(spec.inputs, storage)
    model = load_model_inputs(spec)
    run_fingerprint = fingerprint(spec, files, model)
    previous = _complete_output(spec, run_fingerprint)
    if previous is not None:
        log.info("%s is complete for this spec (%s): skipped", spec.output, run_fingerprint)
        return previous.model_copy(update={"skipped": True})
    # Invalidate first (the manifest is the commit point), then clear what earlier runs left.
    remove_file(join(spec.output, MANIFEST), storage)
    for folder in ("shards", "quarantine"):
        remove_tree(join(spec.output, folder), storage)

    started = time.time()
    tally = _process(spec, files, model)
    manifest = build_manifest(spec, files, model, run_fingerprint, tally, time.time() - started)
    write_text(join(spec.output, "spec.yaml"), yaml.safe_dump(spec.resolved()), storage)
    _remove_unlisted(spec.output, manifest, storage)
    manifest.write(join(spec.output, MANIFEST), storage)
    if manifest.status != "complete":
        raise PreprocessFailed(manifest.failure)
    return manifest


def summary_line(spec: PreprocessSpec, manifest: ShardManifest) -> str:
    c = manifest.counts
    reasons = ", ".join(f"{r} {n}" for r, n in c.by_reason.items()) or "none"
    state = "up to date, skipped" if manifest.skipped else f"{manifest.seconds:.1f} s"
    return (
        f"preprocess {spec.output}: read {c.read}, written {c.written} in "
        f"{len(manifest.shards)} shards, quarantined {c.quarantined} ({reasons}), truncated "
        f"{c.truncated} [{state}]"
    )


def _complete_output(spec: PreprocessSpec, run_fingerprint: str) -> ShardManifest | None:
    """The manifest of an earlier run with the same fingerprint whose files all exist."""
    if spec.overwrite:
        return None
    try:
        previous = read_manifest(spec.output, spec.storage)
    except (InputError, MissingInput):
        return None  # none, failed, unfinished or another schema: rebuild
    if previous.fingerprint != run_fingerprint:
        return None
    # One listing per folder (paged: 1,000 keys a request on S3), not one request per file.
    present = _listed(spec.output, spec.storage)
    parts = previous.shards + previous.quarantine
    if all(fs_path(join(spec.output, p.path)) in present for p in parts):
        return previous
    return None


def _listed(output: str, storage: StorageOptions) -> set[str]:
    """The paths of every file under ``output``'s shard and quarantine folders."""
    fs = filesystem(output, storage)
    fs.invalidate_cache()
    found: set[str] = set()
    for folder in ("shards", "quarantine"):
        root = fs_path(join(output, folder))
        if fs.exists(root):
            found.update(fs.find(root))
    return found


def _process(spec: PreprocessSpec, files: list[InputFile], model: ModelInputs) -> WriteTally:
    """The Ray Data pipeline; returns what the sink wrote and counted."""
    init_ray()
    # Ray Data keeps the records' order through the pool (by default it hands batches on as they
    # finish): the shards, and the order training reads their rows in, are then a function of
    # the inputs and the spec, not of which worker finished first.
    with ray_data_settings(preserve_order=True):
        return _pipeline(spec, files, model)


def _pipeline(spec: PreprocessSpec, files: list[InputFile], model: ModelInputs) -> WriteTally:
    workers = spec.workers or max(1, int(cluster_cpus() / spec.cpus_per_worker))
    # Reading record text and writing Parquet are light next to decoding images; they reserve no
    # CPU so that a pool using every CPU cannot starve them (a deadlock on small machines).
    sized = [(f.url, f.size) for f in files]
    # One read task per input file; capped, or a corpus of many files would start a worker
    # process per file at once (tasks reserving no CPU are not limited by the CPUs).
    records = ray.data.read_datasource(
        LlavaRecordsDatasource(sized, spec.storage),
        num_cpus=0,
        concurrency=max(1, workers // WORKERS_PER_READER),
    )
    processed = records.map_batches(
        RecordProcessor,
        fn_constructor_args=(spec, model),
        batch_format="pyarrow",
        batch_size=spec.batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=spec.cpus_per_worker,
    )
    sink = ShardsDatasink(
        spec.output, spec.storage, spec.rows_per_shard, image_bytes=3 * model.image_size**2
    )
    processed.write_datasink(
        sink, ray_remote_args={"num_cpus": 0}, concurrency=max(1, workers // 2)
    )
    return sink.summary


def _failures(spec: PreprocessSpec, per_file: dict[str, FileCounts], tally: WriteTally) -> list:
    read, written = sum(tally.read.values()), sum(tally.written.values())
    quarantined = sum(tally.quarantined.values())
    failures = []
    unbalanced = [u for u, c in per_file.items() if c.read != c.written + c.quarantined]
    if unbalanced or read != written + quarantined:
        failures.append(
            f"records unaccounted for: read {read} != written {written} + quarantined "
            f"{quarantined} (files: {', '.join(unbalanced)})"
        )
    if tally.reasons.get("broken_json_list"):
        failures.append(
            "a JSON list file is broken part-way; the records after the break were not read "
            "(see the quarantine rows with reason broken_json_list)"
        )
    if not read:  # an empty file, "[]", or only blank lines: nothing to train on
        failures.append(f"the inputs hold no records: {', '.join(per_file)}")
    error_rate = quarantined / read if read else 0.0
    if error_rate > spec.max_error_rate:
        top = ", ".join(f"{r} {n}" for r, n in tally.reasons.most_common(5))
        failures.append(
            f"{quarantined} of {read} records quarantined ({error_rate:.1%} > max_error_rate "
            f"{spec.max_error_rate:.1%}): {top}; see {join(spec.output, 'quarantine')}"
        )
    return failures


def build_manifest(
    spec: PreprocessSpec,
    files: list[InputFile],
    model: ModelInputs,
    run_fingerprint: str,
    tally: WriteTally,
    elapsed: float,
) -> ShardManifest:
    """The manifest of a finished run: counts per file and reason, the status, and everything a
    trainer must check (image geometry, tokenizer, length budget)."""
    per_file = {
        url: FileCounts(
            read=tally.read.get(url, 0),
            written=tally.written.get(url, 0),
            quarantined=tally.quarantined.get(url, 0),
        )
        for url, *_ in files
    }
    failures = _failures(spec, per_file, tally)
    read, quarantined = sum(tally.read.values()), sum(tally.quarantined.values())
    counts = Counts(
        read=read,
        written=sum(tally.written.values()),
        quarantined=quarantined,
        truncated=tally.truncated,
        error_rate=round(quarantined / read if read else 0.0, 6),
        by_reason=dict(tally.reasons.most_common()),
        by_modality=dict(tally.modality),
        tokens=tally.tokens,
        supervised_tokens=tally.supervised,
        longest=tally.longest,
    )
    tokenizer = TokenizerInfo(
        source=spec.model,
        fingerprint=model.tokenizer_fingerprint,
        vocab_size=len(model.tokenizer),
        image_token_id=model.image_token_id,
        pad_token_id=model.tokenizer.pad_token_id,
    )
    return ShardManifest(
        status="failed" if failures else "complete",
        failure="; ".join(failures) or None,
        fingerprint=run_fingerprint,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        seconds=round(elapsed, 2),
        counts=counts,
        files=per_file,
        shards=tally.shards,
        quarantine=tally.quarantine,
        template=spec.template,
        max_length=spec.max_length,
        image_tokens=model.image_tokens,
        image=ImageGeometry(size=model.image_size, aspect=spec.image_aspect),
        tokenizer=tokenizer,
        spec=spec.resolved(),
    )


def _remove_unlisted(output: str, manifest: ShardManifest, storage: StorageOptions) -> None:
    """Deletes files a retried write task left behind, so the folders hold exactly what the
    manifest lists."""
    listed = {fs_path(join(output, p.path)) for p in manifest.shards + manifest.quarantine}
    fs = filesystem(output, storage)
    for path in _listed(output, storage) - listed:
        fs.rm(path)
