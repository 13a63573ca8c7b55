"""The training job's spec (no Ray, no model imports)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from pipelines.spec import (
    JobSpec,
    Location,
    Locations,
    ModelRef,
    StorageOptions,
)
from pipelines.storage import join
from stf_model.constants import PRESET_NAMES

# LLaVA-1.5's learning rates per stage (docs/design.md, section 4).
STAGE_LR = {"pretrain": 1e-3, "finetune": 2e-5}
# What trains per stage when ``trainable`` is not given (the paper's; stf_model.modeling has the
# same table, which a test keeps equal: the spec imports no model code).
STAGE_PARTS = {"pretrain": ("projector",), "finetune": ("projector", "llm")}


class ScalingOptions(JobSpec):
    num_workers: PositiveInt = Field(2, description="data-parallel workers (one per GPU)")
    use_gpu: bool = Field(False, description="one GPU per worker, nccl; otherwise CPU and gloo")
    resources_per_worker: dict[str, float] | None = Field(
        None, description='e.g. {"CPU": 8, "GPU": 1}; default: 1 CPU (+1 GPU with use_gpu)'
    )
    schedule_timeout_s: PositiveFloat = Field(
        1800,
        description="on a cluster, seconds to wait for the workers' resources before giving up",
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
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.999,
    )
    eps: PositiveFloat = 1e-8
    vision_tower_lr: PositiveFloat | None = Field(
        None, description="learning rate of the vision tower when it trains (default: lr / 10)"
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear warm-up share of the steps")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="after warm-up")


class LoraOptions(JobSpec):
    """LoRA on the language model (PEFT): the adapters train at ``lr``; MBTF + projector (and the
    tower, when it trains) train in full at ``optimizer.lr``, as LLaVA's ``finetune_lora.sh``."""

    r: PositiveInt = Field(8, description="the adapters' rank")
    alpha: PositiveFloat = Field(16, description="the adapters' scale is alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="the LLM's linear layers to adapt, by name (default: all of them: q/k/v/o/"
        "gate/up/down for Llama and Qwen2); never the vision tower or the LM head",
    )
    lr: PositiveFloat = Field(2e-4, description="the adapters' peak learning rate")
    quantize: Literal["nf4", "fp4"] | None = Field(
        None,
        description="QLoRA: hold the LLM's linear layers in 4 bits (bitsandbytes, double-"
        "quantized; nf4 as the QLoRA paper) under the adapters; NAME/model merges the adapters "
        "into the starting model's full-precision weights",
    )


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
    trainable: list[Literal["projector", "llm", "vision_tower"]] | None = Field(
        None,
        description="parts that train (default per stage: pretrain = projector; finetune = "
        "projector + llm); add vision_tower to unfreeze the tower (optimizer.vision_tower_lr)",
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
    shuffle_buffer: NonNegativeInt = Field(
        1024,
        description="rows each worker shuffles through per epoch, a new order every epoch (0: "
        "shard order); a buffered row holds its uint8 pixels (336 px: 0.34 MB)",
    )
    cache_data_gb: NonNegativeFloat = Field(
        2.0,
        description="training data at most this large once decoded (its pixels and token ids, "
        "as the shard manifests count them) is read once into Ray's object store, and every "
        "epoch reads it from there; larger data is read from the shard files every epoch (0: "
        "never cache)",
    )
    lora: LoraOptions | None = Field(
        None, description="LoRA on the LLM instead of training all of it (absent: full finetune)"
    )
    preflight: PreflightOptions = Field(default_factory=PreflightOptions)
    storage: StorageOptions = Field(default_factory=StorageOptions)

    @model_validator(mode="after")
    def _precision_needs_gpu(self) -> TrainSpec:
        if self.deepspeed.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError(
                "deepspeed.precision fp16 needs scaling.use_gpu: true (use bf16 or fp32 on CPU)"
            )
        return self

    @model_validator(mode="after")
    def _overrides_need_a_preset(self) -> TrainSpec:
        if self.model_overrides and (self.init_from is not None or self.model not in PRESET_NAMES):
            raise ValueError(
                "model_overrides change a preset's shape; they cannot apply to the saved weights "
                "of a model directory or init_from (drop model_overrides, or start from a preset)"
            )
        return self

    @model_validator(mode="after")
    def _lora_adapts_a_trained_llm(self) -> TrainSpec:
        if self.lora is None:
            return self
        parts = self.trainable if self.trainable is not None else STAGE_PARTS[self.stage]
        if "llm" not in parts:
            raise ValueError(
                f"lora adapts the LLM, which this run does not train (stage {self.stage}, "
                f"trainable {list(parts)}): drop lora, or train the llm"
            )
        if self.start_from in PRESET_NAMES:
            raise ValueError(
                f"lora adapts a model directory (model or init_from), not the preset "
                f"{self.start_from!r}: its adapter must name the weights it was trained on"
            )
        return self

    @property
    def run_dir(self) -> str:
        return join(self.storage_path, self.name)

    @property
    def start_from(self) -> str:
        """Where the weights come from: ``init_from`` (a previous stage) or ``model`` (a preset
        or a model directory)."""
        return self.init_from or self.model

    @property
    def lr(self) -> float:
        return self.optimizer.lr or STAGE_LR[self.stage]

    @property
    def vision_tower_lr(self) -> float:
        return self.optimizer.vision_tower_lr or self.lr / 10
