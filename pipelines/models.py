"""The one loader of configs, tokenizers and models for every job.

A model reference is a preset name (only ``tiny`` is random and local; the 7B presets are shapes
without weights) or a model directory, local or ``s3://`` (copied once into the local cache).
Preprocessing reads a reference's config and tokenizer, training its model and tokenizer, serving
and batch inference a generator on a device; all of them go through here.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pipelines.errors import InputError
from pipelines.model_folder import SMALL_FILES, local_model_folder
from pipelines.spec import Device, Dtype, InferenceModel, StorageOptions
from pipelines.storage import local_copy, read_json
from stf_model import (
    PRESETS,
    STFConfig,
    STFForConditionalGeneration,
    build_tiny,
    build_tiny_tokenizer,
    load_model_dir,
    preset_config,
)
from stf_model.generation import ChatGenerator
from stf_model.lora import check_base, load_adapter

log = logging.getLogger(__name__)


def _tiny_only(ref: str) -> None:
    if ref != "tiny":
        raise InputError(
            f"model {ref!r}: presets other than 'tiny' have no local weights or tokenizer; "
            "point the spec at a model directory (`stf convert` writes one)"
        )


def load_config(ref: str, storage: StorageOptions, overrides: dict[str, Any] | None = None):
    """The model's config, without weights: a preset (with ``overrides``) or a directory's."""
    if ref in PRESETS:
        return preset_config(ref, **(overrides or {}))
    folder = local_model_folder(ref, storage, ("*.json",))
    model_type = (read_json(os.path.join(folder, "config.json"), storage) or {}).get("model_type")
    if model_type != STFConfig.model_type:
        raise InputError(
            f"{ref} is not a LLaVA-STF model directory (its config.json says model_type "
            f"{model_type!r}): build one from a base LLM and tower with `stf init`, or convert a "
            "published checkpoint with `stf convert`"
        )
    return STFConfig.from_pretrained(folder)


def load_tokenizer(ref: str, storage: StorageOptions) -> PreTrainedTokenizerBase:
    """The model's tokenizer: ``tiny``'s built-in one or the directory's."""
    if ref in PRESETS:
        _tiny_only(ref)
        return build_tiny_tokenizer()
    return AutoTokenizer.from_pretrained(local_model_folder(ref, storage, SMALL_FILES))


def load_model(
    ref: str,
    storage: StorageOptions,
    *,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    quantization: Any = None,
    device: torch.device | None = None,
) -> tuple[STFForConditionalGeneration, PreTrainedTokenizerBase]:
    """Model and tokenizer: ``tiny`` with random weights from ``seed`` (and ``overrides``), or a
    directory's safetensors; in ``dtype`` (default: as saved, fp32 for ``tiny``). A directory's
    weights may load quantized (``quantization``: transformers' config), then onto ``device``."""
    if ref in PRESETS:
        _tiny_only(ref)
        model, tokenizer = build_tiny(seed=seed, **(overrides or {}))
        return (model.to(dtype) if dtype is not None else model), tokenizer
    local = local_model_folder(ref, storage)
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if quantization is not None:  # bitsandbytes quantizes as it places the weights
        kwargs.update(quantization_config=quantization, device_map={"": device or "cpu"})
    model = STFForConditionalGeneration.from_pretrained(local, use_safetensors=True, **kwargs)
    return model, AutoTokenizer.from_pretrained(local)


def resolve_device(device: Device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("model.device is 'cuda' but this process sees no GPU (num_gpus set?)")
    return torch.device(device)


def resolve_dtype(dtype: Dtype, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_generator(options: InferenceModel, storage: StorageOptions) -> ChatGenerator:
    """A model directory loaded onto its device, safetensors only, wrapped for batched chat
    generation (serve and infer); with ``options.adapter``, its LoRA adapter merged in, after
    checking that the adapter was trained from this directory."""
    local = local_model_folder(options.path, storage)
    adapter = None
    if options.adapter is not None:
        adapter = local_copy(options.adapter, storage, ("*.json", "*.safetensors"))
        check_base(adapter, local, options.path)
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    model, processor = load_model_dir(local, dtype=dtype)
    if adapter is not None:
        model = load_adapter(model, adapter)
    log.info(
        "loaded %s%s on %s as %s",
        options.path,
        f" + {options.adapter}" if adapter else "",
        device,
        dtype,
    )
    return ChatGenerator(model.to(device), processor)
