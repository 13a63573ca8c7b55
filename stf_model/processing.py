"""Image preprocessing (LLaVA's pad-to-square, CLIP statistics) and the text+image processor.

transformers' ``LlavaImageProcessorPil`` already implements LLaVA's ``image_aspect_ratio=pad``
(pad to square with the mean colour, then resize) and ``LlavaProcessor`` expands ``<image>`` into
the model's token count; we configure them rather than re-write them. Preprocessing actors use
the torch-free twin of the image processor, :class:`stf_model.images.PixelGrid` (see there why);
:func:`pixel_grid` builds it from a config, and a test keeps the two identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import LlavaProcessor, PreTrainedTokenizerBase
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from stf_model.config import STFConfig
from stf_model.constants import IMAGE_TOKEN
from stf_model.errors import ModelInputError

# Decoding and the torch-free geometry live in stf_model.images; re-exported for this module's users.
from stf_model.images import (  # noqa: F401
    MAX_ASPECT_RATIO,
    Aspect,
    PixelGrid,
    check_image_size,
    decode_image,
    to_rgb,
)


def normalize_pixels(
    pixels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 RGB pixels -> CLIP-normalised floats, on the pixels' device.

    Shape: (B, 3, H, W) uint8 -> (B, 3, H, W) dtype
    """
    mean_t = torch.tensor(mean, device=pixels.device, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=pixels.device, dtype=torch.float32).view(1, -1, 1, 1)
    return ((pixels.float() / 255.0 - mean_t) / std_t).to(dtype)


def build_image_processor(config: STFConfig, aspect: Aspect = "pad") -> LlavaImageProcessorPil:
    """The image processor for a model: ``pad`` = LLaVA's pad-to-square with the mean colour then
    resize (finetuning, inference); ``crop`` = resize the short side then centre-crop (pretraining)."""
    if aspect not in ("pad", "crop"):
        raise ModelInputError(f"unknown image aspect {aspect!r}: use 'pad' or 'crop'")
    size = config.vision_config.image_size
    return LlavaImageProcessorPil(
        do_pad=aspect == "pad",
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_center_crop=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )


def pixel_grid(config: STFConfig, aspect: Aspect = "pad") -> PixelGrid:
    """The torch-free equivalent of :func:`build_image_processor` for the same config and aspect."""
    return PixelGrid.of(config.vision_config.image_size, config.image_mean, aspect)


def image_to_uint8(image: Image.Image, image_processor: LlavaImageProcessorPil) -> np.ndarray:
    """One image (any mode) -> the tower's input grid as uint8, not normalised (that happens on the device).

    Shape: PIL (W0, H0) -> (3, S, S) uint8
    """
    out = image_processor(
        images=to_rgb(image), do_rescale=False, do_normalize=False, return_tensors="np"
    )
    pixels = out["pixel_values"][0]
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def build_processor(
    config: STFConfig,
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str | None = None,
    aspect: Aspect = "pad",
) -> LlavaProcessor:
    """A ``LlavaProcessor`` that expands each ``<image>`` into ``config.num_image_tokens`` tokens.

    LlavaProcessor counts ``(H // patch) * (W // patch) + extra - CLS`` tokens per image; one fused
    token covers a ``patch * window`` pixel square, so that is the patch size it is given. A CLIP
    tower's CLS is counted (extra=1) and dropped by the ``default`` strategy; a SigLIP tower has
    none (extra=0, strategy ``full``).
    """
    processor = LlavaProcessor(
        image_processor=build_image_processor(config, aspect),
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size * config.stf_window,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1 if config.has_cls_token else 0,
        image_token=IMAGE_TOKEN,
        chat_template=chat_template if chat_template is not None else tokenizer.chat_template,
    )
    return processor
