"""``stf infer``'s progress bar on the driver: rows done, rows/s and error rows.

The replicas add each batch's counts to one small actor (no CPU reserved); a driver thread reads
it twice a second and draws a tqdm bar, as `stf train` does. Ray Data's own bars count blocks per
operator, not answered rows or errors. A batch that Ray retries counts again: the bar is a view,
``summary.json`` is the record.
"""

from __future__ import annotations

import threading
from typing import Any

import ray


@ray.remote(num_cpus=0)
class RowCounter:
    """Rows answered and error rows, added to by every replica."""

    def __init__(self) -> None:
        self.rows = self.errors = 0

    def add(self, rows: int, errors: int) -> None:
        self.rows += rows
        self.errors += errors

    def counts(self) -> tuple[int, int]:
        return self.rows, self.errors


class InferProgress:
    """A context manager: ``counter`` is the handle the replicas report to; on exit the bar shows
    the final counts and closes."""

    def __init__(self, total: int, already_done: int, interval_s: float = 0.5):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=already_done, desc="infer", unit="row")
        self.already_done, self.interval_s = already_done, interval_s
        self.counter: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> InferProgress:
        self.counter = RowCounter.remote()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._update()
        self.bar.close()
        ray.kill(self.counter)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._update()

    def _update(self) -> None:
        try:
            rows, errors = ray.get(self.counter.counts.remote(), timeout=5)
        except (ray.exceptions.RayError, TimeoutError):
            return  # a missed refresh; the next one (or the summary) tells
        self.bar.n = min(self.already_done + rows, self.bar.total)
        self.bar.set_postfix(errors=errors, refresh=False)
        self.bar.refresh()
