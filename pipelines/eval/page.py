"""``report.html``: the evaluation report as one self-contained page that opens from disk.

Overall and per-type accuracy as a bar chart (inline SVG) against the chance and majority
baselines when they are known, then examples (thumbnail embedded as a data URL, question, expected
answer, prediction), wrong ones first. No script, no external file: it renders offline and can be
mailed. Every number also sits in a ``data-value`` attribute, so tests and tools read it exactly.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from PIL import Image

from pipelines.spec import StorageOptions
from pipelines.storage import read_many

# Examples shown (wrong ones first): enough to see the failure modes, small enough to open fast.
MAX_EXAMPLES = 200
THUMBNAIL_PX = 128
MAX_SOURCE_PIXELS = 40_000_000
BAR_PX, CHART_WIDTH = 26, 520

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: 4px 10px; text-align: left; }
tr.wrong td.prediction { color: #b00020; } tr.right td.prediction { color: #0a7d32; }
.examples td { border-top: 1px solid #ddd; vertical-align: top; }
.examples img { max-width: 128px; max-height: 128px; image-rendering: pixelated; }
.meta { color: #666; }
"""


def render_report(report: Any, rows: list[dict[str, Any]], storage: StorageOptions) -> str:
    """The page for ``report`` (an :class:`~pipelines.evaluate.EvalReport`) and its scored rows
    (question, answer, prediction, question_type, image URL, correct)."""
    shown = sorted(rows, key=lambda r: r["correct"])[:MAX_EXAMPLES]
    thumbnails = _thumbnails([r["image"] for r in shown if r.get("image")], storage)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Evaluation: {_e(report.model)}</title><style>{STYLE}</style></head><body>",
        "<h1>Evaluation report</h1>",
        f"<p class='meta'>model <code>{_e(report.model)}</code>, questions "
        f"<code>{_e(report.questions)}</code></p>",
        _summary_table(report),
        "<h2>Accuracy by question type</h2>",
        _chart(report),
        f"<h2>Examples ({len(shown)} of {len(rows)}, wrong ones first)</h2>",
        _examples(shown, thumbnails),
        "</body></html>",
    ]
    return "\n".join(parts)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _cell(name: str, value: float, kind: str = "") -> str:
    return f"<td class='{name}' data-type='{_e(kind)}' data-value='{value!r}'>{value:.1%}</td>"


def _summary_table(report: Any) -> str:
    b = report.baselines
    header = "<tr><th>question type</th><th>accuracy</th>"
    header += "<th>chance</th><th>majority answer</th></tr>" if b else "</tr>"
    lines = ["<table class='summary'>", header]
    types = [("all", report.accuracy)] + list(report.by_type.items())
    for kind, accuracy in types:
        cells = [f"<td>{_e(kind)}</td>", _cell("accuracy", accuracy, kind)]
        if b:
            chance = b.chance if kind == "all" else b.chance_by_type.get(kind)
            majority = b.majority if kind == "all" else b.majority_by_type.get(kind)
            for name, value in (("chance", chance), ("majority", majority)):
                cells.append(_cell(name, value, kind) if value is not None else "<td>-</td>")
        lines.append(f"<tr>{''.join(cells)}</tr>")
    lines.append("</table>")
    lines.append(
        f"<p class='meta' data-n='{report.n}' data-errors='{report.errors}'>{report.n} questions; "
        f"{report.errors} without an answer (counted wrong).</p>"
    )
    return "\n".join(lines)


def _chart(report: Any) -> str:
    """One bar per type (and overall), with tick marks for the chance and majority baselines."""
    b = report.baselines
    types = [("all", report.accuracy)] + list(report.by_type.items())
    label_px, scale = 110, CHART_WIDTH - 160
    height = len(types) * (BAR_PX + 8) + 30
    svg = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{CHART_WIDTH}' height='{height}' "
        "role='img' aria-label='accuracy by question type'>"
    ]
    for i, (kind, accuracy) in enumerate(types):
        y = i * (BAR_PX + 8)
        width = max(accuracy * scale, 1)
        svg.append(f"<text x='0' y='{y + BAR_PX * 0.7}'>{_e(kind)}</text>")
        svg.append(
            f"<rect x='{label_px}' y='{y}' width='{width:.1f}' height='{BAR_PX}' fill='#3b6fb6'/>"
        )
        chance = majority = None
        if b:
            chance = b.chance if kind == "all" else b.chance_by_type.get(kind)
            majority = b.majority if kind == "all" else b.majority_by_type.get(kind)
        # The label goes right of the bar and of its ticks, so a short bar's label stays readable.
        right = max(v for v in (accuracy, chance, majority) if v is not None) * scale
        svg.append(
            f"<text x='{label_px + max(right, width) + 8:.1f}' y='{y + BAR_PX * 0.7}'>"
            f"{accuracy:.1%}</text>"
        )
        if b:
            for value, colour in ((chance, "#999"), (majority, "#e08a00")):
                if value is not None:
                    x = label_px + value * scale
                    svg.append(
                        f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{y - 2}' y2='{y + BAR_PX + 2}' "
                        f"stroke='{colour}' stroke-width='3'/>"
                    )
    y = len(types) * (BAR_PX + 8) + 16
    if b:
        svg.append(
            f"<text x='{label_px}' y='{y}' fill='#666'>grey: chance, orange: majority answer</text>"
        )
    svg.append("</svg>")
    return "".join(svg)


def _examples(rows: list[dict[str, Any]], thumbnails: dict[str, str]) -> str:
    lines = [
        "<table class='examples'><tr><th>image</th><th>question</th><th>expected</th>"
        "<th>prediction</th></tr>"
    ]
    for row in rows:
        src = thumbnails.get(row.get("image") or "")
        image = f"<img alt='' src='{src}'>" if src else "<span class='meta'>no image</span>"
        prediction = row["prediction"] if row["prediction"] is not None else "(no answer)"
        lines.append(
            f"<tr class='{'right' if row['correct'] else 'wrong'}'><td>{image}</td>"
            f"<td>{_e(row['question'])}<br><span class='meta'>{_e(row['question_type'])}</span>"
            f"</td><td class='expected'>{_e(row['answer'])}</td>"
            f"<td class='prediction'>{_e(prediction)}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _thumbnails(urls: list[str], storage: StorageOptions) -> dict[str, str]:
    """A JPEG data URL per readable image (at most THUMBNAIL_PX a side); unreadable ones are
    left out (the page says "no image")."""
    out = {}
    for url, data in read_many(sorted(set(urls)), storage).items():
        if isinstance(data, BaseException):
            continue
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_SOURCE_PIXELS:
                    continue  # the job refused it too; never decode a bomb for a thumbnail
                image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # JPEGs decode at a lower scale
                thumb = image.convert("RGB")
                thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        buffer = io.BytesIO()
        thumb.save(buffer, format="JPEG", quality=85)
        out[url] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return out
