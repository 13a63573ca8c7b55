"""Loading an exported model directory (local or s3://) for inference, shared by serve and infer."""

from __future__ import annotations

import logging
import os
from typing import Literal

import torch
from pydantic import Field

from pipelines.spec import JobSpec, StorageOptions
from pipelines.storage import Location, is_s3, local_copy
from stf_model.generation import ChatGenerator

log = logging.getLogger(__name__)

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]

# What a model directory needs at inference time: weights as safetensors only (no pickles).
MODEL_FILES = ("*.json", "*.safetensors", "*.jinja", "*.model", "*.txt")


class InferenceModel(JobSpec):
    """Which model to run, and on what."""

    path: Location = Field(description="exported model directory (stf train's RUN/model), or s3://")
    dtype: Dtype = Field(
        "auto", description="weights dtype; auto = bfloat16 on a GPU that supports it, else float32"
    )
    device: Device = Field("auto", description="auto = cuda when this process has a GPU")


def resolve_device(device: Device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device is 'cuda' but this process sees no GPU (num_gpus set?)")
    return torch.device(device)


def resolve_dtype(dtype: Dtype, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_generator(options: InferenceModel, storage: StorageOptions) -> ChatGenerator:
    """The model directory (copied from S3 to the local cache when needed) loaded onto its device,
    safetensors only, wrapped for batched chat generation."""
    from stf_model import load_model_dir

    local = local_copy(options.path, storage, MODEL_FILES) if is_s3(options.path) else options.path
    if not os.path.isfile(os.path.join(local, "config.json")):
        raise FileNotFoundError(f"{options.path} is not a model directory (no config.json)")
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    model, processor = load_model_dir(local, dtype=dtype)
    log.info("loaded %s on %s as %s", options.path, device, dtype)
    return ChatGenerator(model.to(device), processor)
