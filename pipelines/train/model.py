"""The model a training run trains: built from the spec (for QLoRA with the LLM in 4 bits),
adapted with LoRA (``lora:`` in the spec), its learning rates, and what the run writes at its end,
``RUN/model`` (the adapters merged in) and ``RUN/adapter`` in PEFT's format. Without ``lora``
each function leaves the full-finetune path as it is."""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from pipelines.model_folder import local_model_folder
from pipelines.models import load_model
from pipelines.storage import upload_dir
from pipelines.train.arithmetic import trainable_parts
from pipelines.train.run_folder import RunFolder
from pipelines.train.spec import TrainSpec
from stf_model import STFForConditionalGeneration, save_model_dir
from stf_model.lora import (
    add_lora,
    load_adapter,
    lora_config,
    merged,
    quantization_config,
    save_adapter,
)

# The parts that train in full beside the adapters, by their module names (PEFT's
# modules_to_save: PEFT trains a copy of each and saves it with the adapter).
FULL_MODULES = {"projector": "multi_modal_projector", "vision_tower": "vision_tower"}


def build_model(
    spec: TrainSpec, device: torch.device | None = None, quantize: bool = True
) -> tuple[STFForConditionalGeneration, Any]:
    """The model and tokenizer a run starts from: ``init_from``, else the model directory, else
    the ``tiny`` preset with random weights from ``seed`` (and ``model_overrides``). Weights load
    in the training precision (bf16 stays bf16: no fp32 copy per worker); DeepSpeed keeps the
    fp32 master copy of the trainable part only. With ``lora.quantize`` (and ``quantize``) the
    LLM's linear layers load in 4 bits onto ``device``."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.deepspeed.precision)
    dtype = dtype or torch.float32
    kind = spec.lora.quantize if spec.lora is not None and quantize else None
    return load_model(
        spec.start_from,
        spec.storage,
        overrides=spec.model_overrides,
        seed=spec.seed,
        dtype=dtype,
        quantization=quantization_config(kind, dtype) if kind else None,
        device=device,
    )


def adapt(model: STFForConditionalGeneration, spec: TrainSpec) -> Any:
    """The model to train: itself, or with ``spec.lora`` LoRA on the LLM (a ``PeftModel``)."""
    if spec.lora is None:
        return model
    full = [FULL_MODULES[p] for p in trainable_parts(spec) if p in FULL_MODULES]
    lora = spec.lora
    config = lora_config(model, lora.r, lora.alpha, lora.dropout, lora.target_modules, full)
    # PEFT draws the adapters' A matrices from torch's global generator, which a worker process
    # does not seed: from the run's seed, so that a run and its re-run start alike.
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        adapted = add_lora(model, config)
    for name, module in adapted.named_modules():
        # PEFT trains its copy of the tower whole; as without LoRA, the blocks whose output
        # never reaches the projector stay frozen (they would get no gradient).
        if name.endswith("vision_tower.modules_to_save.default"):
            for unused in model.unused_tower_modules(module):
                unused.requires_grad_(False)
    return adapted


def parameter_groups(model: Any, spec: TrainSpec) -> list[dict]:
    """The trainable parameters by learning rate: the adapters at ``lora.lr``, the vision tower
    at ``vision_tower_lr``, the rest (MBTF + projector, the LLM in a full finetune) at ``lr``.
    Frozen parameters never enter the optimizer."""
    base = model.get_base_model() if spec.lora is not None else model  # PEFT's wrapper: inside
    tower = {id(p) for p in base.model.vision_tower.parameters()}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adapters = [p for n, p in named if "lora_" in n]
    in_tower = [p for n, p in named if id(p) in tower and "lora_" not in n]
    rest = [p for n, p in named if id(p) not in tower and "lora_" not in n]
    groups = [
        {"params": rest, "lr": spec.lr},
        {"params": in_tower, "lr": spec.vision_tower_lr},
        {"params": adapters, "lr": spec.lora.lr if spec.lora else spec.lr},
    ]
    return [g for g in groups if g["params"]]


def export(module: torch.nn.Module, tokenizer, spec: TrainSpec) -> None:
    """Writes ``RUN/model`` (a model directory; LoRA merged in) and, for a LoRA run,
    ``RUN/adapter`` (PEFT's adapter with the full modules and the base's fingerprint)."""
    if spec.lora is not None:
        with tempfile.TemporaryDirectory() as folder:
            base = local_model_folder(spec.start_from, spec.storage)
            save_adapter(module, folder, base, spec.start_from)
            upload_dir(folder, RunFolder(spec.run_dir, spec.storage).adapter, spec.storage)
            if spec.lora.quantize is None:
                module = merged(module)
            else:  # QLoRA: into the starting weights, not their 4-bit approximation
                module = load_adapter(build_model(spec, quantize=False)[0], folder)
    with tempfile.TemporaryDirectory() as folder:
        save_model_dir(module, tokenizer, folder)
        upload_dir(folder, RunFolder(spec.run_dir, spec.storage).model, spec.storage)
