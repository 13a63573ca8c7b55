"""Training arithmetic, no Ray: what trains, the pre-flight memory estimate, FLOPs per token, and
the peak FLOP/s of known GPUs (for MFU)."""

from __future__ import annotations

import logging

import torch
from pydantic import BaseModel, ConfigDict

from pipelines.errors import InputError
from pipelines.train.spec import TrainSpec
from stf_model import STFConfig, STFForConditionalGeneration
from stf_model.lora import QUANTIZED_BYTES, lora_config
from stf_model.modeling import STAGE_PARTS

log = logging.getLogger(__name__)

# Bytes per trainable parameter as (kept whole on every worker, partitioned over the workers),
# by (mixed precision, ZeRO stage): the model's weights (2 or 4 B) and gradients (whole under
# ZeRO-1), and per partition the fp32 master copy (4), its fp32 gradient (4), Adam's moments (8)
# and ZeRO's flattened gradient copy (2 or 4). On one CPU worker ZeRO-2 measured 28 B in fp32,
# as counted, and 24 B in mixed precision, 2 B over the count (more transient bf16 copies at the
# step): that share is in the mixed rows' partitioned bytes.
STATE_BYTES = {
    (True, 1): (4, 18),
    (True, 2): (2, 22),
    (False, 1): (8, 20),
    (False, 2): (4, 24),
}
# ZeRO's gradient reduction and all-gather buckets, in elements (DeepSpeed's defaults, set in
# the DeepSpeed config so that the estimate and the run agree).
BUCKET_ELEMENTS = 500_000_000
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
    buffers_gb: float  # ZeRO's gradient reduction bucket

    @property
    def total_gb(self) -> float:
        return self.model_states_gb + self.frozen_weights_gb + self.activations_gb + self.buffers_gb


def memory_estimate(
    spec: TrainSpec, config: STFConfig, seq_len: int | None = None
) -> MemoryEstimate:
    """Trainable model states by ZeRO stage, frozen weights and activations per worker.

    Model states as DeepSpeed's ZeRO-1/2 optimizer keeps them, in bytes per trainable parameter
    (:data:`STATE_BYTES`): the model's own weights and gradients, and, partitioned over the N
    workers, an fp32 master copy, its fp32 gradient, Adam's two moments and the flattened copy of
    the gradients ZeRO makes at each step. Measured with DeepSpeed 0.19 on CPU (bench/
    train_scale.py, docs/benchmarks.md): 24 B per parameter in mixed precision on one worker,
    where the ZeRO paper's count is 16. Activations: the layer inputs that gradient
    checkpointing keeps (Megatron: ~34 values per token per hidden unit per layer without it)
    and the logits over the vocabulary, for micro-batches of ``seq_len`` tokens (default: the
    LLM's context, capped at 2048). QLoRA's frozen linear layers take :data:`QUANTIZED_BYTES`
    per weight. Parameters are counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = STFForConditionalGeneration(config)
    if spec.lora is None:
        counts = model.set_trainable_parts(trainable_parts(spec))
        trainable, frozen = counts["trainable"], counts["frozen"]
    else:
        trainable, frozen = lora_counts(model, spec)
    mixed = spec.deepspeed.precision != "fp32"
    whole, partitioned = STATE_BYTES[(mixed, spec.deepspeed.zero_stage)]
    states = whole * trainable + partitioned * trainable / spec.scaling.num_workers
    text = config.text_config
    seq = seq_len or min(text.max_position_embeddings, 2048)  # the longest batch row
    width = 2 if mixed else 4  # bytes of a weight or an activation value
    tokens = seq * spec.deepspeed.micro_batch_size
    factor = 1 if spec.deepspeed.gradient_checkpointing else 17
    layers = tokens * text.hidden_size * width * factor * text.num_hidden_layers
    logits = 3 * tokens * text.vocab_size * 4  # fp32 logits, their softmax and its gradient
    frozen_bytes = width * frozen
    if spec.lora is not None and spec.lora.quantize is not None:  # QLoRA's 4-bit linear layers
        quantized = sum(
            m.weight.numel()
            for m in model.model.language_model.modules()
            if isinstance(m, torch.nn.Linear)
        )
        frozen_bytes -= (width - QUANTIZED_BYTES) * quantized
    return MemoryEstimate(
        trainable_params=trainable,
        frozen_params=frozen,
        model_states_gb=states / 1e9,
        frozen_weights_gb=frozen_bytes / 1e9,
        activations_gb=(layers + logits) / 1e9,
        buffers_gb=min(BUCKET_ELEMENTS, trainable) * width / 1e9,
    )


def lora_counts(model: STFForConditionalGeneration, spec: TrainSpec) -> tuple[int, int]:
    """(trainable, frozen) parameters of a LoRA run: r x (inputs + outputs) per adapted linear
    layer, and the parts trained in full, whose frozen originals PEFT keeps beside the copies it
    trains. Refuses target names that match no linear layer of the LLM (naming those there are)."""
    lora = spec.lora
    lora_config(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)  # checks the names
    full = model.set_trainable_parts([p for p in trainable_parts(spec) if p != "llm"])
    targets = set(lora.target_modules or ())
    adapters = sum(
        lora.r * (m.in_features + m.out_features)
        for name, m in model.model.language_model.named_modules()
        if isinstance(m, torch.nn.Linear) and (not targets or name.rsplit(".", 1)[-1] in targets)
    )
    return full["trainable"] + adapters, full["frozen"] + full["trainable"]


def preflight(spec: TrainSpec, config: STFConfig, seq_len: int | None = None) -> MemoryEstimate:
    """Logs the estimate and refuses a run over the budget (unless ``preflight.enforce`` is off);
    ``seq_len`` is the longest sequence a batch can hold (the plan's)."""
    estimate = memory_estimate(spec, config, seq_len)
    budget = spec.preflight.memory_gb
    if budget is None and spec.scaling.use_gpu and torch.cuda.is_available():
        budget = torch.cuda.get_device_properties(0).total_memory / 1e9
    line = (
        f"pre-flight: ZeRO-{spec.deepspeed.zero_stage} {spec.deepspeed.precision} on "
        f"{spec.scaling.num_workers} workers, {estimate.trainable_params / 1e6:.1f}M trainable "
        f"+ {estimate.frozen_params / 1e6:.1f}M frozen params: per worker about "
        f"{estimate.model_states_gb:.2f} GB model states + {estimate.frozen_weights_gb:.2f} "
        f"GB frozen weights + {estimate.activations_gb:.2f} GB activations + "
        f"{estimate.buffers_gb:.2f} GB buffers = {estimate.total_gb:.2f} GB"
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
    gradients when the LLM's own weights train (the 6N rule for finetuning, 4N for pretraining
    and LoRA, whose adapters' gradients are small)."""
    text = config.text_config
    n = 12 * text.num_hidden_layers * text.hidden_size**2 + 2 * text.vocab_size * text.hidden_size
    full_llm = "llm" in trainable_parts(spec) and spec.lora is None
    return (6 if full_llm else 4) * n


def detected_peak_tflops(spec: TrainSpec) -> float | None:
    """The bf16 peak of this machine's GPU when it is a known one (None on CPU)."""
    if not (spec.scaling.use_gpu and torch.cuda.is_available()):
        return None
    name = torch.cuda.get_device_name(0)
    return next((tflops for key, tflops in PEAK_TFLOPS if key in name), None)
