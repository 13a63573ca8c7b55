"""Named model shapes. ``tiny`` is random and local (tests, demo); the 7B shapes describe the
published models, whose weights users load from a local or S3 directory (nothing downloads)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers import CLIPVisionConfig, LlamaConfig, PreTrainedTokenizerFast

from stf_model.config import STFConfig
from stf_model.constants import PRESET_NAMES, PUBLISHED_MBTF_LAYERS, PUBLISHED_STF_WINDOW
from stf_model.errors import ModelInputError
from stf_model.modeling import STFForConditionalGeneration
from stf_model.tokenizer import build_tiny_tokenizer

TINY_VOCAB_SIZE = 512
# A 12x12 patch grid: divisible by 1, 2, 3 and 4, so every STF window up to 4 runs on `tiny`.
TINY_GRID = 12


def clip_vit_l14_336() -> CLIPVisionConfig:
    """CLIP ViT-L/14 at 336 px, LLaVA-1.5's vision tower (24 blocks, 24x24 patch grid)."""
    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def llama_7b(vocab_size: int = 32064) -> LlamaConfig:
    """A LLaMA-2-7B / Vicuna-7B-v1.5 shaped LLM; 32000 words + ``<image>`` padded to 64."""
    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )


def _tiny(**overrides: Any) -> STFConfig:
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=2,
        image_size=TINY_GRID * 4,
        patch_size=4,
        projection_dim=32,
    )
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=TINY_VOCAB_SIZE,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    # Token ids of build_tiny_tokenizer's specials: <unk> 0, <s> 1, </s> 2, <pad> 3, <image> 4.
    fields = dict(vision_feature_layer=[-2, 4, 3, 2], stf_window=2, image_token_index=4)
    return _with_overrides(vision, text, fields, overrides)


# The fusion settings of the published models (blocks as hidden-state indices of a 24-block
# CLIP-L tower), also used to assemble STF from other LLMs and towers (`stf init`).
FUSION_PRESETS: dict[str, dict[str, Any]] = {
    "llava-stf-7b": {
        "vision_feature_layer": list(PUBLISHED_MBTF_LAYERS),
        "stf_window": PUBLISHED_STF_WINDOW,
    },
    "llava-1.5-7b": {"vision_feature_layer": -2, "stf_window": 1},
}


def _llava_stf_7b(**overrides: Any) -> STFConfig:
    fields = dict(**FUSION_PRESETS["llava-stf-7b"], image_token_index=32000)
    return _with_overrides(clip_vit_l14_336(), llama_7b(), fields, overrides)


def _llava_15_7b(**overrides: Any) -> STFConfig:
    fields = dict(**FUSION_PRESETS["llava-1.5-7b"], image_token_index=32000)
    return _with_overrides(clip_vit_l14_336(), llama_7b(), fields, overrides)


def _with_overrides(vision, text, fields: dict, overrides: dict) -> STFConfig:
    # A config takes any keyword and keeps it: a typo ("stf_windw") would be stored and ignored.
    for key in [k for k in overrides if k.startswith(("vision.", "text."))]:
        target = vision if key.startswith("vision.") else text
        name = key.split(".", 1)[1]
        if name not in target.to_dict():
            raise ModelInputError(f"unknown override {key!r}: {target.model_type} has no {name!r}")
        setattr(target, name, overrides.pop(key))
    known = set(inspect.signature(STFConfig.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ModelInputError(
            f"unknown override(s) {unknown}: not STFConfig fields (stf_window, "
            "vision_feature_layer, ...) nor vision.* / text.* fields"
        )
    return STFConfig(vision_config=vision, text_config=text, **{**fields, **overrides})


PRESETS: dict[str, Callable[..., STFConfig]] = dict(
    zip(PRESET_NAMES, (_tiny, _llava_stf_7b, _llava_15_7b), strict=True)
)


def preset_config(name: str, **overrides: Any) -> STFConfig:
    """The config of a named preset. Overrides are STFConfig fields (``stf_window=3``) or sub-config
    fields prefixed ``vision.`` / ``text.`` (``**{"text.num_hidden_layers": 4}``)."""
    if name not in PRESETS:
        raise ModelInputError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name](**overrides)


def build_tiny(
    seed: int = 0, **overrides: Any
) -> tuple[STFForConditionalGeneration, PreTrainedTokenizerFast]:
    """A random ``tiny`` model and its tokenizer, built locally in well under a second."""
    tokenizer = build_tiny_tokenizer(TINY_VOCAB_SIZE)
    config = preset_config("tiny", **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = STFForConditionalGeneration(config)
    return model.eval(), tokenizer
