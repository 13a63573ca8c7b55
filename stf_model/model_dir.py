"""A complete model directory: weights (safetensors) + config + tokenizer with its chat template +
image processor, as written by training and read by serving and batch inference."""

from __future__ import annotations

import os

from transformers import AutoProcessor, LlavaProcessor, PreTrainedTokenizerBase

from stf_model.modeling import STFForConditionalGeneration
from stf_model.processing import Aspect, build_processor


def save_model_dir(
    model: STFForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike,
    aspect: Aspect = "pad",
) -> LlavaProcessor:
    """Writes model, tokenizer, chat template and image processor to ``path``; returns the processor."""
    model.save_pretrained(path, safe_serialization=True)
    processor = build_processor(model.config, tokenizer, aspect=aspect)
    processor.save_pretrained(path)
    return processor


def load_model_dir(
    path: str | os.PathLike, **model_kwargs
) -> tuple[STFForConditionalGeneration, LlavaProcessor]:
    """Reads a directory written by :func:`save_model_dir` (safetensors only)."""
    model = STFForConditionalGeneration.from_pretrained(path, use_safetensors=True, **model_kwargs)
    processor = AutoProcessor.from_pretrained(path)
    return model, processor
