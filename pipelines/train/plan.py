"""The plan of a training run: the shards checked against the model, the step budget, and the
numbers every worker needs. It is built once on the driver and sent to every worker as one
frozen, typed object, so a wrong or missing key fails where the plan is built, not inside a
worker."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pipelines.errors import InputError
from pipelines.models import load_tokenizer
from pipelines.shards import ShardManifest, read_manifest, shard_urls
from pipelines.train.arithmetic import detected_peak_tflops, flops_per_token
from pipelines.train.spec import TrainSpec
from stf_model import STFConfig
from stf_model.tokenizer import tokenizer_fingerprint


class TrainPlan(BaseModel):
    """Everything a worker needs besides its data shard."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: TrainSpec
    shard_urls: list[str]
    rows: int
    data_bytes: int  # the rows decoded: pixels and token ids (an estimate from the manifests)
    world_size: int
    micro_per_epoch: int  # micro-batches per worker per epoch (whole optimizer steps)
    steps_per_epoch: int
    total_steps: int
    image_token_id: int
    num_image_tokens: int
    pad_token_id: int
    image_size: int
    max_length: int
    longest: int  # the longest row the data can give a batch, image tokens expanded
    flops_per_token: float
    peak_flops: float  # per worker; 0 when unknown (MFU is then not reported)


def build_plan(spec: TrainSpec, config: STFConfig) -> TrainPlan:
    """Checks every shard folder against the model (image size, ``<image>`` id, tokenizer) and
    computes the step budget. Raises :class:`~pipelines.errors.InputError` on a mismatch."""
    fingerprint = tokenizer_fingerprint(load_tokenizer(spec.start_from, spec.storage))
    manifests = [(folder, read_manifest(folder, spec.storage)) for folder in spec.data]
    for folder, manifest in manifests:
        if manifest.image.size != config.vision_config.image_size:
            raise InputError(
                f"{folder}: shards hold {manifest.image.size} px images, the model's tower "
                f"takes {config.vision_config.image_size}; preprocess with this model"
            )
        if manifest.tokenizer.image_token_id != config.image_token_index:
            raise InputError(
                f"{folder}: <image> is token {manifest.tokenizer.image_token_id} in the "
                f"shards, {config.image_token_index} in the model; preprocess with this model"
            )
        if manifest.tokenizer.fingerprint != fingerprint:
            raise InputError(
                f"{folder}: shards were tokenised with another tokenizer "
                f"({manifest.tokenizer.source}) than the model's ({spec.start_from}); "
                "preprocess with this model"
            )
    rows = sum(m.counts.written for _, m in manifests)
    world = spec.scaling.num_workers
    micro, accum = spec.deepspeed.micro_batch_size, spec.deepspeed.gradient_accumulation
    micro_per_epoch = (rows // world) // micro // accum * accum
    if micro_per_epoch == 0:
        raise InputError(
            f"{rows} rows are not enough for one step of {world} workers x micro batch {micro} x "
            f"accumulation {accum}"
        )
    steps_per_epoch = micro_per_epoch // accum
    total = steps_per_epoch * spec.epochs
    max_length = min(m.max_length for _, m in manifests)
    pad_token_id = manifests[0][1].tokenizer.pad_token_id
    if pad_token_id is None:
        raise InputError(f"{spec.data[0]}: the tokenizer has no pad token; batches need one")
    return TrainPlan(
        spec=spec,
        shard_urls=[url for folder, m in manifests for url in shard_urls(folder, m)],
        rows=rows,
        data_bytes=sum(_decoded_bytes(m) for _, m in manifests),
        world_size=world,
        micro_per_epoch=micro_per_epoch,
        steps_per_epoch=steps_per_epoch,
        total_steps=min(total, spec.max_steps) if spec.max_steps is not None else total,
        image_token_id=config.image_token_index,
        num_image_tokens=config.num_image_tokens,
        pad_token_id=pad_token_id,
        image_size=config.vision_config.image_size,
        max_length=max_length,
        longest=_longest(manifests, config, max_length),
        flops_per_token=flops_per_token(spec, config),
        peak_flops=(spec.peak_tflops or detected_peak_tflops(spec) or 0) * 1e12,
    )


# Per row besides pixels and tokens: its id, source, offsets and small columns.
ROW_OVERHEAD_BYTES = 96


def _decoded_bytes(manifest: ShardManifest) -> int:
    """What a shard folder's rows take once read into Arrow: one uint8 image per image row, two
    int32 columns (input ids, labels) per token, and the small columns."""
    image = 3 * manifest.image.size**2
    counts = manifest.counts
    return (
        counts.by_modality.get("image", 0) * image
        + counts.tokens * 8
        + counts.written * ROW_OVERHEAD_BYTES
    )


def _longest(manifests, config: STFConfig, max_length: int) -> int:
    """The longest sequence a batch can hold: the longest row with its image placeholder
    expanded (at most ``max_length``; ``max_length`` itself when a manifest does not say)."""
    rows = [m.counts.longest for _, m in manifests]
    if any(r is None for r in rows):
        return max_length
    return min(max_length, max(rows) + config.num_image_tokens - 1)
