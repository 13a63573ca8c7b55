"""``report.html``: the evaluation report as one self-contained page that opens from disk.

The headline and every metric, the per-category breakdown as a table and a bar chart (inline SVG;
chance and majority-answer ticks when they are known), then examples (thumbnail embedded as a
data URL, question, expected answer, prediction), wrong ones first. No script, no external file:
it renders offline and can be mailed. Every number also sits in a ``data-value`` attribute, so
tests and tools read it exactly.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from PIL import Image

from pipelines.eval.benchmarks.base import Item
from pipelines.eval.report import EvalReport
from pipelines.spec import StorageOptions
from pipelines.storage import read_many

THUMBNAIL_PX = 128
MAX_SOURCE_PIXELS = 40_000_000
BAR_PX, CHART_WIDTH = 26, 560
# The breakdown's bar shows the first of these a category has.
CHART_KEYS = ("score", "f1", "accuracy")

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: 4px 10px; text-align: left; }
tr.wrong td.prediction { color: #b00020; } tr.right td.prediction { color: #0a7d32; }
.examples td { border-top: 1px solid #ddd; vertical-align: top; }
.examples img { max-width: 128px; max-height: 128px; image-rendering: pixelated; }
.meta { color: #666; } .headline { font-size: 1.3em; font-weight: 600; }
svg { display: block; margin-top: 1.5em; }
"""


def render_report(report: EvalReport, shown: list[Item], storage: StorageOptions) -> str:
    """The page for ``report`` and the items it shows (the lowest scores first)."""
    thumbnails = _thumbnails([i.image for i in shown if i.image], storage)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(report.title)}: {_e(report.model or report.answers)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_e(report.title)} ({_e(report.split)})</h1>",
        _summary(report),
        "<h2>Metrics</h2>",
        _metrics(report),
    ]
    if report.breakdown:
        parts += ["<h2>By category</h2>", _breakdown(report), _chart(report)]
    if shown:
        parts += [
            f"<h2>Examples ({len(shown)} of {report.n}, wrong ones first)</h2>",
            _examples(shown, thumbnails),
        ]
    return "\n".join([*parts, "</body></html>"])


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value: float) -> str:
    """A count or a whole score without decimals, anything else with two."""
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.2f}"


def _cell(name: str, value: float, kind: str = "") -> str:
    return f"<td class='{name}' data-type='{_e(kind)}' data-value='{value!r}'>{_number(value)}</td>"


def _summary(report: EvalReport) -> str:
    lines = [f"<p class='meta'>model <code>{_e(report.model or '-')}</code>, answers "]
    lines.append(
        f"<code>{_e(report.answers)}</code>, questions <code>{_e(report.questions)}</code></p>"
    )
    if report.score is None:
        lines.append(
            f"<p class='headline'>No local score: the {_e(report.split)} split's answers are not "
            f"public. Upload <code>{_e(report.submission)}</code> to the benchmark's server.</p>"
        )
    else:
        lines.append(
            f"<p class='headline'>{_e(report.headline)}: <span class='score' data-type='headline' "
            f"data-value='{report.score!r}'>{_number(report.score)}</span></p>"
        )
    partial = f" (limit {report.limit}: a partial score)" if report.limit else ""
    lines.append(
        f"<p class='meta' data-n='{report.n}' data-unanswered='{report.unanswered}'>{report.n} "
        f"items{partial}; {report.unanswered} without an answer, counted wrong"
        f"{f' ({report.errors} could not be asked: unreadable images)' if report.errors else ''}.</p>"
    )
    return "\n".join(lines)


def _metrics(report: EvalReport) -> str:
    rows = [f"<tr><td>{_e(k)}</td>{_cell('metric', v, k)}</tr>" for k, v in report.metrics.items()]
    return "<table class='metrics'>" + "".join(rows) + "</table>"


def _breakdown(report: EvalReport) -> str:
    keys = list(dict.fromkeys(k for values in report.breakdown.values() for k in values))
    base = report.baselines or {}
    header = "".join(f"<th>{_e(k)}</th>" for k in [*keys, *base])
    lines = [f"<table class='breakdown'><tr><th>category</th>{header}</tr>"]
    for category, values in report.breakdown.items():
        cells = [_cell(k, values[k], category) if k in values else "<td>-</td>" for k in keys]
        for name, by_type in base.items():
            value = by_type.get(category)
            cells.append(_cell(name, value, category) if value is not None else "<td>-</td>")
        lines.append(f"<tr><td>{_e(category)}</td>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _chart(report: EvalReport) -> str:
    """One bar per category (its first of CHART_KEYS), ticks at the baselines."""
    key = next((k for k in CHART_KEYS if all(k in v for v in report.breakdown.values())), None)
    if key is None:
        return ""
    values = {c: v[key] for c, v in report.breakdown.items()}
    top = max(100.0, *values.values())
    label_px, scale = 170, (CHART_WIDTH - 240) / top
    height = len(values) * (BAR_PX + 8) + 30
    svg = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{CHART_WIDTH}' height='{height}' "
        f"role='img' aria-label='{_e(key)} by category'>"
    ]
    for i, (category, value) in enumerate(values.items()):
        y = i * (BAR_PX + 8)
        svg.append(f"<text x='0' y='{y + BAR_PX * 0.7}'>{_e(category)[:24]}</text>")
        svg.append(
            f"<rect x='{label_px}' y='{y}' width='{max(value * scale, 1):.1f}' height='{BAR_PX}' "
            "fill='#3b6fb6'/>"
        )
        ticks = [
            (b.get(category), colour)
            for b, colour in zip(
                (report.baselines or {}).values(), ("#999", "#e08a00"), strict=False
            )
        ]
        right = max([value] + [t for t, _ in ticks if t is not None]) * scale
        svg.append(
            f"<text x='{label_px + right + 8:.1f}' y='{y + BAR_PX * 0.7}'>{_number(value)}</text>"
        )
        for tick, colour in ticks:
            if tick is not None:
                x = label_px + tick * scale
                svg.append(
                    f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{y - 2}' y2='{y + BAR_PX + 2}' "
                    f"stroke='{colour}' stroke-width='3'/>"
                )
    if report.baselines:
        y = len(values) * (BAR_PX + 8) + 16
        svg.append(
            f"<text x='{label_px}' y='{y}' fill='#666'>grey: chance, orange: majority answer</text>"
        )
    svg.append("</svg>")
    return "".join(svg)


def _examples(items: list[Item], thumbnails: dict[str, str]) -> str:
    lines = [
        "<table class='examples'><tr><th>image</th><th>question</th><th>expected</th>"
        "<th>prediction</th></tr>"
    ]
    for item in items:
        src = thumbnails.get(item.image or "")
        image = f"<img alt='' src='{src}'>" if src else "<span class='meta'>no image</span>"
        prediction = item.prediction if item.prediction is not None else "(no answer)"
        verdict = "right" if item.score >= 1 else "wrong"
        lines.append(
            f"<tr class='{verdict}'><td>{image}</td>"
            f"<td>{_e(item.question)}<br><span class='meta'>{_e(item.category)}</span></td>"
            f"<td class='expected'>{_e(item.expected)}</td>"
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
