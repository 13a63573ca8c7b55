"""LLaVA-STF: LLaVA with Multi-Block and Spatial Token Fusion, on transformers' LLaVA.

The package imports its parts on first use (PEP 562): ``import stf_model.records`` or
``stf_model.images`` costs no torch, which is what lets preprocessing actors start in a fraction of
a second more than a bare Python; any model name (``stf_model.STFConfig``, ...) imports the rest.
Importing :mod:`stf_model.config` registers ``llava_stf`` with ``AutoConfig`` and
:mod:`stf_model.modeling` with ``AutoModel`` / ``AutoModelForImageTextToText``, so a saved model
directory reloads through the Auto classes once either is used (:func:`register` does both).
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the submodule that defines it.
_EXPORTS = {
    "CHAT_TEMPLATE_NAMES": "chat_templates",
    "get_chat_template": "chat_templates",
    "STFConfig": "config",
    "MultiBlockTokenFusion": "fusion",
    "SpatialTokenFusion": "fusion",
    "spatial_token_fusion": "fusion",
    "PixelGrid": "images",
    "decode_image": "images",
    "to_rgb": "images",
    "load_model_dir": "model_dir",
    "save_model_dir": "model_dir",
    "STFForConditionalGeneration": "modeling",
    "STFModel": "modeling",
    "FUSION_PRESETS": "presets",
    "PRESETS": "presets",
    "build_tiny": "presets",
    "preset_config": "presets",
    "build_image_processor": "processing",
    "build_processor": "processing",
    "pixel_grid": "processing",
    "image_to_uint8": "processing",
    "normalize_pixels": "processing",
    "STFProjector": "projector",
    "build_tiny_tokenizer": "tokenizer",
}

__all__ = sorted([*_EXPORTS, "register"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stf_model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"stf_model.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


def register() -> None:
    """Registers ``llava_stf`` with transformers' Auto classes (config and models)."""
    importlib.import_module("stf_model.modeling")  # imports stf_model.config too
