"""LLaVA-STF: LLaVA with Multi-Block and Spatial Token Fusion, on transformers' LLaVA.

Importing this package registers ``llava_stf`` with transformers' Auto classes, so a saved model
directory reloads through ``AutoConfig`` / ``AutoModelForImageTextToText`` as well.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from stf_model.chat_templates import CHAT_TEMPLATE_NAMES, get_chat_template
from stf_model.config import STFConfig
from stf_model.fusion import MultiBlockTokenFusion, SpatialTokenFusion, spatial_token_fusion
from stf_model.model_dir import load_model_dir, save_model_dir
from stf_model.modeling import STFForConditionalGeneration, STFModel
from stf_model.presets import FUSION_PRESETS, PRESETS, build_tiny, preset_config
from stf_model.processing import (
    build_image_processor,
    build_processor,
    image_to_uint8,
    normalize_pixels,
    to_rgb,
)
from stf_model.projector import STFProjector
from stf_model.tokenizer import build_tiny_tokenizer

AutoConfig.register(STFConfig.model_type, STFConfig, exist_ok=True)
AutoModel.register(STFConfig, STFModel, exist_ok=True)
AutoModelForImageTextToText.register(STFConfig, STFForConditionalGeneration, exist_ok=True)

__all__ = [
    "CHAT_TEMPLATE_NAMES",
    "FUSION_PRESETS",
    "PRESETS",
    "MultiBlockTokenFusion",
    "STFConfig",
    "STFForConditionalGeneration",
    "STFModel",
    "STFProjector",
    "SpatialTokenFusion",
    "build_image_processor",
    "build_processor",
    "build_tiny",
    "build_tiny_tokenizer",
    "get_chat_template",
    "image_to_uint8",
    "load_model_dir",
    "normalize_pixels",
    "preset_config",
    "save_model_dir",
    "spatial_token_fusion",
    "to_rgb",
]
