"""The per-worker training loop (runs in every Ray Train worker).

``train_loop`` reads setup -> resume -> for each epoch: batches -> step, then rank 0 exports the
model directory. Everything a worker needs comes in its :class:`~pipelines.train.plan.TrainPlan`;
nothing reaches it through module globals (they would not survive pickling onto a cluster).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint

from pipelines.train.arithmetic import BUCKET_ELEMENTS, trainable_parts
from pipelines.train.metrics import Meter, peak_rss_gb
from pipelines.train.model import adapt, build_model, export, parameter_groups
from pipelines.train.plan import TrainPlan
from pipelines.train.run_folder import (
    DEEPSPEED_TAG,
    MetricsRow,
    TrainState,
    read_state,
    write_state,
)
from stf_model.collate import collate, length_grouped_batches, rows_of, shuffled
from stf_model.modeling import parameter_counts

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """One worker's training machinery, built by :func:`setup`."""

    rank: int
    device: torch.device
    engine: Any  # deepspeed.DeepSpeedEngine
    scheduler: Any
    tokenizer: Any
    # Parameters a text-only batch leaves without gradients (see :func:`step`).
    image_only_params: list[torch.nn.Parameter]


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function; ``config["plan"]`` is the run's :class:`TrainPlan`."""
    plan: TrainPlan = config["plan"]
    baseline_gb = peak_rss_gb()  # before the model exists: what memory_gb leaves out on CPU
    worker = setup(plan)
    state = resume(worker)
    meter = Meter(plan, worker.rank, baseline_gb)
    shard = ray.train.get_dataset_shard("train")
    while state.step < plan.total_steps:
        last = time.perf_counter()
        for index, batch in micro_batches(shard, plan, state, worker):
            state.micro_in_epoch = index + 1  # consumed, in the checkpoint this step may write
            step(worker, plan, state, meter, batch, data_s=time.perf_counter() - last)
            last = time.perf_counter()
        state.epoch += 1
        state.micro_in_epoch = 0
    meter.close()
    if worker.rank == 0:
        export(worker.engine.module, worker.tokenizer, plan.spec)


def setup(plan: TrainPlan) -> Worker:
    """Builds the model from the plan's spec, freezes per stage and wraps it with DeepSpeed."""
    import deepspeed

    spec = plan.spec
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    if not spec.scaling.use_gpu:
        # DeepSpeed would JIT-compile a shared-memory comm op (~25 s) in every fresh process;
        # plain gloo gives identical results on CPU. (An internal switch of deepspeed 0.19.)
        with contextlib.suppress(AttributeError, KeyError, TypeError):
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    random.seed(spec.seed + rank)
    model, tokenizer = build_model(spec, device)
    parts = trainable_parts(spec)
    # With LoRA the LLM trains through its adapters (a 4-bit weight cannot even take a gradient).
    counts = model.set_trainable_parts([p for p in parts if spec.lora is None or p != "llm"])
    if spec.deepspeed.gradient_checkpointing:  # every part that supports it: LLM and tower
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = adapt(model, spec)
    if spec.lora is not None:
        counts = parameter_counts(model)
    if rank == 0:
        trainable, frozen = counts["trainable"], counts["frozen"]
        how = ""
        if spec.lora is not None:
            bits = f", its linear layers in {spec.lora.quantize}" if spec.lora.quantize else ""
            how = f" (LoRA r={spec.lora.r} on the LLM{bits})"
        log.info(
            "training %s%s: %d trainable / %d frozen", ", ".join(parts), how, trainable, frozen
        )
    # The fused AdamW kernel (CPU and CUDA) updates ZeRO's flat fp32 partition in one pass; the
    # per-tensor loop allocates temporaries the size of the partition (3x slower on CPU here).
    optimizer = torch.optim.AdamW(
        parameter_groups(model, spec),
        lr=spec.lr,
        betas=spec.optimizer.betas,
        eps=spec.optimizer.eps,
        weight_decay=spec.optimizer.weight_decay,
        fused=True,
    )
    scheduler = _schedule(optimizer, plan)
    quantized = spec.lora is not None and spec.lora.quantize is not None
    engine, _, _, _ = deepspeed.initialize(
        model=model if quantized else model.to(device),  # a quantized model loads on its device
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(plan),
    )
    image_only = [p for p in model.image_only_parameters() if p.requires_grad]
    return Worker(rank, device, engine, scheduler, tokenizer, image_only)


def deepspeed_config(plan: TrainPlan) -> dict[str, Any]:
    ds = plan.spec.deepspeed
    return {
        "train_micro_batch_size_per_gpu": ds.micro_batch_size,
        "gradient_accumulation_steps": ds.gradient_accumulation,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": {
            "stage": ds.zero_stage,
            "reduce_bucket_size": BUCKET_ELEMENTS,
            "allgather_bucket_size": BUCKET_ELEMENTS,
        },
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _schedule(optimizer: torch.optim.Optimizer, plan: TrainPlan):
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    options = plan.spec.optimizer
    warmup = math.ceil(options.warmup_ratio * plan.total_steps)
    if options.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, plan.total_steps)
    return get_constant_schedule_with_warmup(optimizer, warmup)


def resume(worker: Worker) -> TrainState:
    """The state of the latest checkpoint of this run (Ray Train finds it by the run's name), with
    DeepSpeed's engine restored from it; a fresh state when there is none."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainState()
    with checkpoint.as_directory() as folder:
        worker.engine.load_checkpoint(folder, tag=DEEPSPEED_TAG, load_module_strict=False)
        state = read_state(folder)
    if worker.rank == 0:
        log.info("resumed at step %d (epoch %d)", state.step, state.epoch)
    return state


def micro_batches(
    shard, plan: TrainPlan, state: TrainState, worker: Worker
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """This epoch's micro-batches as ``(index, batch on the device)``: the worker's rows shuffled
    through ``shuffle_buffer`` in an order drawn from (seed, epoch, rank), then length-grouped;
    those a resumed run already consumed are skipped. The shards come in the same order every
    epoch (see ``deterministic_ingest``); without the shuffle every epoch would repeat one
    sequence, and records preprocessed from several files would arrive file by file. Every rank
    must run the same number of collectives, so the epoch stops on all ranks as soon as any rank
    runs out of rows (equal splits make this rare, not impossible)."""
    spec, micro, device = plan.spec, plan.spec.deepspeed.micro_batch_size, worker.device
    rng = random.Random(spec.seed * 1000 + state.epoch)
    order = random.Random(f"{spec.seed}/{state.epoch}/{worker.rank}")
    batches = shard.iter_batches(batch_size=micro * spec.group_window, batch_format="numpy")
    rows = shuffled(
        (row for batch in batches for row in rows_of(batch)), spec.shuffle_buffer, order
    )
    groups = length_grouped_batches(rows, micro, spec.group_window, rng)
    for index in itertools.count():
        group = next(groups, None) if index < plan.micro_per_epoch else None
        if not _all_ranks_have(group is not None, device) or state.step >= plan.total_steps:
            return
        if index < state.micro_in_epoch:
            continue  # consumed before the checkpoint we resumed from
        batch = collate(
            group,
            image_token_id=plan.image_token_id,
            num_image_tokens=plan.num_image_tokens,
            pad_token_id=plan.pad_token_id,
            image_size=plan.image_size,
            max_length=plan.max_length,
        )
        yield index, {k: v.to(device) for k, v in batch.items()}


def step(
    worker: Worker,
    plan: TrainPlan,
    state: TrainState,
    meter: Meter,
    batch: dict[str, torch.Tensor],
    data_s: float,
) -> None:
    """Forward, backward and DeepSpeed's step for one micro-batch; at an optimizer-step boundary,
    the metrics row and, when due, a checkpoint."""
    engine = worker.engine
    loss = engine(**batch).loss
    if "pixel_values" not in batch and worker.image_only_params:
        # A text-only batch leaves the trainable parts that only images reach (projector, and
        # the tower when it trains) without gradients, and ZeRO's gradient buckets would then
        # differ between ranks. As LLaVA does, touch those weights with a zero-weighted term
        # so every rank reduces the same tensors, whatever its batch holds.
        loss = loss + 0.0 * sum(p.sum() for p in worker.image_only_params)
    engine.backward(loss)
    boundary = engine.is_gradient_accumulation_boundary()
    engine.step()
    meter.add(loss.item(), batch, data_s)
    if not boundary:
        return
    state.step += 1
    metrics = meter.step(state, engine.get_global_grad_norm(), worker.scheduler.get_last_lr()[0])
    spec = plan.spec
    # Only checkpoints go to Ray: the metrics rows are rank 0's files (CSV, TensorBoard), and the
    # last row comes with the final checkpoint. A report of metrics alone would cost every rank a
    # barrier through Ray's sync actor, then wait for the controller to take the previous report
    # from the worker's one-slot queue, which it empties once per health check (2 s by default):
    # with log_every steps shorter than that, training would wait on Ray's polling.
    if state.step % spec.checkpoint_every == 0 or state.step == plan.total_steps:
        meter.sync()
        _report_with_checkpoint(engine, state, metrics, worker.rank, spec.lora is not None)


def _all_ranks_have(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank (one tiny all-reduce)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _report_with_checkpoint(
    engine, state: TrainState, metrics: MetricsRow | None, rank: int, trainable_only: bool
) -> None:
    """A checkpoint of every rank reported to Ray Train (``trainable_only``: without the frozen
    weights, which a resumed run rebuilds from where it started: a LoRA run's base model)."""
    with tempfile.TemporaryDirectory() as folder:
        engine.save_checkpoint(folder, tag=DEEPSPEED_TAG, exclude_frozen_parameters=trainable_only)
        if rank == 0:
            write_state(folder, state)
        reported = metrics.model_dump() if metrics is not None else {}
        ray.train.report(
            {**reported, "step": state.step}, checkpoint=Checkpoint.from_directory(folder)
        )
