"""LoRA on an STF model's language model, through PEFT.

:func:`add_lora` adapts the LLM's linear layers (every one by default: ``q/k/v/o/gate/up/down``
for Llama and Qwen2, whatever the family names them), never the vision tower or the LM head;
the parts that train in full beside it (MBTF + projector, and the tower when it trains) are PEFT's
``modules_to_save``, so PEFT saves them with the adapter. :func:`merged` folds the adapters into
the weights (W + alpha/r * B @ A). An adapter folder is PEFT's own (``adapter_config.json``,
``adapter_model.safetensors``) plus ``stf_base.json``, a fingerprint of the model it adapts, which
:func:`load_adapter` checks before loading any weight. For QLoRA, :func:`quantization_config` has
transformers load the LLM's linear layers in 4 bits through bitsandbytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Sequence

import torch

from stf_model.errors import ModelInputError
from stf_model.modeling import STFForConditionalGeneration

# bitsandbytes' CPU backend (which PEFT imports whenever bitsandbytes is installed) warns, on
# CPUs with AVX512-BF16, that it could not fetch an optional faster 4-bit kernel from the
# Hugging Face Hub; the kernel it falls back to is its own. The warning is that module's only log.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

BASE_FILE = "stf_base.json"
# What QLoRA leaves in full precision, as transformers matches module names (by prefix): all
# but the language model's linear layers.
NOT_QUANTIZED = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
# Bytes per parameter of a 4-bit layer: half a byte, an 8-bit scale per 64 weights and, with
# double quantization, an fp32 scale per 256 of those (QLoRA's paper, section 3).
QUANTIZED_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# Bytes of each safetensors file's tensor data read into the fingerprint, at each end.
SAMPLED_BYTES = 1 << 16


def linear_names(model: STFForConditionalGeneration) -> list[str]:
    """The names the language model's linear layers end with (its LoRA targets)."""
    language = model.model.language_model
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in language.named_modules()
            if isinstance(m, torch.nn.Linear)
        }
    )


def lora_config(
    model: STFForConditionalGeneration,
    r: int,
    alpha: float,
    dropout: float,
    targets: Sequence[str] | None = None,
    full: Sequence[str] = ("multi_modal_projector",),
):
    """PEFT's config: LoRA on the language model's layers named ``targets`` (default: all its
    linear layers), ``full`` (module names) trained and saved whole beside the adapters."""
    from peft import LoraConfig

    names = linear_names(model)
    chosen = list(targets or names)
    unknown = [t for t in chosen if t not in names]
    if unknown:
        raise ModelInputError(
            f"lora.target_modules {unknown} name no linear layer of the language model; its "
            f"linear layers are {names}"
        )
    pattern = r".*\.language_model\..*\.(" + "|".join(map(re.escape, chosen)) + ")"
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=pattern,
        modules_to_save=list(full),
    )


def quantization_config(kind: str, dtype: torch.dtype):
    """transformers' bitsandbytes config for QLoRA: the language model's linear layers stored in
    4 bits (``kind``: ``nf4`` or ``fp4``, double-quantized) and computed in ``dtype``; the tower,
    MBTF + projector and the LM head stay in ``dtype``."""
    import importlib.util

    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelInputError("lora.quantize needs bitsandbytes: pip install 'bitsandbytes>=0.50'")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=torch.uint8,
        llm_int8_skip_modules=NOT_QUANTIZED,
    )


def add_lora(model: STFForConditionalGeneration, config):
    """The model with LoRA adapters (a ``peft.PeftModel``): only adapters and ``full`` train."""
    from peft import get_peft_model

    return get_peft_model(model, config)


def merged(model) -> STFForConditionalGeneration:
    """The adapted model with its adapters folded into the weights (the wrapper is gone)."""
    return model.merge_and_unload()


def fingerprint(path: str | os.PathLike) -> str:
    """A model directory's identity without reading its weights whole: its config, and per
    safetensors file the header (names, shapes, dtypes) and the first and last bytes of the
    tensor data. Two checkpoints of one architecture differ in those bytes."""
    digest = hashlib.sha256()
    with open(os.path.join(path, "config.json"), "rb") as f:
        config = json.load(f)
    config.pop("transformers_version", None)
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    digest.update(json.dumps(config, sort_keys=True).encode())
    for name in sorted(n for n in os.listdir(path) if n.endswith(".safetensors")):
        with open(os.path.join(path, name), "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            digest.update(f.read(size))
            digest.update(f.read(SAMPLED_BYTES))
            f.seek(max(8 + size, os.fstat(f.fileno()).st_size - SAMPLED_BYTES))
            digest.update(f.read())
    return digest.hexdigest()


def save_adapter(model, path: str | os.PathLike, base: str | os.PathLike, label: str) -> None:
    """PEFT's adapter folder (adapters and ``modules_to_save``), with the fingerprint of the
    model directory ``base`` it adapts (``label``: how to name that model in messages)."""
    model.save_pretrained(path)
    with open(os.path.join(path, BASE_FILE), "w") as f:
        json.dump({"base": label, "fingerprint": fingerprint(base)}, f, indent=2)


def check_base(adapter: str | os.PathLike, base: str | os.PathLike, label: str) -> None:
    """Refuses an adapter trained on another model than the directory ``base``."""
    try:
        with open(os.path.join(adapter, BASE_FILE)) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        raise ModelInputError(
            f"adapter {adapter}: no {BASE_FILE}; it was not written by `stf train` with lora, so "
            "its base cannot be checked"
        ) from None
    if recorded.get("fingerprint") != fingerprint(base):
        raise ModelInputError(
            f"adapter {adapter} adapts {recorded.get('base')!r}, not {label!r} (another model's "
            "weights); give the model directory it was trained from"
        )


def load_adapter(model: STFForConditionalGeneration, adapter: str | os.PathLike):
    """``model`` with the adapter folder's adapters and full modules, merged."""
    from peft import PeftModel

    return merged(PeftModel.from_pretrained(model, adapter))
