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


ASK = "<image>\nWhat color is the circle?"
LONG_ANSWER = " ".join(["red green blue yellow"] * 60)

# A case: (record, or raw line text or bytes), expected outcome ("ok" / "quarantine"), reason
# or note.
Case = tuple[dict | list | str | bytes, str, str]


def _write_images(root: Path) -> None:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    (images / "good.jpg").write_bytes(jpeg())
    (images / "empty.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes(truncated_jpeg())
    (images / "text.jpg").write_bytes(b"this is not an image at all\n" * 10)
    (images / "bomb.png").write_bytes(png_header_only(40000, 40000))
    (images / "strip.png").write_bytes(png_header_only(1, 4_000_000))  # padding: 16 * 10^12 px
    Image.new("RGB", (330, 10), (200, 30, 30)).save(images / "banner.png")  # 33:1
    (images / "cmyk.jpg").write_bytes(jpeg(color=(0, 255, 255, 0), mode="CMYK"))
    (images / "rgba.png").write_bytes(png_of(Image.new("RGBA", (40, 30), (0, 200, 0, 128))))
    (images / "p.png").write_bytes(png_of(Image.new("RGB", (40, 30), (0, 0, 200)).convert("P")))
    (images / "gray16.png").write_bytes(sixteen_bit_png())
    (images / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    (root / "outside.jpg").write_bytes(jpeg())


def _asking(record_id: str, image: str, *turns: str) -> dict:
    """An image record asking ASK (or the given turns) about ``image``."""
    return {"id": record_id, "image": image, "conversations": _conv(*(turns or (ASK, "red")))}


def _image_cases() -> list[Case]:
    return [
        (_asking("ok", "good.jpg"), "ok", ""),
        (_asking("ok-end", "good.jpg", "Which?\n<image>", "red"), "ok", "placeholder moved"),
        (_asking("missing", "nope.jpg"), "quarantine", "image_missing"),
        (_asking("empty", "empty.jpg"), "quarantine", "image_empty"),
        (_asking("truncated", "truncated.jpg"), "quarantine", "image_truncated"),
        (_asking("not-image", "text.jpg"), "quarantine", "image_undecodable"),
        (_asking("bomb", "bomb.png"), "quarantine", "image_too_large"),
        (_asking("strip", "strip.png"), "quarantine", "image_too_large"),
        (_asking("banner", "banner.png"), "quarantine", "image_aspect"),
        (_asking("cmyk", "cmyk.jpg"), "ok", "cmyk"),
        (_asking("rgba", "rgba.png"), "ok", "rgba"),
        (_asking("p", "p.png"), "ok", "p"),
        (_asking("gray16", "gray16.png"), "ok", "16-bit"),
        (_asking("rotated", "rotated.jpg"), "ok", "exif"),
        (_asking("escape", "../outside.jpg"), "quarantine", "image_path_escapes_root"),
    ]


def _record_cases() -> list[Case]:
    gpt_first = [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "hello"}]
    two_human = [{"from": "human", "value": v} for v in ("a", "b")] + [
        {"from": "gpt", "value": "c"}
    ]
    return [
        ({"id": "text-only", "conversations": _conv("How many sides?", "three")}, "ok", "text"),
        ("{this is not json", "quarantine", "malformed_json"),
        ({"id": "no-conv", "image": "good.jpg"}, "quarantine", "missing_conversations"),
        ({"id": "empty-conv", "conversations": []}, "quarantine", "missing_conversations"),
        ({"id": "gpt-first", "conversations": gpt_first}, "quarantine", "wrong_turn_order"),
        ({"id": "two-human", "conversations": two_human}, "quarantine", "wrong_turn_order"),
        (
            _asking("two-placeholders", "good.jpg", "<image>\n<image>\nWhat?", "red"),
            "quarantine",
            "placeholder_count",
        ),
        (
            {"id": "placeholder-no-image", "conversations": _conv(ASK, "red")},
            "quarantine",
            "placeholder_without_image",
        ),
        (
            _asking("image-no-placeholder", "good.jpg", "What color?", "red"),
            "quarantine",
            "image_without_placeholder",
        ),
        (
            _asking("long-truncatable", "good.jpg", ASK, "red", "And now?", LONG_ANSWER),
            "ok",
            "truncated",
        ),
        (_asking("long-first", "good.jpg", ASK, LONG_ANSWER), "quarantine", "too_long"),
        ({"id": "empty-answer", "conversations": _conv("Hi?", "  ")}, "quarantine", "empty_turn"),
        (["not", "an", "object"], "quarantine", "not_an_object"),
        # NaN and Infinity are not JSON (RFC 8259), though Python's json module reads them.
        ('{"id": "nan", "score": NaN, "conversations": []}', "quarantine", "malformed_json"),
        ('{"id": "inf", "conversations": [], "w": -Infinity}', "quarantine", "malformed_json"),
        ("[" * 100_000 + "]" * 100_000, "quarantine", "malformed_json"),  # too deep to parse
        # Half an emoji's escape (text cut short by a scraper): no tokenizer, Arrow column or
        # file name takes it, so it is refused where the JSON is read, in any field.
        (_raw_conv('"id": "half-emoji"', "Q \\ud83d"), "quarantine", "malformed_json"),
        (_raw_conv('"id": "x\\ud83d"', "Q"), "quarantine", "malformed_json"),
        (_raw_conv('"id": ' + "7" * 5000, "Q"), "quarantine", "malformed_json"),  # int() limit
        (_raw_conv('"id": "huge", "w": 1e400', "Q"), "quarantine", "malformed_json"),
        (_asking("nul-path", "good\x00.jpg"), "quarantine", "bad_image_field"),
        (b'{"id": "caf\xe9", "conversations": []}', "quarantine", "malformed_json"),  # Latin-1
        (
            "\ufeff" + json.dumps({"id": "bom-line", "conversations": _conv("Hi?", "hello")}),
            "ok",
            "a BOM at the start of a line: files joined with cat",
        ),
    ]


def _raw_conv(fields: str, question: str) -> str:
    """A record's JSON text with ``fields`` as written and a one-exchange conversation."""
    turns = f'[{{"from": "human", "value": "{question}"}}, {{"from": "gpt", "value": "a"}}]'
    return f'{{{fields}, "conversations": {turns}}}'


def write_bad_corpus(root: Path) -> dict[str, tuple[str, str]]:
    """Writes ``root/bad.jsonl`` and ``root/images/``; returns id -> (outcome, reason or note).
    Records without an id are keyed ``line:N``."""
    _write_images(root)
    expected, lines = {}, []
    for record, outcome, note in _image_cases() + _record_cases():
        text = record if isinstance(record, str | bytes) else json.dumps(record)
        lines.append(text if isinstance(text, bytes) else text.encode())
        key = record["id"] if isinstance(record, dict) else f"line:{len(lines)}"
        if outcome == "ok" and isinstance(record, str):  # accepted rows are keyed by their id
            key = json.loads(record.removeprefix("\ufeff"))["id"]
        expected[key] = (outcome, note)
    (root / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return expected
