"""Image preprocessing (LLaVA's pad-to-square, CLIP statistics) and the text+image processor.

transformers' ``LlavaImageProcessorPil`` already implements LLaVA's ``image_aspect_ratio=pad``
(pad to square with the mean colour, then resize) and ``LlavaProcessor`` expands ``<image>`` into
the model's token count; we configure them rather than re-write them.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import LlavaProcessor, PreTrainedTokenizerBase
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from stf_model.config import STFConfig
from stf_model.constants import IMAGE_TOKEN
from stf_model.errors import ModelInputError
from stf_model.records import RecordError

Aspect = Literal["pad", "crop"]


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


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Pillow's own ``convert("RGB")`` clips 16/32-bit integer images
    (``I;16``, ``I``) to white and float images (``F``) to black, so those are rescaled first."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and values.max(initial=0.0) <= 1.0:
            values = values * 255.0  # float images in [0, 1]
        elif image.mode != "F" and (image.mode.startswith("I;16") or values.max(initial=0.0) > 255):
            values = values / 257.0  # 16-bit range 0..65535 -> 0..255
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


# Longer side over shorter side beyond which an image is refused: resizing the short side to the
# tower's size (crop) costs size^2 * ratio pixels, and LLaVA's pad makes a longer-side square.
MAX_ASPECT_RATIO = 32


def check_image_size(width: int, height: int, max_pixels: int) -> None:
    """Bounds the work one image can cause, from its header size, before anything is decoded.

    ``max_pixels`` limits the image as the model's preprocessing sees it: padded to a square
    (LLaVA's pad-to-square allocates longer-side^2 pixels, so a 1 x 4,000,000 strip, only 4M
    pixels, would ask for 16 * 10^12); and the aspect ratio is at most :data:`MAX_ASPECT_RATIO`.
    Raises :class:`RecordError` (``image_too_large``, ``image_aspect``).
    """
    side = max(width, height)
    if side * side > max_pixels:
        raise RecordError(
            "image_too_large",
            f"{width}x{height}: padded to a square it is {side * side} pixels > limit {max_pixels}",
        )
    if side > MAX_ASPECT_RATIO * min(width, height):
        raise RecordError(
            "image_aspect",
            f"{width}x{height}: aspect ratio {side / max(min(width, height), 1):.0f}:1 is over "
            f"{MAX_ASPECT_RATIO}:1",
        )


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Encoded image bytes -> an upright 8-bit RGB image, decoded once.

    Checks the size from the header with :func:`check_image_size`, before any pixel is decoded
    (the decompression-bomb guard), applies the EXIF orientation, and converts any mode to RGB.
    Raises :class:`RecordError` (``image_empty``, ``image_undecodable``, ``image_too_large``,
    ``image_aspect``, ``image_truncated``).
    """
    if not data:
        raise RecordError("image_empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            # Our own limit below decides; Pillow's global bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise RecordError("image_too_large", str(err)) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise RecordError("image_undecodable", f"{type(err).__name__}: {err}") from err
    check_image_size(*image.size, max_pixels)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as err:  # Pillow reports truncation as OSError
        raise RecordError("image_truncated", f"{type(err).__name__}: {err}") from err


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
