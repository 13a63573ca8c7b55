"""``stf train``: Ray Train (TorchTrainer) + DeepSpeed ZeRO-1/2, one stage per run.

spec -> plan (read the shards' manifests, check they fit the model, pre-flight memory estimate)
-> TorchTrainer running :func:`~pipelines.train.loop.train_loop` on every worker (rank 0 exports
the model directory) -> the run's summary.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pydantic import BaseModel, ConfigDict
from ray.train import (
    CheckpointConfig,
    ControllerError,
    DataConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from pipelines.models import load_config
from pipelines.ray_env import (
    ResourceAsk,
    gave_up,
    init_ray,
    ray_data_settings,
    require_resources,
)
from pipelines.shards import read_shards
from pipelines.storage import arrow_filesystem, fs_path
from pipelines.train.arithmetic import preflight
from pipelines.train.loop import train_loop
from pipelines.train.plan import TrainPlan, build_plan
from pipelines.train.run_folder import RunFolder
from pipelines.train.spec import TrainSpec

log = logging.getLogger(__name__)
# Worker-group start-ups that may fail (a timeout waiting for resources, a worker that died while
# starting) before the run gives up; Ray Train's default is to retry forever.
STARTUP_RETRIES = 2


class TrainSummary(BaseModel):
    """What a finished run reports: its last metrics row, checkpoint and model directory."""

    model_config = ConfigDict(frozen=True)

    metrics: dict[str, Any]
    checkpoint: str | None
    model: str
    plan: TrainPlan


def run(spec: TrainSpec) -> TrainSummary:
    """Trains and exports; returns the run's summary."""
    config = load_config(spec.start_from, spec.storage, spec.model_overrides)
    plan = build_plan(spec, config)
    preflight(spec, config, plan.longest)
    init_ray()
    scaling = ScalingConfig(
        num_workers=spec.scaling.num_workers,
        use_gpu=spec.scaling.use_gpu,
        resources_per_worker=spec.scaling.resources_per_worker,
    )
    each = {k: v / scaling.num_workers for k, v in scaling.total_resources.items()}
    timeout_s = spec.scaling.schedule_timeout_s
    ask = ResourceAsk("stf train", scaling.num_workers, "workers", each, timeout_s)
    require_resources(ask)
    # Ray Train waits this long for the workers' placement group (the driver passes the variable
    # on to its controller) and retries a failed start STARTUP_RETRIES times: together, the
    # spec's timeout. Then the run fails with WorkerGroupStartupTimeoutError.
    per_try = timeout_s / (STARTUP_RETRIES + 1)
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(per_try)
    run_folder = RunFolder(spec.run_dir, spec.storage)
    run_folder.write_spec(spec.resolved())
    run_folder.drop_unrecorded_checkpoints()
    # Reading shards reserves no CPU: the workers hold theirs, and Ray Train leaves Ray Data no
    # budget on a cluster the workers fill (a 1-CPU read would wait forever on a 2-CPU machine).
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"plan": plan},
        scaling_config=scaling,
        run_config=RunConfig(
            name=spec.name,
            storage_path=fs_path(spec.storage_path),
            storage_filesystem=arrow_filesystem(spec.storage_path, spec.storage),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.keep_checkpoints),
            failure_config=FailureConfig(
                max_failures=spec.max_failures, controller_failure_limit=STARTUP_RETRIES
            ),
        ),
        datasets={"train": training_data(plan)},
        dataset_config=deterministic_ingest(),
    )
    try:
        result = trainer.fit()
    except ControllerError as err:
        # Matched by name: Ray Train exports the error only from an internal module.
        if type(err.controller_failure).__name__ == "WorkerGroupStartupTimeoutError":
            raise gave_up(ask) from err
        raise
    return TrainSummary(
        metrics=result.metrics or {},
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        model=run_folder.model,
        plan=plan,
    )


def training_data(plan: TrainPlan):
    """The run's rows as a Ray Dataset, a shard file read at once per worker (reading is light
    next to a training step). Data up to ``cache_data_gb`` is read here, once, into Ray's object
    store: every epoch starts a new read otherwise, and on a small corpus the read tasks'
    worker processes starting again each epoch cost seconds that the epoch's steps do not
    hide. It is read in file order, so every run of the same shards holds the same blocks."""
    spec = plan.spec
    if plan.data_bytes > spec.cache_data_gb * 1e9:
        return read_shards(plan.shard_urls, spec.storage, spec.scaling.num_workers)
    log.info("caching the training data in Ray's object store (%.3f GB)", plan.data_bytes / 1e9)
    with ray_data_settings(preserve_order=True):
        return read_shards(plan.shard_urls, spec.storage, spec.scaling.num_workers).materialize()


def deterministic_ingest() -> DataConfig:
    """Every worker gets the same rows in the same order on every run of the same shards: a
    resumed run skips exactly the micro-batches its checkpoint consumed, so no row is seen twice
    or never. By default Ray Data emits blocks as their reads finish and the split prefers blocks
    already on a worker's node, so two runs (or a run and its resume) would hand ranks different
    rows; with ``preserve_order`` the reads come out in file order and the split is a fixed
    function of that order (Ray ignores locality hints then)."""
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(execution_options=options, enable_shard_locality=False)


def summary_line(spec: TrainSpec, summary: TrainSummary) -> str:
    loss = summary.metrics.get("loss")
    return (
        f"train {spec.name}: {summary.metrics.get('step', '?')} steps, last loss "
        f"{'?' if loss is None else f'{loss:.4f}'}; model in {summary.model}"
    )
