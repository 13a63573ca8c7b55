"""A training run's folder, ``STORAGE_PATH/NAME/`` (local or S3): its layout, defined here once,
and typed reads and writes of what it holds.

    spec.yaml                            the spec the run was started with, resolved
    metrics.csv                          rank 0's metrics, a :class:`MetricsRow` per log_every steps
    loss.png, tensorboard/               the same rows, drawn and as TensorBoard events
    checkpoint_manager_snapshot.json     Ray Train's record of the complete checkpoints
    checkpoint_<time>/ds/                DeepSpeed's state: model, optimizer, scheduler
    checkpoint_<time>/train_state.json   where the run was (:class:`TrainState`)
    model/                               the exported model directory (LoRA merged in)
    adapter/                             a LoRA run's adapter, in PEFT's layout

Ray Train names and records the checkpoints; the rest is written by the job.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import posixpath
from dataclasses import dataclass

import yaml
from pydantic import BaseModel, ConfigDict

from pipelines.spec import StorageOptions
from pipelines.storage import filesystem, fs_path, join, read_json, remove_tree, write_text

log = logging.getLogger(__name__)

SPEC_FILE = "spec.yaml"
METRICS_FILE = "metrics.csv"
LOSS_PLOT = "loss.png"
TENSORBOARD_DIR = "tensorboard"
SNAPSHOT = "checkpoint_manager_snapshot.json"
CHECKPOINT_PREFIX = "checkpoint_"
DEEPSPEED_TAG = "ds"
STATE_FILE = "train_state.json"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"


class TrainState(BaseModel):
    """Where a run is; saved with every checkpoint and read back on resume."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches of this epoch already consumed
    samples: int = 0
    tokens: int = 0


class MetricsRow(BaseModel):
    """One row of ``metrics.csv``: the mean over the ``log_every`` steps up to ``step``. NaN means
    not measured here (``mfu`` without a known peak FLOP/s, a ``grad_norm`` the engine did not
    report)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float
    samples_per_s: float
    tokens_per_s: float
    mfu: float
    memory_gb: float
    data_wait: float  # the share of the time spent waiting for data

    def measured(self) -> dict[str, float]:
        """The numbers besides the step that were measured (not NaN)."""
        values = self.model_dump(exclude={"step"})
        return {key: value for key, value in values.items() if not math.isnan(value)}


METRIC_COLUMNS = tuple(MetricsRow.model_fields)


def write_state(checkpoint_folder: str, state: TrainState) -> None:
    """Writes ``state`` into a (local) checkpoint folder being assembled."""
    with open(os.path.join(checkpoint_folder, STATE_FILE), "w") as f:
        f.write(state.model_dump_json())


def read_state(checkpoint_folder: str) -> TrainState:
    """The state a (local copy of a) checkpoint folder holds."""
    with open(os.path.join(checkpoint_folder, STATE_FILE)) as f:
        return TrainState.model_validate_json(f.read())


def parse_metrics(text: str) -> list[MetricsRow]:
    """The rows of a ``metrics.csv`` text, in the order they were written. A last line without
    its newline is a row still being written (or one a killed run left torn): it is left out."""
    whole = text[: text.rfind("\n") + 1]
    return [MetricsRow.model_validate(row) for row in csv.DictReader(io.StringIO(whole))]


@dataclass(frozen=True)
class RunFolder:
    """The folder of one run: ``url`` is ``STORAGE_PATH/NAME``."""

    url: str
    storage: StorageOptions

    @property
    def model(self) -> str:
        return join(self.url, MODEL_DIR)

    @property
    def adapter(self) -> str:
        return join(self.url, ADAPTER_DIR)

    @property
    def metrics(self) -> str:
        return join(self.url, METRICS_FILE)

    def write_spec(self, resolved: dict) -> None:
        write_text(join(self.url, SPEC_FILE), yaml.safe_dump(resolved), self.storage)

    def read_metrics(self) -> list[MetricsRow]:
        """The rows of ``metrics.csv`` (none before the first is written). A step re-run after
        a restore has a row from each time it ran."""
        fs = filesystem(self.url, self.storage)
        fs.invalidate_cache()
        try:
            with fs.open(fs_path(self.metrics), "r") as f:
                return parse_metrics(f.read())
        except FileNotFoundError:
            return []

    def drop_unrecorded_checkpoints(self) -> None:
        """Deletes the checkpoint folders that Ray Train's snapshot does not record: a run killed
        while it wrote one leaves it half-written. Ray resumes from the recorded ones only, so
        these are never read; removing them frees their space and leaves no torn folder for a
        person (or a script picking the newest) to take for a checkpoint. A snapshot that cannot
        be parsed is left for Ray to report."""
        try:
            snapshot = read_json(join(self.url, SNAPSHOT), self.storage) or {}
        except ValueError:
            return
        recorded = {c["checkpoint_dir_name"] for c in snapshot.get("checkpoint_results", [])}
        fs = filesystem(self.url, self.storage)
        fs.invalidate_cache()
        try:
            names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(fs_path(self.url))]
        except FileNotFoundError:
            return
        for name in sorted(names):
            if name.startswith(CHECKPOINT_PREFIX) and name != SNAPSHOT and name not in recorded:
                log.warning("removing %s: a checkpoint that was never completed", name)
                remove_tree(join(self.url, name), self.storage)
