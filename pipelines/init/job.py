"""``stf init``: loads the base LLM and the tower, assembles them and writes the model folder."""

from __future__ import annotations

import logging
import tempfile

import yaml
from pydantic import BaseModel, ConfigDict

from pipelines.init.spec import InitSpec
from pipelines.model_folder import check_output, local_base_folder
from pipelines.storage import upload_dir

log = logging.getLogger(__name__)


class InitSummary(BaseModel):
    """What ``stf init`` wrote."""

    model_config = ConfigDict(frozen=True)

    output: str
    llm_type: str
    tower_type: str
    vision_tokens: int
    blocks: list[int]
    window: int
    parameters: int


def run(spec: InitSpec) -> InitSummary:
    """Loads the parts, assembles, writes the model directory and the resolved spec in it."""
    import torch

    from stf_model import FUSION_PRESETS, get_chat_template, save_model_dir
    from stf_model.assemble import assemble, image_statistics, load_llm, load_tower
    from stf_model.chat_templates import llm_chat_template

    check_output(spec.output, [spec.llm, spec.vision_tower], spec.storage)
    dtype = getattr(torch, spec.dtype)
    llm, tokenizer = load_llm(local_base_folder(spec.llm, spec.storage, "llm"), dtype)
    tower, image_processor = load_tower(
        local_base_folder(spec.vision_tower, spec.storage, "vision_tower"), dtype
    )
    mean, std = image_statistics(image_processor, tower.config)
    fusion = dict(FUSION_PRESETS[spec.preset])
    if spec.stf_window is not None:
        fusion["stf_window"] = spec.stf_window
    if spec.vision_feature_layer is not None:
        fusion["vision_feature_layer"] = spec.vision_feature_layer
    template = (
        llm_chat_template(tokenizer) if spec.template == "llm" else get_chat_template(spec.template)
    )
    model, tokenizer = assemble(
        llm,
        tower,
        tokenizer,
        **fusion,
        image_mean=mean,
        image_std=std,
        chat_template=template,
        seed=spec.seed,
        dtype=dtype,
    )
    with tempfile.TemporaryDirectory() as folder:
        save_model_dir(model, tokenizer, folder)
        with open(f"{folder}/stf-init.yaml", "w") as f:
            yaml.safe_dump(spec.resolved(), f)
        upload_dir(folder, spec.output, spec.storage)
    config = model.config
    return InitSummary(
        output=spec.output,
        llm_type=config.text_config.model_type,
        tower_type=config.vision_config.model_type,
        vision_tokens=config.num_image_tokens,
        blocks=config.feature_layers,
        window=config.stf_window,
        parameters=sum(p.numel() for p in model.parameters()),
    )


def summary_line(spec: InitSpec, summary: InitSummary) -> str:
    return (
        f"init {summary.output}: {summary.llm_type} + {summary.tower_type}, blocks "
        f"{summary.blocks}, window {summary.window}: {summary.vision_tokens} vision tokens per "
        f"image, {summary.parameters / 1e6:.1f}M parameters"
    )
