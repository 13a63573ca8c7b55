"""Image intake for the chat API: ``data:`` URLs and allow-listed ``http(s)`` fetches, with the
byte and pixel limits of the spec. Every refusal is an :class:`APIError` (413 for sizes, 400 for
the rest); decoding runs off the event loop."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from urllib.parse import urlsplit

from PIL import Image

from pipelines.images import checked_image
from pipelines.serve.protocol import APIError
from pipelines.serve.spec import RequestLimits
from stf_model.records import RecordError


async def load_image(url: str, limits: RequestLimits, allowed_hosts: list[str]) -> Image.Image:
    """The image an ``image_url`` part names, decoded and checked."""
    if url.startswith("data:"):
        data = _data_url_bytes(url, limits)
    else:
        try:
            parts = urlsplit(url)
        except ValueError as err:  # e.g. "http://[::1/x.png": an unclosed IPv6 bracket
            raise APIError(400, f"image_url is not a URL: {err}", param="image_url") from err
        if parts.scheme not in ("http", "https"):
            raise APIError(
                400, "image_url must be a data: URL or an allowed http(s) URL", param="image_url"
            )
        if not parts.hostname or not host_allowed(parts.hostname, allowed_hosts):
            raise APIError(
                400,
                f"fetching images from {parts.hostname!r} is not allowed on this server "
                "(allowed_image_hosts); send the image as a data: URL",
                param="image_url",
                code="image_host_not_allowed",
            )
        data = await _fetch(url, limits)
    return await asyncio.to_thread(decode, data, limits)


def decode(data: bytes, limits: RequestLimits) -> Image.Image:
    """Image bytes -> checked RGB, as 413 (too many bytes or pixels) or 400 (not an image)."""
    if len(data) > limits.max_image_bytes:
        raise APIError(
            413,
            f"image is {len(data)} bytes; the limit is {limits.max_image_bytes}",
            code="image_too_large",
        )
    try:
        return checked_image("image_url", data, limits.max_image_pixels)
    except RecordError as err:
        status = 413 if err.reason == "image_too_large" else 400
        raise APIError(
            status, f"image rejected ({err.reason}): {err.detail}", code=err.reason
        ) from err


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether ``host`` matches one of ``allowed`` (``example.com`` or ``*.example.com``)."""
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern.startswith("*.") and (host.endswith(pattern[1:]) or host == pattern[2:]):
            return True
        if host == pattern:
            return True
    return False


def _too_large(limits: RequestLimits) -> APIError:
    return APIError(
        413, f"image is over the {limits.max_image_bytes}-byte limit", code="image_too_large"
    )


_WHITESPACE = re.compile(r"\s")


def _data_url_bytes(url: str, limits: RequestLimits) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header or not header[5:].startswith("image/"):
        raise APIError(
            400, "image_url data URLs must be data:image/...;base64,...", param="image_url"
        )
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise _too_large(limits)
    if _WHITESPACE.search(payload):  # MIME-style base64, wrapped at 76 characters
        payload = "".join(payload.split())
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise APIError(400, f"image_url is not valid base64: {err}", param="image_url") from err


async def _fetch(url: str, limits: RequestLimits) -> bytes:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=limits.image_fetch_timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            # No redirects: a redirect could lead off the allow-list.
            session.get(url, allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise APIError(
                    400, f"fetching the image returned HTTP {response.status}", param="image_url"
                )
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > limits.max_image_bytes:
                    raise _too_large(limits)
            return bytes(data)
    # ValueError: a URL aiohttp cannot request, e.g. a host label over IDNA's 63 characters.
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        raise APIError(
            400, f"could not fetch the image: {type(err).__name__}: {err}", param="image_url"
        ) from err
