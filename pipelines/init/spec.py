"""``stf init``'s spec (no torch, no model imports)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from pipelines.spec import JobSpec, Location, StorageOptions


class InitSpec(JobSpec):
    """Assembles a LLaVA-STF model directory from a base LLM and a vision tower."""

    llm: Location = Field(
        description="Hugging Face causal-LM directory (local or s3://): config, safetensors "
        "(.bin through weights_only loading), tokenizer files"
    )
    vision_tower: Location = Field(
        description="CLIP or SigLIP directory (local or s3://): a full CLIPModel / SiglipModel "
        "release or its vision model, with preprocessor_config.json"
    )
    output: Location = Field(description="the model directory to write (local or s3://)")
    preset: Literal["llava-stf-7b", "llava-1.5-7b"] = Field(
        "llava-stf-7b",
        description="fusion settings: llava-stf-7b = window 2 over the published blocks, "
        "llava-1.5-7b = window 1, block -2",
    )
    stf_window: PositiveInt | None = Field(None, description="overrides the preset's window")
    vision_feature_layer: int | list[int] | None = Field(
        None, description="overrides the preset's blocks (hidden-state indices, deepest first)"
    )
    template: Literal["vicuna_v1", "plain", "llm"] = Field(
        "vicuna_v1",
        description="chat template: vicuna_v1, plain, or llm (the LLM's own format, ChatML or "
        "Llama 3, with generation markers)",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the written weights"
    )
    seed: int = Field(0, description="initialisation of MBTF and the projector")
    storage: StorageOptions = Field(default_factory=StorageOptions)
