"""``stf train``: Ray Train (TorchTrainer) + DeepSpeed ZeRO-1/2, one stage per run.

setup (read the shards' manifests, check they fit the model, pre-flight memory estimate) ->
TorchTrainer: each worker builds the model from the spec it is passed, freezes per stage, wraps it
with ``deepspeed.initialize``, streams its shard of the data (grouped, collated, pixels normalised
on the device), reports metrics and checkpoints through ``ray.train.report`` -> rank 0 exports the
model directory -> cleanup.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from typing import Any, Literal

import ray
import ray.train
import torch
import yaml
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipelines.ray_env import init_ray
from pipelines.shards import ShardsDatasource, read_manifest, shard_urls
from pipelines.spec import JobSpec, StorageOptions
from pipelines.storage import (
    Location,
    Locations,
    ModelRef,
    arrow_filesystem,
    filesystem,
    fs_path,
    is_s3,
    join,
    local_copy,
)
from stf_model import (
    PRESETS,
    STFConfig,
    STFForConditionalGeneration,
    build_tiny_tokenizer,
    preset_config,
    save_model_dir,
)
from stf_model.collate import collate, length_grouped_batches, rows_of
from stf_model.tokenizer import tokenizer_fingerprint

log = logging.getLogger(__name__)
STAGE_LR = {"pretrain": 1e-3, "finetune": 2e-5}  # LLaVA-1.5's recipe (DESIGN section 3)
STATE_FILE = "train_state.json"


class ScalingOptions(JobSpec):
    num_workers: PositiveInt = Field(2, description="data-parallel workers (one per GPU)")
    use_gpu: bool = Field(False, description="one GPU per worker, nccl; otherwise CPU and gloo")
    resources_per_worker: dict[str, float] | None = Field(
        None, description='e.g. {"CPU": 8, "GPU": 1}; default: 1 CPU (+1 GPU with use_gpu)'
    )


class DeepSpeedOptions(JobSpec):
    zero_stage: Literal[1, 2] = Field(
        2, description="ZeRO stage: 1 shards optimizer states, 2 also gradients"
    )
    precision: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="training precision")
    micro_batch_size: PositiveInt = Field(4, description="rows per worker per forward")
    gradient_accumulation: PositiveInt = Field(1, description="micro-batches per optimizer step")
    gradient_clipping: float = Field(1.0, ge=0, description="max grad norm (0: off)")
    gradient_checkpointing: bool = Field(False, description="recompute LLM activations in backward")


class OptimizerOptions(JobSpec):
    lr: PositiveFloat | None = Field(
        None, description="peak learning rate (default: 1e-3 pretrain, 2e-5 finetune)"
    )
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear warm-up share of the steps")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="after warm-up")


class PreflightOptions(JobSpec):
    memory_gb: PositiveFloat | None = Field(
        None, description="per-worker memory budget (default: the GPU's memory; none on CPU)"
    )
    enforce: bool = Field(True, description="refuse a run whose estimate exceeds the budget")


class TrainSpec(JobSpec):
    """Trains one stage of an STF model on preprocessed shards with Ray Train + DeepSpeed."""

    name: str = Field(description="run name: a re-run with the same name resumes")
    storage_path: Location = Field(
        description="runs directory, local or s3://; the run is NAME inside"
    )
    stage: Literal["pretrain", "finetune"] = Field(
        description="pretrain: MBTF + projector; finetune: LLM + MBTF + projector"
    )
    data: Locations = Field(min_length=1, description="`stf preprocess` output directories")
    model: ModelRef = Field("tiny", description="preset name or model directory (local or s3://)")
    model_overrides: dict[str, Any] = Field(
        default_factory=dict, description='preset overrides, e.g. {"stf_window": 3}'
    )
    init_from: Location | None = Field(
        None, description="model directory to start from (a previous stage's NAME/model)"
    )
    epochs: PositiveInt = Field(1, description="passes over the data")
    max_steps: PositiveInt | None = Field(None, description="stop after this many optimizer steps")
    seed: int = 0
    scaling: ScalingOptions = Field(default_factory=ScalingOptions)
    deepspeed: DeepSpeedOptions = Field(default_factory=DeepSpeedOptions)
    optimizer: OptimizerOptions = Field(default_factory=OptimizerOptions)
    checkpoint_every: PositiveInt = Field(100, description="optimizer steps between checkpoints")
    keep_checkpoints: PositiveInt = Field(2, description="checkpoints kept")
    max_failures: int = Field(2, ge=-1, description="worker failures survived (-1: unlimited)")
    log_every: PositiveInt = Field(10, description="optimizer steps between metric rows")
    peak_tflops: PositiveFloat | None = Field(
        None, description="per-worker peak TFLOP/s for MFU (default: detected for known GPUs)"
    )
    group_window: PositiveInt = Field(16, description="micro-batches per length-grouping window")
    preflight: PreflightOptions = Field(default_factory=PreflightOptions)
    storage: StorageOptions = Field(default_factory=StorageOptions)

    @model_validator(mode="after")
    def _precision_needs_gpu(self) -> TrainSpec:
        if self.deepspeed.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError(
                "deepspeed.precision fp16 needs scaling.use_gpu: true (use bf16 or fp32 on CPU)"
            )
        return self

    @property
    def run_dir(self) -> str:
        return join(self.storage_path, self.name)

    @property
    def model_source(self) -> str | None:
        """The model directory weights load from (``init_from`` first), or None for a preset."""
        return self.init_from or (None if self.model in PRESETS else self.model)

    @property
    def lr(self) -> float:
        return self.optimizer.lr or STAGE_LR[self.stage]


# ---------------------------------------------------------------------------------------------
# Model construction (runs in every worker; everything comes from the spec it is given).


def build_model(spec: TrainSpec) -> tuple[STFForConditionalGeneration, Any]:
    """The model and tokenizer a run starts from: ``init_from``, else a model dir, else a preset
    (random weights from ``seed``; only ``tiny`` has a local tokenizer)."""
    from transformers import AutoTokenizer

    source = spec.model_source
    if source is not None:
        local = local_copy(source, spec.storage)
        model = STFForConditionalGeneration.from_pretrained(local, use_safetensors=True)
        return model, AutoTokenizer.from_pretrained(local)
    if spec.model != "tiny":
        raise ValueError(
            f"model {spec.model!r}: presets other than 'tiny' have no local weights or tokenizer; "
            "point model at a model directory (`stf convert` writes one)"
        )
    config = preset_config("tiny", **spec.model_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = STFForConditionalGeneration(config)
    return model, build_tiny_tokenizer()


def model_config(spec: TrainSpec) -> STFConfig:
    """The config of the model a run trains, without building weights."""
    source = spec.model_source
    if source is not None:
        return STFConfig.from_pretrained(local_copy(source, spec.storage, patterns=("*.json",)))
    return preset_config(spec.model, **spec.model_overrides)


# ---------------------------------------------------------------------------------------------
# Pre-flight memory estimate (ZeRO paper, mixed precision: 2 B weights + 2 B grads + 12 B Adam).


def memory_estimate(spec: TrainSpec, config: STFConfig) -> dict[str, float]:
    """Per-worker bytes: trainable model states by ZeRO stage, frozen weights, activations."""
    with torch.device("meta"):
        model = STFForConditionalGeneration(config)
    counts = model.set_trainable_stage(spec.stage)
    trainable, frozen = counts["trainable"], counts["frozen"]
    n = spec.scaling.num_workers
    mixed = spec.deepspeed.precision != "fp32"
    if mixed:
        states = (
            4 * trainable + 12 * trainable / n
            if spec.deepspeed.zero_stage == 1
            else (2 * trainable + 14 * trainable / n)
        )
        frozen_bytes = 2 * frozen
    else:  # fp32: 4 B weights + 4 B grads + 8 B Adam moments
        states = (
            8 * trainable + 8 * trainable / n
            if spec.deepspeed.zero_stage == 1
            else (4 * trainable + 12 * trainable / n)
        )
        frozen_bytes = 4 * frozen
    text = config.text_config
    seq = min(text.max_position_embeddings, 2048)
    per_layer = seq * spec.deepspeed.micro_batch_size * text.hidden_size * (2 if mixed else 4)
    # Megatron's estimate: ~34 values per token per hidden unit per layer without
    # recomputation, ~1 (the layer input) with gradient checkpointing.
    factor = 1 if spec.deepspeed.gradient_checkpointing else 17
    activations = per_layer * factor * text.num_hidden_layers
    return {
        "trainable_params": trainable,
        "frozen_params": frozen,
        "model_states_gb": states / 1e9,
        "frozen_weights_gb": frozen_bytes / 1e9,
        "activations_gb": activations / 1e9,
        "total_gb": (states + frozen_bytes + activations) / 1e9,
    }


def preflight(spec: TrainSpec, config: STFConfig) -> dict[str, float]:
    """Prints the estimate and refuses a run over the budget (unless ``preflight.enforce`` is off)."""
    estimate = memory_estimate(spec, config)
    budget = spec.preflight.memory_gb
    if budget is None and spec.scaling.use_gpu and torch.cuda.is_available():
        budget = torch.cuda.get_device_properties(0).total_memory / 1e9
    line = (
        f"pre-flight: ZeRO-{spec.deepspeed.zero_stage} {spec.deepspeed.precision} on "
        f"{spec.scaling.num_workers} workers, {estimate['trainable_params'] / 1e6:.1f}M trainable "
        f"+ {estimate['frozen_params'] / 1e6:.1f}M frozen params: per worker about "
        f"{estimate['model_states_gb']:.2f} GB model states + {estimate['frozen_weights_gb']:.2f} "
        f"GB frozen weights + {estimate['activations_gb']:.2f} GB activations = "
        f"{estimate['total_gb']:.2f} GB"
    )
    log.info("%s (budget: %s)", line, f"{budget:.1f} GB" if budget else "none")
    if budget is not None and estimate["total_gb"] > budget:
        message = (
            f"{line} > budget {budget:.1f} GB. Use more workers, ZeRO-2, gradient "
            "checkpointing or a smaller micro_batch_size; or set preflight.enforce: false"
        )
        if spec.preflight.enforce:
            raise ValueError(message)
        log.warning(message)
    return estimate


# ---------------------------------------------------------------------------------------------
# The per-worker loop.


def _deepspeed_config(spec: TrainSpec) -> dict[str, Any]:
    ds = spec.deepspeed
    return {
        "train_micro_batch_size_per_gpu": ds.micro_batch_size,
        "gradient_accumulation_steps": ds.gradient_accumulation,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _schedule(optimizer, spec: TrainSpec, total_steps: int):
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    warmup = math.ceil(spec.optimizer.warmup_ratio * total_steps)
    if spec.optimizer.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    return get_constant_schedule_with_warmup(optimizer, warmup)


def train_loop(config: dict[str, Any]) -> None:
    """Runs in each Ray Train worker; everything it needs is in ``config`` (no module globals)."""
    import deepspeed

    spec: TrainSpec = config["spec"]
    plan: dict[str, Any] = config["plan"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    if not spec.scaling.use_gpu:
        # DeepSpeed would JIT-compile a shared-memory comm op (~25 s) in every fresh process;
        # plain gloo gives identical results on CPU. (An internal switch of deepspeed 0.19.)
        with contextlib.suppress(AttributeError, KeyError, TypeError):
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    random.seed(spec.seed + rank)
    model, tokenizer = build_model(spec)
    counts = model.set_trainable_stage(spec.stage)
    if spec.deepspeed.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if rank == 0:
        log.info(
            "stage %s: %d trainable / %d frozen parameters",
            spec.stage,
            counts["trainable"],
            counts["frozen"],
        )
    params = [p for p in model.parameters() if p.requires_grad]
    projector_params = [
        p for p in model.model.multi_modal_projector.parameters() if p.requires_grad
    ]
    optimizer = torch.optim.AdamW(
        params, lr=spec.lr, betas=spec.optimizer.betas, eps=spec.optimizer.eps,
        weight_decay=spec.optimizer.weight_decay,
    )  # fmt: skip
    scheduler = _schedule(optimizer, spec, plan["total_steps"])
    engine, _, _, _ = deepspeed.initialize(
        model=model.to(device), optimizer=optimizer, lr_scheduler=scheduler,
        config=_deepspeed_config(spec),
    )  # fmt: skip

    state = {"step": 0, "epoch": 0, "micro_in_epoch": 0, "samples": 0, "tokens": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            engine.load_checkpoint(folder, tag="ds", load_module_strict=False)
            with open(os.path.join(folder, STATE_FILE)) as f:
                state = json.load(f)
        if rank == 0:
            log.info("resumed at step %d (epoch %d)", state["step"], state["epoch"])

    micro = spec.deepspeed.micro_batch_size
    collate_args = dict(
        image_token_id=plan["image_token_id"],
        num_image_tokens=plan["num_image_tokens"],
        pad_token_id=plan["pad_token_id"],
        image_size=plan["image_size"],
        max_length=plan["max_length"],
    )
    shard = ray.train.get_dataset_shard("train")
    meter = _Meter(spec, plan, rank)
    total = plan["total_steps"]
    while state["step"] < total:
        rng = random.Random(spec.seed * 1000 + state["epoch"])
        rows = (
            row
            for batch in shard.iter_batches(
                batch_size=micro * spec.group_window, batch_format="numpy"
            )
            for row in rows_of(batch)
        )
        micro_batches = length_grouped_batches(rows, micro, spec.group_window, rng)
        usable = plan["micro_per_epoch"]
        last = time.perf_counter()
        for index in itertools.count():
            group = next(micro_batches, None) if index < usable else None
            # Every rank must run the same number of collectives: stop the epoch on all ranks as
            # soon as any rank runs out of rows (equal splits make this rare, not impossible).
            if not _all_ranks_have(group is not None, device) or state["step"] >= total:
                break
            if index < state["micro_in_epoch"]:
                continue  # consumed before the checkpoint we resumed from
            batch = {k: v.to(device) for k, v in collate(group, **collate_args).items()}
            data_s = time.perf_counter() - last  # waiting for rows + collating
            loss = engine(**batch).loss
            if "pixel_values" not in batch:
                # A text-only batch leaves the projector without gradients, and ZeRO's gradient
                # buckets would then differ between ranks. As LLaVA does, touch those weights
                # with a zero-weighted term so every rank reduces the same tensors.
                loss = loss + 0.0 * sum(p.sum() for p in projector_params)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            state["micro_in_epoch"] = index + 1
            meter.add(loss.item(), batch, micro, data_s)
            last = time.perf_counter()
            if not boundary:
                continue
            state["step"] += 1
            metrics = meter.step(state, engine, scheduler)
            due = state["step"] % spec.checkpoint_every == 0 or state["step"] == total
            if due:
                _report_with_checkpoint(engine, state, metrics, rank)
            elif metrics is not None:
                ray.train.report(metrics)
        state["epoch"] += 1
        state["micro_in_epoch"] = 0
    meter.close()
    if rank == 0:
        _export(engine.module, tokenizer, spec)


def _all_ranks_have(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank (one tiny all-reduce)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _report_with_checkpoint(engine, state: dict, metrics: dict | None, rank: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        engine.save_checkpoint(folder, tag="ds")
        if rank == 0:
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(state, f)
        ray.train.report(
            {**(metrics or {}), "step": state["step"]}, checkpoint=Checkpoint.from_directory(folder)
        )


class _Meter:
    """Rank 0's metrics: console progress, CSV, TensorBoard; MFU from counted model FLOPs."""

    def __init__(self, spec: TrainSpec, plan: dict, rank: int):
        self.spec, self.plan, self.rank = spec, plan, rank
        self.window_loss, self.window_samples, self.window_tokens = [], 0, 0
        self.window_data_s = 0.0
        self.started = time.perf_counter()
        self.bar = self.csv = self.writer = None
        if rank != 0:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        # Rank 0 may run on any node: it writes the logs where it runs and, for an S3 run,
        # uploads them when the run ends.
        s3 = is_s3(spec.run_dir)
        self.local_dir = tempfile.mkdtemp(prefix="stf-logs-") if s3 else fs_path(spec.run_dir)
        os.makedirs(self.local_dir, exist_ok=True)
        path = os.path.join(self.local_dir, "metrics.csv")
        fresh = not os.path.exists(path)
        self.csv_file = open(path, "a", newline="")  # noqa: SIM115 (kept open for the run)
        self.csv = csv.writer(self.csv_file)
        if fresh:
            self.csv.writerow(METRIC_COLUMNS)
        self.writer = SummaryWriter(os.path.join(self.local_dir, "tensorboard"))
        self.bar = tqdm(total=plan["total_steps"], desc=f"{spec.stage} {spec.name}", unit="step")

    def add(self, loss: float, batch: dict, micro: int, data_s: float) -> None:
        self.window_data_s += data_s
        self.window_loss.append(loss)
        self.window_samples += micro
        self.window_tokens += int(batch["attention_mask"].sum())

    def step(self, state: dict, engine, scheduler) -> dict | None:
        world = self.plan["world_size"]
        state["samples"] += self.window_samples * world
        state["tokens"] += self.window_tokens * world
        if self.bar is not None:
            self.bar.n = state["step"]
            self.bar.refresh()
        if state["step"] % self.spec.log_every and state["step"] != self.plan["total_steps"]:
            return None
        elapsed = time.perf_counter() - self.started
        grad_norm = engine.get_global_grad_norm()
        tokens_per_s = self.window_tokens * world / elapsed
        flops = self.plan["flops_per_token"] * tokens_per_s / world
        peak = self.plan["peak_flops"]
        metrics = {
            "step": state["step"],
            "epoch": state["epoch"],
            "loss": sum(self.window_loss) / max(len(self.window_loss), 1),
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "samples_per_s": self.window_samples * world / elapsed,
            "tokens_per_s": tokens_per_s,
            "mfu": flops / peak if peak else float("nan"),
            "memory_gb": _memory_gb(),
            "data_wait": self.window_data_s / elapsed,  # share of the time spent waiting for data
        }
        self.window_loss, self.window_samples, self.window_tokens = [], 0, 0
        self.window_data_s = 0.0
        self.started = time.perf_counter()
        if self.rank == 0:
            self.csv.writerow([metrics[c] for c in METRIC_COLUMNS])
            self.csv_file.flush()
            for key, value in metrics.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, state["step"])
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
        return metrics

    def close(self) -> None:
        """Closes the logs; rank 0 draws the loss curve and uploads the logs of an S3 run."""
        if self.rank != 0:
            return
        self.bar.close()
        self.writer.close()
        self.csv_file.close()
        _plot_loss(self.local_dir)
        if is_s3(self.spec.run_dir):
            _upload(self.local_dir, self.spec.run_dir, self.spec.storage)


METRIC_COLUMNS = (
    "step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "mfu", "memory_gb",
    "data_wait",
)  # fmt: skip


def _memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    import psutil

    return psutil.Process().memory_info().rss / 1e9


def _export(module, tokenizer, spec: TrainSpec) -> None:
    """Writes the trained model as our model directory (safetensors, config, tokenizer with the
    vicuna_v1 chat template, image processor) to RUN/model, then the run's logs."""
    from stf_model import get_chat_template

    tokenizer.chat_template = get_chat_template("vicuna_v1")
    with tempfile.TemporaryDirectory() as folder:
        save_model_dir(module, tokenizer, folder)
        _upload(folder, join(spec.run_dir, "model"), spec.storage)


def _upload(local_dir: str, url: str, storage: StorageOptions) -> None:
    if not is_s3(url):
        target = fs_path(url)
        if os.path.exists(target):
            shutil.rmtree(target)
        shutil.copytree(local_dir, target)
        return
    fs = filesystem(url, storage)
    fs.put(local_dir.rstrip("/") + "/", fs_path(url).rstrip("/") + "/", recursive=True)


# ---------------------------------------------------------------------------------------------
# The driver.


def plan_run(spec: TrainSpec, config: STFConfig) -> tuple[dict[str, Any], list[str]]:
    """Checks the shards against the model and computes the step budget; returns the plan the
    workers receive and the shard URLs."""
    manifests = [(d, read_manifest(d, spec.storage)) for d in spec.data]
    urls, rows = [], 0
    tokenizer = build_tiny_tokenizer() if (spec.model == "tiny" and not spec.init_from) else None
    for folder, manifest in manifests:
        if manifest["image"]["size"] != config.vision_config.image_size:
            raise ValueError(
                f"{folder}: shards hold {manifest['image']['size']} px images, the model's tower "
                f"takes {config.vision_config.image_size}; preprocess with this model"
            )
        if manifest["tokenizer"]["image_token_id"] != config.image_token_index:
            raise ValueError(
                f"{folder}: <image> is token {manifest['tokenizer']['image_token_id']} in the "
                f"shards, {config.image_token_index} in the model; preprocess with this model"
            )
        if tokenizer is not None and manifest["tokenizer"]["fingerprint"] != tokenizer_fingerprint(
            tokenizer
        ):
            raise ValueError(f"{folder}: shards were tokenised with another tokenizer")
        urls += shard_urls(folder, manifest)
        rows += manifest["counts"]["written"]
    world = spec.scaling.num_workers
    micro, accum = spec.deepspeed.micro_batch_size, spec.deepspeed.gradient_accumulation
    micro_per_epoch = (rows // world) // micro // accum * accum
    if micro_per_epoch == 0:
        raise ValueError(
            f"{rows} rows are not enough for one step of {world} workers x micro batch {micro} x "
            f"accumulation {accum}"
        )
    steps_per_epoch = micro_per_epoch // accum
    total = steps_per_epoch * spec.epochs
    if spec.max_steps is not None:
        total = min(total, spec.max_steps)
    plan = {
        "rows": rows,
        "world_size": world,
        "micro_per_epoch": micro_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "image_token_id": config.image_token_index,
        "num_image_tokens": config.num_image_tokens,
        "pad_token_id": manifests[0][1]["tokenizer"]["pad_token_id"],
        "image_size": config.vision_config.image_size,
        "max_length": min(m["max_length"] for _, m in manifests),
        "flops_per_token": flops_per_token(spec, config),
        "peak_flops": (spec.peak_tflops or _detected_peak_tflops(spec) or 0) * 1e12,
    }
    return plan, urls


def flops_per_token(spec: TrainSpec, config: STFConfig) -> float:
    """Training FLOPs per LLM token: forward 2N, backward through the LLM 2N, plus 2N for weight
    gradients when the LLM trains (the 6N rule for finetuning, 4N for pretraining)."""
    text = config.text_config
    n = 12 * text.num_hidden_layers * text.hidden_size**2 + 2 * text.vocab_size * text.hidden_size
    return (6 if spec.stage == "finetune" else 4) * n


def _detected_peak_tflops(spec: TrainSpec) -> float | None:
    if not (spec.scaling.use_gpu and torch.cuda.is_available()):
        return None
    name = torch.cuda.get_device_name(0)
    # Dense bf16 tensor-core peaks from the vendors' data sheets.
    for key, tflops in (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0)):
        if key in name:
            return tflops
    return None


def run(spec: TrainSpec) -> dict[str, Any]:
    """Trains and exports; returns a summary (final metrics, checkpoint, model directory)."""
    config = model_config(spec)
    plan, urls = plan_run(spec, config)
    preflight(spec, config)
    init_ray()
    fs = filesystem(spec.run_dir, spec.storage)
    fs.makedirs(fs_path(spec.run_dir), exist_ok=True)
    fs.pipe_file(fs_path(join(spec.run_dir, "spec.yaml")), yaml.safe_dump(spec.resolved()).encode())

    # Reading shards reserves no CPU: the workers hold theirs, and Ray Train leaves Ray Data no
    # budget on a cluster the workers fill (a 1-CPU read would wait forever on a 2-CPU machine).
    dataset = ray.data.read_datasource(ShardsDatasource(urls, spec.storage), num_cpus=0)
    resources = spec.scaling.resources_per_worker
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec, "plan": plan},
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=spec.name,
            storage_path=fs_path(spec.storage_path),
            storage_filesystem=arrow_filesystem(spec.storage_path, spec.storage),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.keep_checkpoints),
            failure_config=FailureConfig(max_failures=spec.max_failures),
        ),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    return {
        "metrics": result.metrics,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "model": join(spec.run_dir, "model"),
        "plan": plan,
    }


def _plot_loss(log_dir: str) -> None:
    path = os.path.join(log_dir, "metrics.csv")
    if not os.path.exists(path):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(log_dir, "loss.png"), dpi=100)
    plt.close(fig)
