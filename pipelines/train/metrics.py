"""Training metrics: rank 0's console progress, ``metrics.csv``, TensorBoard, and the loss plot.

Rank 0 may run on any node: it writes the logs where it runs. For an S3 run it starts from the
run's ``metrics.csv`` (a resumed or restored run continues it), uploads it with every checkpoint and
uploads all logs when the run ends.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import tempfile
import time

import torch

from pipelines.storage import filesystem, fs_path, is_s3, upload_dir, write_text
from pipelines.train.plan import TrainPlan
from pipelines.train.run_folder import (
    LOSS_PLOT,
    METRIC_COLUMNS,
    METRICS_FILE,
    TENSORBOARD_DIR,
    MetricsRow,
    RunFolder,
    TrainState,
    parse_metrics,
)


class Meter:
    """Accumulates micro-batch numbers and turns them into one metrics row per ``log_every``
    optimizer steps; MFU comes from the plan's FLOPs per token and peak FLOP/s."""

    def __init__(self, plan: TrainPlan, rank: int, baseline_gb: float = 0.0):
        self.plan, self.rank, self.baseline_gb = plan, rank, baseline_gb
        self._reset()
        self.bar = self.csv = self.writer = None
        if rank != 0:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        spec = plan.spec
        self.run = RunFolder(spec.run_dir, spec.storage)
        s3 = is_s3(self.run.url)
        self.local_dir = tempfile.mkdtemp(prefix="stf-logs-") if s3 else fs_path(self.run.url)
        os.makedirs(self.local_dir, exist_ok=True)
        path = os.path.join(self.local_dir, METRICS_FILE)
        if s3:
            fs = filesystem(self.run.url, spec.storage)
            with contextlib.suppress(FileNotFoundError):
                fs.get_file(fs_path(self.run.metrics), path)
        fresh = not os.path.exists(path)
        if not fresh:
            _drop_torn_last_line(path)
        self.csv_file = open(path, "a", newline="")  # noqa: SIM115 (kept open for the run)
        self.csv = csv.writer(self.csv_file)
        if fresh:
            self.csv.writerow(METRIC_COLUMNS)
        self.writer = SummaryWriter(os.path.join(self.local_dir, TENSORBOARD_DIR))
        self.bar = tqdm(total=plan.total_steps, desc=f"{spec.stage} {spec.name}", unit="step")

    def _reset(self) -> None:
        self.window_loss: list[float] = []
        self.window_samples = self.window_tokens = 0
        self.window_data_s = 0.0
        self.started = time.perf_counter()

    def add(self, loss: float, batch: dict[str, torch.Tensor], data_s: float) -> None:
        """One micro-batch: its loss, rows, real tokens and the time spent waiting for it."""
        self.window_data_s += data_s
        self.window_loss.append(loss)
        self.window_samples += int(batch["input_ids"].shape[0])
        self.window_tokens += int(batch["attention_mask"].sum())

    def step(self, state: TrainState, grad_norm: float | None, lr: float) -> MetricsRow | None:
        """Counts an optimizer step; returns a metrics row when one is due (else None)."""
        world = self.plan.world_size
        state.samples += self.window_samples * world
        state.tokens += self.window_tokens * world
        if self.bar is not None:
            self.bar.n = state.step
            self.bar.refresh()
        if state.step % self.plan.spec.log_every and state.step != self.plan.total_steps:
            return None
        metrics = self._row(state, grad_norm, lr)
        self._reset()
        if self.rank == 0:
            self._write(metrics, state.step)
        return metrics

    def _row(self, state: TrainState, grad_norm: float | None, lr: float) -> MetricsRow:
        world = self.plan.world_size
        elapsed = time.perf_counter() - self.started
        tokens_per_s = self.window_tokens * world / elapsed
        flops = self.plan.flops_per_token * tokens_per_s / world
        return MetricsRow(
            step=state.step,
            epoch=state.epoch,
            loss=sum(self.window_loss) / max(len(self.window_loss), 1),
            lr=lr,
            grad_norm=float(grad_norm) if grad_norm is not None else math.nan,
            samples_per_s=self.window_samples * world / elapsed,
            tokens_per_s=tokens_per_s,
            mfu=flops / self.plan.peak_flops if self.plan.peak_flops else math.nan,
            memory_gb=memory_gb(self.baseline_gb),
            data_wait=self.window_data_s / elapsed,
        )

    def _write(self, row: MetricsRow, step: int) -> None:
        self.csv.writerow([getattr(row, c) for c in METRIC_COLUMNS])
        self.csv_file.flush()
        # The CSV keeps NaN; TensorBoard gets no point for it (tensorboardX would log a warning
        # for every one).
        for key, value in row.measured().items():
            self.writer.add_scalar(f"train/{key}", value, step)
        self.bar.set_postfix(loss=f"{row.loss:.4f}", lr=f"{row.lr:.2e}")

    def sync(self) -> None:
        """Rank 0 of an S3 run uploads ``metrics.csv`` (called as a checkpoint is written, so the
        rows up to every recorded checkpoint are in the run directory)."""
        if self.rank == 0 and is_s3(self.run.url):
            with open(os.path.join(self.local_dir, METRICS_FILE), newline="") as f:
                write_text(self.run.metrics, f.read(), self.run.storage)

    def close(self) -> None:
        """Closes the logs; rank 0 draws the loss curve and uploads the logs of an S3 run."""
        if self.rank != 0:
            return
        self.bar.close()
        self.writer.close()
        self.csv_file.close()
        plot_loss(self.local_dir)
        if is_s3(self.run.url):
            upload_dir(self.local_dir, self.run.url, self.run.storage)


def _drop_torn_last_line(path: str) -> None:
    """Cuts a last line the previous run did not finish (it was killed mid-write), so the rows
    this run appends stay rows of their own."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def memory_gb(baseline_gb: float = 0.0) -> float:
    """Peak memory the training took: GPU memory allocated at most, or on CPU this process' peak
    resident set above ``baseline_gb`` (its size before the model was built: the interpreter,
    torch, Ray), so that both compare with the pre-flight estimate."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    return peak_rss_gb() - baseline_gb


def peak_rss_gb() -> float:
    """This process' peak resident set size so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux


def plot_loss(log_dir: str) -> None:
    """``loss.png`` from ``metrics.csv`` in ``log_dir``."""
    path = os.path.join(log_dir, METRICS_FILE)
    if not os.path.exists(path):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        rows = parse_metrics(f.read())
    steps = [r.step for r in rows]
    losses = [r.loss for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(log_dir, LOSS_PLOT), dpi=100)
    plt.close(fig)
