"""Training arithmetic, no Ray: what trains, the pre-flight memory estimate, FLOPs per token, and
the peak FLOP/s of known GPUs (for MFU)."""

from __future__ import annotations

import logging

import torch
from pydantic import BaseModel, ConfigDict

from pipelines.errors import InputError
from pipelines.train.spec import TrainSpec
from stf_model import STFConfig, STFForConditionalGeneration
from stf_model.modeling import STAGE_PARTS

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets; matched in device names.
PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0))


def trainable_parts(spec: TrainSpec) -> tuple[str, ...]:
    """What trains: the spec's ``trainable`` as given, else the stage's parts (the paper's)."""
    if spec.trainable is not None:
        return tuple(dict.fromkeys(spec.trainable))
    return STAGE_PARTS[spec.stage]


class MemoryEstimate(BaseModel):
    """Per-worker memory of a run, in GB, by kind."""

    model_config = ConfigDict(frozen=True)

    trainable_params: int
    frozen_params: int
    model_states_gb: float
    frozen_weights_gb: float
    activations_gb: float

    @property
    def total_gb(self) -> float:
        return self.model_states_gb + self.frozen_weights_gb + self.activations_gb


def memory_estimate(spec: TrainSpec, config: STFConfig) -> MemoryEstimate:
    """Trainable model states by ZeRO stage, frozen weights and activations per worker.

    Model states follow the ZeRO paper: in mixed precision 2 B weights + 2 B gradients + 12 B
    Adam states (fp32 master weights and two moments) per trainable parameter; ZeRO-1 shards the
    12 B over the workers, ZeRO-2 the gradients too. In fp32: 4 B weights + 4 B gradients + 8 B
    moments. Parameters are counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = STFForConditionalGeneration(config)
    counts = model.set_trainable_parts(trainable_parts(spec))
    trainable, frozen = counts["trainable"], counts["frozen"]
    n = spec.scaling.num_workers
    mixed = spec.deepspeed.precision != "fp32"
    zero1 = spec.deepspeed.zero_stage == 1
    if mixed:
        states = 4 * trainable + 12 * trainable / n if zero1 else 2 * trainable + 14 * trainable / n
    else:
        states = 8 * trainable + 8 * trainable / n if zero1 else 4 * trainable + 12 * trainable / n
    text = config.text_config
    seq = min(text.max_position_embeddings, 2048)
    per_layer = seq * spec.deepspeed.micro_batch_size * text.hidden_size * (2 if mixed else 4)
    # Megatron's estimate: ~34 values per token per hidden unit per layer without
    # recomputation, ~1 (the layer input) with gradient checkpointing.
    factor = 1 if spec.deepspeed.gradient_checkpointing else 17
    return MemoryEstimate(
        trainable_params=trainable,
        frozen_params=frozen,
        model_states_gb=states / 1e9,
        frozen_weights_gb=(2 if mixed else 4) * frozen / 1e9,
        activations_gb=per_layer * factor * text.num_hidden_layers / 1e9,
    )


def preflight(spec: TrainSpec, config: STFConfig) -> MemoryEstimate:
    """Logs the estimate and refuses a run over the budget (unless ``preflight.enforce`` is off)."""
    estimate = memory_estimate(spec, config)
    budget = spec.preflight.memory_gb
    if budget is None and spec.scaling.use_gpu and torch.cuda.is_available():
        budget = torch.cuda.get_device_properties(0).total_memory / 1e9
    line = (
        f"pre-flight: ZeRO-{spec.deepspeed.zero_stage} {spec.deepspeed.precision} on "
        f"{spec.scaling.num_workers} workers, {estimate.trainable_params / 1e6:.1f}M trainable "
        f"+ {estimate.frozen_params / 1e6:.1f}M frozen params: per worker about "
        f"{estimate.model_states_gb:.2f} GB model states + {estimate.frozen_weights_gb:.2f} "
        f"GB frozen weights + {estimate.activations_gb:.2f} GB activations = "
        f"{estimate.total_gb:.2f} GB"
    )
    log.info("%s (budget: %s)", line, f"{budget:.1f} GB" if budget else "none")
    if budget is not None and estimate.total_gb > budget:
        message = (
            f"{line} > budget {budget:.1f} GB. Use more workers, ZeRO-2, gradient "
            "checkpointing or a smaller micro_batch_size; or set preflight.enforce: false"
        )
        if spec.preflight.enforce:
            raise InputError(message)
        log.warning(message)
    return estimate


def flops_per_token(spec: TrainSpec, config: STFConfig) -> float:
    """Training FLOPs per LLM token: forward 2N, backward through the LLM 2N, plus 2N for weight
    gradients when the LLM trains (the 6N rule for finetuning, 4N for pretraining)."""
    text = config.text_config
    n = 12 * text.num_hidden_layers * text.hidden_size**2 + 2 * text.vocab_size * text.hidden_size
    return (6 if spec.stage == "finetune" else 4) * n


def detected_peak_tflops(spec: TrainSpec) -> float | None:
    """The bf16 peak of this machine's GPU when it is a known one (None on CPU)."""
    if not (spec.scaling.use_gpu and torch.cuda.is_available()):
        return None
    name = torch.cuda.get_device_name(0)
    return next((tflops for key, tflops in PEAK_TFLOPS if key in name), None)
