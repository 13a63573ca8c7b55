"""Assembling a LLaVA-STF model from a pretrained causal LM and a pretrained vision tower: the
starting point of the paper's stage 1 (docs/design.md section 4).

The LLM's and the tower's weights are kept as they are; MBTF and the projector are freshly
initialised; ``<image>`` (and a pad token where the LLM has none) joins the tokenizer, with new
embedding rows at the mean of the existing ones. CLIP towers have a CLS token to drop, SigLIP
towers have none (every patch token is an image token); both are supported.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from stf_model.config import TOWERS_WITHOUT_CLS, STFConfig
from stf_model.constants import IMAGE_TOKEN
from stf_model.errors import ModelInputError
from stf_model.modeling import STFForConditionalGeneration
from stf_model.projector import STFProjector
from stf_model.weights import add_image_token, assign_weights, grow_embeddings

logger = logging.getLogger(__name__)

# Vision towers whose hidden states feed the projector (CLS dropped or none to drop).
SUPPORTED_TOWERS = ("clip_vision_model", *TOWERS_WITHOUT_CLS)


def assemble(
    llm: PreTrainedModel,
    tower: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    vision_feature_layer: int | Sequence[int],
    stf_window: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    chat_template: str,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> tuple[STFForConditionalGeneration, PreTrainedTokenizerBase]:
    """LLaVA-STF from its parts.

    Args:
        llm: a causal LM (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ...).
        tower: a ``CLIPVisionModel`` or ``SiglipVisionModel`` (without SigLIP's pooling head).
        tokenizer: the LLM's tokenizer; ``<image>`` and a pad token are added to it in place.
        vision_feature_layer, stf_window: the fusion settings (as in :class:`STFConfig`).
        image_mean, image_std: the tower's pixel statistics (from its image processor).
        chat_template: the Jinja template the model directory will carry.
        seed: initialisation of MBTF and the projector.
        dtype: the weights' dtype (default: the LLM's).
    Returns:
        the model and the tokenizer.
    """
    vision = copy.deepcopy(tower.config)
    if vision.model_type not in SUPPORTED_TOWERS:
        raise ModelInputError(
            f"vision tower of type {vision.model_type!r} is not supported: use a CLIP or SigLIP "
            f"vision model ({', '.join(SUPPORTED_TOWERS)})"
        )
    tower_state = tower.state_dict()
    if getattr(vision, "vision_use_head", False):
        # SigLIP's pooling head reads the last hidden state into one vector; LLaVA reads the
        # hidden states themselves, so the head would never be used (nor trained): drop it.
        vision.vision_use_head = False
        tower_state = {k: v for k, v in tower_state.items() if not k.startswith("head.")}
    add_image_token(tokenizer)
    tokenizer.chat_template = chat_template
    text = copy.deepcopy(llm.config)
    config = STFConfig(
        vision_config=vision,
        text_config=text,
        vision_feature_layer=_as_config_layers(vision_feature_layer),
        stf_window=stf_window,
        vision_feature_select_strategy="full"
        if vision.model_type in TOWERS_WITHOUT_CLS
        else "default",
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_mean=list(image_mean),
        image_std=list(image_std),
        tie_word_embeddings=text.tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = STFProjector.from_config(config)
    decoder = getattr(llm, llm.base_model_prefix)
    state = {f"model.language_model.{k}": v for k, v in decoder.state_dict().items()}
    state["lm_head.weight"] = llm.get_output_embeddings().weight
    state.update({f"model.vision_tower.{k}": v for k, v in tower_state.items()})
    state.update({f"model.multi_modal_projector.{k}": v for k, v in projector.state_dict().items()})
    model = assign_weights(config, state, dtype or llm.dtype, "the LLM and vision tower given")
    grow_embeddings(model, len(tokenizer))
    model.generation_config = copy.deepcopy(llm.generation_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info(
        "assembled LLaVA-STF: %s + %s, blocks %s, window %d: %d vision tokens per image",
        text.model_type,
        vision.model_type,
        config.feature_layers,
        config.stf_window,
        config.num_image_tokens,
    )
    return model, tokenizer


def _as_config_layers(layers: int | Sequence[int]) -> int | list[int]:
    return layers if isinstance(layers, int) else list(layers)


# ---- loading the parts ---------------------------------------------------------------------
# One loader per backbone family: the towers' directories are full models (CLIPModel,
# SiglipModel) or their vision halves; both load as the vision model class.
TOWER_CLASSES = {
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
}


def load_llm(
    directory: str | os.PathLike, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a Hugging Face directory, in ``dtype`` (safetensors,
    sharded or not; ``.bin`` only through transformers' ``weights_only`` loading)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise ModelInputError(
            f"no usable tokenizer in the LLM directory {directory}: {err}"
        ) from err
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype), tokenizer


def load_tower(directory: str | os.PathLike, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    """The vision half of a CLIP or SigLIP directory (SigLIP without its pooling head) and the
    directory's image processor."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor

    model_type = AutoConfig.from_pretrained(directory).model_type
    if model_type not in TOWER_CLASSES:
        raise ModelInputError(
            f"{directory} holds a {model_type!r} model, not a vision tower this project supports "
            f"(a CLIP or SigLIP directory: {', '.join(TOWER_CLASSES)})"
        )
    cls = getattr(transformers, TOWER_CLASSES[model_type])
    extra = {"vision_use_head": False} if cls.__name__ == "SiglipVisionModel" else {}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # a full CLIPModel lists every text weight it skips
    try:
        tower = cls.from_pretrained(directory, dtype=dtype, **extra)
    finally:
        transformers.logging.set_verbosity(verbosity)
    try:
        processor = AutoImageProcessor.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise ModelInputError(
            f"{directory} has no image processor config (preprocessor_config.json with the "
            f"tower's image size, mean and std): copy it from the tower's release ({err})"
        ) from err
    return tower, processor


def image_statistics(processor: Any, vision_config: Any) -> tuple[list[float], list[float]]:
    """The tower's pixel mean and std from its image processor, after checking that the
    processor's output size is the tower's input size."""
    crop = (
        getattr(processor, "crop_size", None)
        if getattr(processor, "do_center_crop", False)
        else None
    )
    size = crop or getattr(processor, "size", None) or {}
    side = size.get("height") or size.get("shortest_edge")
    if side != vision_config.image_size:
        raise ModelInputError(
            f"the tower's image processor makes {side} px images but the tower takes "
            f"{vision_config.image_size} px: check preprocessor_config.json"
        )
    return list(processor.image_mean), list(processor.image_std)
