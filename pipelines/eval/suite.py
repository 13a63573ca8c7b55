"""``stf eval-suite``: every benchmark of a suite spec for every model, each an ``stf eval`` run
(``OUTPUT/MODEL/BENCHMARK/``, resumable as that job is), then one table in the papers' shape:
benchmark columns in the paper's order, model rows, LLaVA-1.5-7B's and LLaVA-STF-7B's published
rows above ours; as Markdown (``table.md``), JSON (``table.json``) and a picture (``table.png``)."""

from __future__ import annotations

import io
import json

from pydantic import BaseModel, ConfigDict

from pipelines.eval.job import run as run_eval
from pipelines.eval.report import PUBLISHED, EvalReport
from pipelines.eval.spec import BENCHMARK_NAMES, SuiteSpec
from pipelines.storage import join, write_bytes, write_text

TITLES = {
    "vqav2": "VQAv2",
    "gqa": "GQA",
    "vizwiz": "VizWiz",
    "sqa_img": "SQA-IMG",
    "textvqa": "TextVQA",
    "pope": "POPE",
    "mme": "MME",
    "mmbench": "MMBench",
    "mmbench_cn": "MMBench-CN",
    "custom": "custom",
}


class Cell(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    score: float | None  # None: scored by the benchmark's server (a submission file)
    split: str
    unanswered: int
    submission: str | None = None


class SuiteTable(BaseModel):
    """``table.json``: the columns, the published rows and ours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: list[str]
    published: dict[str, dict[str, float]]
    rows: dict[str, dict[str, Cell]]


def run(spec: SuiteSpec) -> SuiteTable:
    columns = [name for name in BENCHMARK_NAMES if name in spec.benchmarks]
    rows: dict[str, dict[str, Cell]] = {}
    for model in spec.models:
        rows[model.label] = {}
        for name in columns:
            report: EvalReport = run_eval(spec.eval_spec(model, name))
            rows[model.label][name] = Cell(
                score=report.score,
                split=report.split,
                unanswered=report.unanswered,
                submission=report.submission,
            )
    published = {
        row: {k: v for k, v in values.items() if k in columns} for row, values in PUBLISHED.items()
    }
    table = SuiteTable(columns=columns, published=published, rows=rows)
    write_text(join(spec.output, "table.json"), table.model_dump_json(indent=2), spec.storage)
    write_text(join(spec.output, "table.md"), markdown(table), spec.storage)
    write_bytes(join(spec.output, "table.png"), picture(table), spec.storage)
    return table


def _format(value: float | None) -> str:
    return "server" if value is None else f"{value:.1f}"


def _lines(table: SuiteTable) -> list[list[str]]:
    """Header, then one list of cells per row."""
    header = ["model", *(TITLES[c] for c in table.columns)]
    body = [
        [row, *(_format(values.get(c)) if c in values else "-" for c in table.columns)]
        for row, values in table.published.items()
    ]
    for row, cells in table.rows.items():
        body.append(
            [
                row,
                *(
                    _format(cells[c].score) + ("*" if cells[c].unanswered else "")
                    for c in table.columns
                ),
            ]
        )
    return [header, *body]


def markdown(table: SuiteTable) -> str:
    header, *body = _lines(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    notes = [
        "",
        "Headlines as the papers report them: VQA accuracy (VQAv2, VizWiz, TextVQA), accuracy "
        "(GQA, SQA-IMG on the image questions), POPE's F1 averaged over its three splits, MME's "
        "perception score (out of 2000), MMBench's circular accuracy (dev). The published rows "
        'are VQAv2 test-dev, VizWiz test and MMBench dev; "server": a test split whose answers '
        "are not public (its submission file is beside the run's report).",
    ]
    splits = {
        f"{TITLES[c]}: {cells[c].split}" for cells in table.rows.values() for c in table.columns
    }
    notes.append("Our splits: " + ", ".join(sorted(splits)) + ".")
    if any(cell.unanswered for cells in table.rows.values() for cell in cells.values()):
        notes.append("\\*: some questions had no answer (counted wrong); see the run's report.")
    return "\n".join(lines + notes) + "\n"


def picture(table: SuiteTable) -> bytes:
    """The table as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header, *body = _lines(table)
    # Inches per column, from its longest text at 8 pt.
    inches = [max(len(row[i]) for row in [header, *body]) * 0.08 + 0.3 for i in range(len(header))]
    fig, ax = plt.subplots(figsize=(sum(inches), 0.5 + 0.38 * (len(body) + 1)))
    ax.axis("off")
    widths = [w / sum(inches) for w in inches]
    grid = ax.table(
        cellText=body, colLabels=header, colWidths=widths, loc="center", cellLoc="center"
    )
    grid.auto_set_font_size(False)
    grid.set_fontsize(8)
    grid.scale(1, 1.3)
    for (row, _), cell in grid.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
        elif row <= len(table.published):
            cell.set_facecolor("#eef2f8")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def summary_line(spec: SuiteSpec, table: SuiteTable) -> str:
    scored = sum(1 for cells in table.rows.values() for c in cells.values() if c.score is not None)
    cells = {row: {c: v.score for c, v in values.items()} for row, values in table.rows.items()}
    return (
        f"eval-suite: {scored} scores; {json.dumps(cells)}\ntable: {join(spec.output, 'table.md')}"
    )
