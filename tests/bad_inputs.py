"""Image bytes and a LLaVA corpus with every kind of bad input the preprocess job must handle.

``write_bad_corpus`` returns, per record id, where it must end up: ``("ok", check)`` or
``("quarantine", reason)``.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(color=(200, 30, 30), size=(64, 48), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="JPEG")
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    """A noisy JPEG cut in the middle of its scan data: the header reads, the pixels do not."""
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=90)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` with (almost) no pixel data: what a
    decompression bomb looks like before anyone decodes it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg() -> bytes:
    """Stored 64x32 (left red, right blue) with EXIF orientation 6 (display rotated 90 degrees
    clockwise): upright it is 32x64 with red on top and blue below."""
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def sixteen_bit_png(value: int = 30000) -> bytes:
    return png_of(Image.new("I;16", (40, 40), value))


def _conv(question: str, answer: str, *more: str) -> list[dict]:
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    for k, text in enumerate(more):
        turns.append({"from": "human" if k % 2 == 0 else "gpt", "value": text})
    return turns


def write_bad_corpus(root: Path) -> dict[str, tuple[str, str]]:
    """Writes ``root/bad.jsonl`` and ``root/images/``; returns id -> (outcome, reason or note)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    (images / "good.jpg").write_bytes(jpeg())
    (images / "empty.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes(truncated_jpeg())
    (images / "text.jpg").write_bytes(b"this is not an image at all\n" * 10)
    (images / "bomb.png").write_bytes(png_header_only(40000, 40000))
    (images / "cmyk.jpg").write_bytes(jpeg(color=(0, 255, 255, 0), mode="CMYK"))
    (images / "rgba.png").write_bytes(png_of(Image.new("RGBA", (40, 30), (0, 200, 0, 128))))
    (images / "p.png").write_bytes(png_of(Image.new("RGB", (40, 30), (0, 0, 200)).convert("P")))
    (images / "gray16.png").write_bytes(sixteen_bit_png())
    (images / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    (root / "outside.jpg").write_bytes(jpeg())

    ask = "<image>\nWhat color is the circle?"
    long_answer = " ".join(["red green blue yellow"] * 60)
    cases: list[tuple[dict | str, str, str]] = [
        ({"id": "ok", "image": "good.jpg", "conversations": _conv(ask, "red")}, "ok", ""),
        (
            {"id": "ok-end", "image": "good.jpg", "conversations": _conv("Which?\n<image>", "red")},
            "ok",
            "placeholder moved to the start",
        ),
        ({"id": "text-only", "conversations": _conv("How many sides?", "three")}, "ok", "text"),
        (
            {"id": "missing", "image": "nope.jpg", "conversations": _conv(ask, "red")},
            "quarantine",
            "image_missing",
        ),
        (
            {"id": "empty", "image": "empty.jpg", "conversations": _conv(ask, "red")},
            "quarantine",
            "image_empty",
        ),
        (
            {"id": "truncated", "image": "truncated.jpg", "conversations": _conv(ask, "red")},
            "quarantine",
            "image_truncated",
        ),
        (
            {"id": "not-image", "image": "text.jpg", "conversations": _conv(ask, "red")},
            "quarantine",
            "image_undecodable",
        ),
        (
            {"id": "bomb", "image": "bomb.png", "conversations": _conv(ask, "red")},
            "quarantine",
            "image_too_large",
        ),
        ({"id": "cmyk", "image": "cmyk.jpg", "conversations": _conv(ask, "red")}, "ok", "cmyk"),
        ({"id": "rgba", "image": "rgba.png", "conversations": _conv(ask, "red")}, "ok", "rgba"),
        ({"id": "p", "image": "p.png", "conversations": _conv(ask, "red")}, "ok", "p"),
        (
            {"id": "gray16", "image": "gray16.png", "conversations": _conv(ask, "red")},
            "ok",
            "16-bit",
        ),
        (
            {"id": "rotated", "image": "rotated.jpg", "conversations": _conv(ask, "red")},
            "ok",
            "exif",
        ),
        (
            {"id": "escape", "image": "../outside.jpg", "conversations": _conv(ask, "red")},
            "quarantine",
            "image_path_escapes_root",
        ),
        ("{this is not json", "quarantine", "malformed_json"),
        ({"id": "no-conv", "image": "good.jpg"}, "quarantine", "missing_conversations"),
        ({"id": "empty-conv", "conversations": []}, "quarantine", "missing_conversations"),
        (
            {
                "id": "gpt-first",
                "conversations": [
                    {"from": "gpt", "value": "hi"},
                    {"from": "human", "value": "hello"},
                ],
            },
            "quarantine",
            "wrong_turn_order",
        ),
        (
            {
                "id": "two-human",
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "human", "value": "b"},
                    {"from": "gpt", "value": "c"},
                ],
            },
            "quarantine",
            "wrong_turn_order",
        ),
        (
            {
                "id": "two-placeholders",
                "image": "good.jpg",
                "conversations": _conv("<image>\n<image>\nWhat?", "red"),
            },
            "quarantine",
            "placeholder_count",
        ),
        (
            {"id": "placeholder-no-image", "conversations": _conv(ask, "red")},
            "quarantine",
            "placeholder_without_image",
        ),
        (
            {
                "id": "image-no-placeholder",
                "image": "good.jpg",
                "conversations": _conv("What color?", "red"),
            },
            "quarantine",
            "image_without_placeholder",
        ),
        (
            {
                "id": "long-truncatable",
                "image": "good.jpg",
                "conversations": _conv(ask, "red", "And now?", long_answer),
            },
            "ok",
            "truncated",
        ),
        (
            {"id": "long-first", "image": "good.jpg", "conversations": _conv(ask, long_answer)},
            "quarantine",
            "too_long",
        ),
        ({"id": "empty-answer", "conversations": _conv("Hi?", "  ")}, "quarantine", "empty_turn"),
        (["not", "an", "object"], "quarantine", "not_an_object"),
    ]
    expected, lines = {}, []
    for record, outcome, note in cases:
        if isinstance(record, str):
            lines.append(record)
            expected[f"line:{len(lines)}"] = (outcome, note)
            continue
        lines.append(json.dumps(record))
        key = record["id"] if isinstance(record, dict) else f"line:{len(lines)}"
        expected[key] = (outcome, note)
    (root / "bad.jsonl").write_text("\n".join(lines) + "\n")
    return expected
