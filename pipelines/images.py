"""The one image loader of the jobs: bytes read from storage (or the error reading them) ->
a checked, upright 8-bit RGB image. Preprocessing, batch inference and the server all use it, so a
limit added here holds everywhere."""

from __future__ import annotations

from PIL import Image

from pipelines.reasons import RejectedRecord
from stf_model.images import decode_image


def checked_image(source: str, data: bytes | BaseException, max_pixels: int) -> Image.Image:
    """``data`` as read from ``source`` -> RGB. Raises :class:`~stf_model.records.RecordError`
    with ``image_missing``, ``image_unreadable`` (the read failed), ``image_empty``,
    ``image_undecodable``, ``image_truncated`` or ``image_too_large`` (over ``max_pixels``,
    checked from the header before decoding)."""
    if isinstance(data, FileNotFoundError):
        raise RejectedRecord("image_missing", f"{source} does not exist")
    if isinstance(data, BaseException):
        raise RejectedRecord("image_unreadable", f"{source}: {data!r}")
    return decode_image(data, max_pixels)
