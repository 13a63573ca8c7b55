"""``stf convert``'s spec (no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipelines.spec import JobSpec, Location


class ConvertSpec(JobSpec):
    """Converts a published LLaVA-STF checkpoint into a model directory."""

    source: Location = Field(
        description="directory with the checkpoint's config.json, safetensors or .bin shards "
        "and tokenizer files"
    )
    output: Location = Field(description="the model directory to write")
    vision_tower: Location | None = Field(
        None, description="a local CLIP directory, when the checkpoint has no vision weights"
    )
    blocks: list[int] | None = Field(
        None, description="MBTF hidden-state indices, e.g. [-2, 21, 18] (default: the published 8)"
    )
    window: int | None = Field(
        None, ge=1, description="STF window (default: inferred from the weights)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="weights dtype of the output (default: the checkpoint's)"
    )
    chat_template: Literal["vicuna_v1", "plain"] = Field(
        "vicuna_v1", description="chat template written with the tokenizer"
    )

    @field_validator("source", "output", "vision_tower")
    @classmethod
    def _local(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("s3://"):
            raise ValueError("convert reads and writes local directories; copy from S3 first")
        return value
