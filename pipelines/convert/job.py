"""``stf convert``: the published layout read, checked and written as a model folder."""

from __future__ import annotations

from pipelines.convert.spec import ConvertSpec
from pipelines.spec import StorageOptions


def run(spec: ConvertSpec):
    """Converts; returns the written model's config."""
    import torch

    from pipelines.model_folder import check_output
    from stf_model.convert import convert_published_checkpoint

    inputs = [spec.source, *([spec.vision_tower] if spec.vision_tower else [])]
    check_output(spec.output, inputs, StorageOptions())
    return convert_published_checkpoint(
        spec.source,
        spec.output,
        vision_tower=spec.vision_tower,
        blocks=spec.blocks,
        window=spec.window,
        dtype=getattr(torch, spec.dtype) if spec.dtype else None,
        chat_template=spec.chat_template,
    )


def summary_line(spec: ConvertSpec, config) -> str:
    return (
        f"wrote {spec.output}: blocks {config.feature_layers}, window {config.stf_window}, "
        f"{config.num_image_tokens} vision tokens per image"
    )
