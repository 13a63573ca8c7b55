"""Reading a training run's ``metrics.csv`` as the fault tests compare runs."""

from __future__ import annotations

from collections.abc import Iterable

from pipelines.spec import StorageOptions
from pipelines.train.run_folder import MetricsRow, RunFolder


def metrics_rows(run_dir: str) -> list[MetricsRow]:
    """The rows of a local run's ``metrics.csv``, in the order they were written."""
    return RunFolder(run_dir, StorageOptions()).read_metrics()


def losses_by_step(rows: Iterable[MetricsRow]) -> dict[int, float]:
    """Each step's loss; a step re-run after a restore counts with its last row (what the docs
    describe). The CSV holds each loss at full precision, so equal losses mean equal bits."""
    return {row.step: row.loss for row in rows}
