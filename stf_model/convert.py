"""Conversion of a checkpoint in the published LLaVA-STF layout into our model directory.

The reference code saves a LLaMA-style ``LlavaLlamaForCausalLM``: ``config.json`` (LLaMA fields plus
``mm_*`` keys) and safetensors or ``.bin`` shards with keys ``model.mm_projector_crosslayer.{0,2}``
(MBTF), ``model.mm_projector.{0,2}`` (projector), ``model.embed_tokens``, ``model.layers.*``,
``model.norm``, ``lm_head`` and possibly ``model.vision_tower.vision_tower.vision_model.*`` (CLIP).
Window and block list are not in its config: they are inferred from the weight shapes (the
published block list when MBTF has 8 blocks) or given by the caller.

LLaVA's code base names the LLM in the config's ``model_type`` (``llava_llama``, ``llava_mistral``,
``llava_qwen``) or, for checkpoints re-saved with a plain LLM type, as ``llama``, ``mistral``,
``qwen2``; the LLM's config is built for that type. Those LLMs share the ``model.*`` / ``lm_head``
layout; a tied LM head (Qwen2's small models) may be absent from the weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, CLIPVisionConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from stf_model.chat_templates import get_chat_template
from stf_model.config import STFConfig
from stf_model.constants import IMAGE_TOKEN, PUBLISHED_MBTF_LAYERS
from stf_model.errors import ModelInputError
from stf_model.model_dir import save_model_dir
from stf_model.presets import clip_vit_l14_336
from stf_model.weights import add_image_token, assign_weights, grow_embeddings

logger = logging.getLogger(__name__)

# Published key prefix -> ours. Order matters: the first matching prefix wins.
KEY_MAP = (
    ("model.mm_projector_crosslayer.0.", "model.multi_modal_projector.mbtf.fc1."),
    ("model.mm_projector_crosslayer.2.", "model.multi_modal_projector.mbtf.fc2."),
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower."),
    ("model.", "model.language_model."),
    ("lm_head.", "lm_head."),
)
# Buffers some old checkpoints carry that the model recomputes.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
KNOWN_CLIP_TOWERS = {"openai/clip-vit-large-patch14-336": clip_vit_l14_336}


def read_state_dict(directory: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: ``*.safetensors`` if any, else ``*.bin`` read with
    ``torch.load(weights_only=True)`` (no pickled code runs). Keeps keys starting with ``prefix``."""
    directory = Path(directory)
    files = _weight_files(directory, "safetensors")
    loader = load_file
    if not files:
        files = _weight_files(directory, "bin")
        loader = _load_bin
    if not files:
        raise ModelInputError(f"no *.safetensors or *.bin weight files in {directory}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for key, tensor in loader(file).items():
            if key.startswith(prefix):
                state[key] = tensor
    return state


def _weight_files(directory: Path, suffix: str) -> list[Path]:
    """The weight shards: those a ``*.index.json`` maps, else every ``*.{suffix}`` but the
    trainer's ``training_args.bin`` (a pickle of settings, no tensors)."""
    for index in sorted(directory.glob(f"*.{suffix}.index.json")):
        names = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        return [directory / name for name in names]
    return sorted(p for p in directory.glob(f"*.{suffix}") if p.name != "training_args.bin")


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ModelInputError(f"{path} is not a weights file torch can load safely: {err}") from err


def map_published_key(key: str) -> str | None:
    """Our parameter name for a published key, or None for a buffer we ignore."""
    if key.endswith(IGNORED_SUFFIXES):
        return None
    for old, new in KEY_MAP:
        if key.startswith(old):
            return new + key[len(old) :]
    raise ModelInputError(f"unexpected key {key!r} in a published LLaVA-STF checkpoint")


def infer_fusion(
    state: dict[str, torch.Tensor],
    vision_width: int,
    select_layer: int,
    blocks: list[int] | None = None,
) -> tuple[list[int] | int, int]:
    """(block list, window) from the projector's weight shapes; ``blocks``, when given, is the
    block list (needed when MBTF fuses other than the published 8 blocks)."""
    proj_in = state["model.mm_projector.0.weight"].shape[1]
    window = math.isqrt(proj_in // vision_width)
    if window * window * vision_width != proj_in:
        raise ModelInputError(
            f"mm_projector.0 takes {proj_in} features, not w*w*{vision_width} for any window w"
        )
    if "model.mm_projector_crosslayer.0.weight" not in state:
        return select_layer, window
    if blocks is not None:
        return blocks, window
    num_blocks = state["model.mm_projector_crosslayer.0.weight"].shape[1] // vision_width
    if num_blocks != len(PUBLISHED_MBTF_LAYERS):
        raise ModelInputError(
            f"MBTF fuses {num_blocks} blocks, not the published {len(PUBLISHED_MBTF_LAYERS)}: "
            "pass the block list explicitly (blocks)"
        )
    return list(PUBLISHED_MBTF_LAYERS), window


def convert_published_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    vision_tower: str | os.PathLike | None = None,
    blocks: list[int] | None = None,
    window: int | None = None,
    dtype: torch.dtype | None = None,
    chat_template: str = "vicuna_v1",
) -> STFConfig:
    """Reads ``src`` (published layout) and writes our model directory to ``dst``.

    Args:
        vision_tower: a local CLIP directory (``CLIPVisionModel`` or ``CLIPModel``), needed when the
            checkpoint has no vision weights (the usual case: LLaVA loads CLIP separately).
        blocks, window: MBTF block list and STF window when they cannot be inferred.
        dtype: weights' dtype in ``dst``; default the source's ``torch_dtype``.
    """
    src = Path(src)
    if not (src / "config.json").is_file():
        raise ModelInputError(f"{src} has no config.json: it is not a checkpoint directory")
    src_config = json.loads((src / "config.json").read_text())
    state = read_state_dict(src)
    _check_published_layout(src, state)
    vision_config, vision_state = _vision_part(src_config, state, vision_tower)
    text_config = _text_config(src_config)
    feature_layers, inferred_window = infer_fusion(
        state, vision_config.hidden_size, src_config.get("mm_vision_select_layer", -2), blocks
    )
    tokenizer = _tokenizer_with_image_token(src, chat_template)
    config = STFConfig(
        vision_config=vision_config,
        text_config=text_config,
        vision_feature_layer=feature_layers,
        stf_window=window if window is not None else inferred_window,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_size=state["model.mm_projector.0.weight"].shape[0],
        mbtf_hidden_size=(
            state["model.mm_projector_crosslayer.0.weight"].shape[0]
            if "model.mm_projector_crosslayer.0.weight" in state
            else None
        ),
    )
    ours = {
        new_key: tensor
        for key, tensor in state.items()
        # the vision tower's keys were taken by _vision_part
        if not key.startswith("model.vision_tower.")
        and (new_key := map_published_key(key)) is not None
    }
    ours.update({"model.vision_tower." + k: v for k, v in vision_state.items()})
    if text_config.tie_word_embeddings and "lm_head.weight" not in ours:
        ours["lm_head.weight"] = ours["model.language_model.embed_tokens.weight"]  # tied
    source_dtype = src_config.get("torch_dtype") or src_config.get("dtype") or "float32"
    dtype = dtype or getattr(torch, str(source_dtype))
    model = assign_weights(config, ours, dtype, f"checkpoint {src}")
    # <image> may have been added to the tokenizer: mean rows, padded to 64 as LLaVA's are.
    grow_embeddings(model, len(tokenizer), pad_to_multiple_of=64)
    save_model_dir(model, tokenizer, dst)
    logger.info(
        "converted %s -> %s (%d vision tokens per image)", src, dst, config.num_image_tokens
    )
    return model.config


def _check_published_layout(src: Path, state: dict[str, torch.Tensor]) -> None:
    """Names the layout of a checkpoint that is not the published one (rather than a KeyError)."""
    if "model.mm_projector.0.weight" in state:
        return
    if any(k.startswith(("multi_modal_projector.", "model.multi_modal_projector.")) for k in state):
        what = "a llava-hf (transformers' LlavaForConditionalGeneration) checkpoint"
    elif "model.mm_projector.weight" in state:
        what = "a LLaVA-1 checkpoint with a linear projector (LLaVA-STF's is a 2-layer MLP)"
    else:
        what = "no LLaVA projector (model.mm_projector.*): an LLM or another model's checkpoint"
    raise ModelInputError(f"{src} is not in the published LLaVA-STF layout: {what}")


# LLaVA's model types -> the LLM's (the LLaVA-NeXT / OneVision code base adds the LLM's name).
LLAVA_LLM_TYPES = {
    "llava": "llama",
    "llava_llama": "llama",
    "llava_mistral": "mistral",
    "llava_qwen": "qwen2",
}


def _text_config(src_config: dict) -> PretrainedConfig:
    """The LLM's config: the fields its type knows from the published config, without LLaVA's
    ``mm_*`` keys."""
    model_type = src_config.get("model_type", "llava_llama")
    llm_type = LLAVA_LLM_TYPES.get(model_type, model_type)
    if llm_type not in CONFIG_MAPPING:
        raise ModelInputError(
            f"the checkpoint's model_type {model_type!r} names no LLM transformers knows: expected "
            f"one of {', '.join(LLAVA_LLM_TYPES)} or a causal LM's own type (llama, qwen2, ...)"
        )
    config_class = CONFIG_MAPPING[llm_type]
    # transformers 5 keeps RoPE's settings in rope_parameters, but reads the names published
    # configs use (Llama 3's rope_theta 500000, Qwen2's 1e6): dropped, the LLM would be wrong.
    known = {*config_class().to_dict().keys(), "rope_theta", "rope_scaling"}
    fields = {k: v for k, v in src_config.items() if k in known and not k.startswith("mm_")}
    fields.pop("architectures", None)
    fields.pop("model_type", None)
    return config_class(**fields)


def _vision_part(
    src_config: dict, state: dict[str, torch.Tensor], vision_tower: str | os.PathLike | None
) -> tuple[CLIPVisionConfig, dict[str, torch.Tensor]]:
    """CLIP config and weights (keys as transformers' ``CLIPVisionModel``).

    ``vision_tower``, when given, wins for both. Otherwise the weights bundled in
    the checkpoint are used, with the config of the ``mm_vision_tower`` the checkpoint names: a
    local CLIP directory (as LLaVA accepts) or a known hub name with a built-in config.
    """
    if vision_tower is not None:
        tower = Path(vision_tower)
        return CLIPVisionConfig.from_pretrained(tower), clip_vision_weights(read_state_dict(tower))
    prefix = "model.vision_tower.vision_tower."
    bundled = clip_vision_weights(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    )
    name = str(src_config.get("mm_vision_tower", ""))
    named_dir = Path(name) if name and Path(name).is_dir() else None
    if not bundled and named_dir is None:
        raise ModelInputError(
            "the checkpoint has no vision tower weights: pass a local CLIP directory with "
            "vision_tower (e.g. a copy of openai/clip-vit-large-patch14-336)"
        )
    if named_dir is not None:
        config = CLIPVisionConfig.from_pretrained(named_dir)
        return config, bundled or clip_vision_weights(read_state_dict(named_dir))
    if name not in KNOWN_CLIP_TOWERS:
        raise ModelInputError(
            f"the checkpoint's vision tower {name!r} has no built-in config: pass its directory "
            "as vision_tower"
        )
    return KNOWN_CLIP_TOWERS[name](), bundled


def clip_vision_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIP checkpoint's vision-tower tensors, keyed as transformers 5's ``CLIPVisionModel``
    (``embeddings.*``, ``encoder.*``, ...): older dumps and ``CLIPModel`` put them under
    ``vision_model.``; the text half of a ``CLIPModel`` is dropped."""
    text_parts = ("text_model.", "text_projection", "visual_projection", "logit_scale")
    weights = {}
    for key, tensor in state.items():
        if key.startswith(text_parts):
            continue
        weights[key.removeprefix("vision_model.")] = tensor
    return weights


def _tokenizer_with_image_token(src: Path, chat_template: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as err:
        raise ModelInputError(
            f"no usable tokenizer in {src}: copy the LLM's tokenizer files there"
        ) from err
    add_image_token(tokenizer)
    tokenizer.chat_template = get_chat_template(chat_template)
    return tokenizer
