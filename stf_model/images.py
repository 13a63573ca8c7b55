"""Images without torch: encoded bytes -> an upright RGB image -> the tower's uint8 input grid.

Preprocessing actors need only this (and a tokenizer). transformers' image processors would do the
same pad / resize / crop, but importing any of them imports torch and transformers' modeling code,
about 2 s of start-up in every fresh actor process, for work that is a few PIL calls. So the
geometry is written here with PIL, step for step as ``LlavaImageProcessorPil`` does it (pad to a
square with the mean colour, bicubic resize of the short side, centre crop, all on uint8), and
``tests/library/test_images.py`` pins it to that class pixel for pixel; serving, which imports
torch anyway, keeps using transformers' processor.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from stf_model.errors import ModelInputError
from stf_model.records import RecordError

Aspect = Literal["pad", "crop"]


@dataclass(frozen=True)
class PixelGrid:
    """How an image becomes the tower's square input: ``pad`` = LLaVA's pad-to-square with the mean
    colour, then resize (finetuning, inference); ``crop`` = resize the short side, then centre-crop
    (pretraining)."""

    size: int  # the tower's input side, in pixels
    mean: tuple[float, float, float]  # the normalisation mean in [0, 1]; the pad colour is mean*255
    aspect: Aspect = "pad"

    def __post_init__(self) -> None:
        if self.aspect not in ("pad", "crop"):
            raise ModelInputError(f"unknown image aspect {self.aspect!r}: use 'pad' or 'crop'")

    @classmethod
    def of(cls, size: int, mean: Sequence[float], aspect: Aspect = "pad") -> PixelGrid:
        return cls(int(size), tuple(float(m) for m in mean), aspect)

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """One image (any mode) -> the tower's input grid, not normalised (that happens on the
        device).

        Shape: PIL (W0, H0) -> (3, S, S) uint8
        """
        image = to_rgb(image)
        if self.aspect == "pad":
            image = _pad_to_square(image, tuple(int(m * 255) for m in self.mean))
        width, height = image.size
        # transformers' get_resize_output_image_size: the short side becomes `size`, the long
        # side int(size * long / short), truncated.
        if width <= height:
            new = (self.size, int(self.size * height / width))
        else:
            new = (int(self.size * width / height), self.size)
        if new != image.size:
            image = image.resize(new, resample=Image.Resampling.BICUBIC)
        left, top = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        pixels = np.asarray(image, dtype=np.uint8)[top : top + self.size, left : left + self.size]
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _pad_to_square(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    """The image centred on a square of ``colour`` whose side is its longer side (offsets floor
    to the top / left, as in transformers' ``pad_to_square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), colour)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Pillow's own ``convert("RGB")`` clips 16/32-bit integer images
    (``I;16``, ``I``) to white and float images (``F``) to black, so those are rescaled first."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # float32, in place: a 40M-pixel 16-bit PNG is small on the wire, and float64 with a
        # temporary per step took about 1 GB. float32 rounds v / 257 exactly for v < 2^16.
        values = np.array(image, dtype=np.float32)
        if image.mode == "F" and values.max(initial=0.0) <= 1.0:
            values *= 255.0  # float images in [0, 1]
        elif image.mode != "F" and (image.mode.startswith("I;16") or values.max(initial=0.0) > 255):
            values /= 257.0  # 16-bit range 0..65535 -> 0..255
        np.rint(values, out=values)
        np.clip(values, 0, 255, out=values)
        image = Image.fromarray(values.astype(np.uint8), mode="L")
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
            image = Image.open(io.BytesIO(data), formats=_readable_formats())
    except Image.DecompressionBombError as err:
        raise RecordError("image_too_large", str(err)) from err
    except MemoryError:
        raise
    # Any other exception is the bytes' fault: Pillow's format plugins raise many kinds on
    # crafted files (NotImplementedError, struct.error, IndexError, ...), not only OSError.
    except Exception as err:
        raise RecordError("image_undecodable", f"{type(err).__name__}: {err}") from err
    check_image_size(*image.size, max_pixels)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as err:  # Pillow reports truncation as OSError
        raise RecordError("image_truncated", f"{type(err).__name__}: {err}") from err
    except MemoryError:
        raise
    except Exception as err:  # as above: a decoder that fails on crafted data in its own way
        raise RecordError("image_undecodable", f"{type(err).__name__}: {err}") from err


# Formats Pillow reads by running another program: EPS starts Ghostscript (where installed)
# on the file, too much to run on bytes from a corpus or a request.
_EXTERNAL_FORMATS = frozenset({"EPS"})


@functools.cache
def _readable_formats() -> tuple[str, ...]:
    """Every format Pillow can open here, but those in :data:`_EXTERNAL_FORMATS`."""
    Image.init()
    return tuple(f for f in Image.ID if f not in _EXTERNAL_FORMATS)
