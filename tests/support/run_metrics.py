"""Reading a training run's ``metrics.csv`` as the fault tests compare runs."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from typing import Any


def metrics_rows(run_dir: str) -> list[dict[str, str]]:
    """The rows of ``RUN/metrics.csv``, in the order they were written."""
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def losses_by_step(rows: Iterable[dict[str, Any]]) -> dict[int, str]:
    """Each step's loss as written; a step re-run after a restore counts with its last row (what
    the README documents)."""
    return {int(r["step"]): r["loss"] for r in rows}
