"""The preprocessing job's spec."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt

from pipelines.spec import JobSpec, Location, Locations, ModelRef, StorageOptions

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
    template: Literal["plain", "vicuna_v1", "llm"] = Field(
        "vicuna_v1",
        description="chat template: plain (pretraining), vicuna_v1 (finetuning), or llm (the "
        "model directory's own, e.g. the LLM's ChatML written by `stf init --set template=llm`)",
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
        89_478_485,
        description="pixel limit per image, padded to a square (decompression-bomb guard)",
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
