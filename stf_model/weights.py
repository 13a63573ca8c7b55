"""Building a model from tensors that already exist (a published checkpoint, pretrained parts)
without allocating a random copy first, and the tokenizer additions LLaVA makes.

The model is built on the meta device and the tensors are assigned to it, so a 7B model costs its
weights once in memory, not twice. Conversion of published checkpoints and assembly from
pretrained parts both go through here.
"""

from __future__ import annotations

import logging

import torch
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase

from stf_model.config import STFConfig
from stf_model.constants import IMAGE_TOKEN
from stf_model.errors import ModelInputError
from stf_model.modeling import STFForConditionalGeneration

logger = logging.getLogger(__name__)


def assign_weights(
    config: STFConfig, state: dict[str, torch.Tensor], dtype: torch.dtype, source: str
) -> STFForConditionalGeneration:
    """The model of ``config`` holding exactly ``state`` (cast to ``dtype``); every parameter
    must be given. ``source`` names where the tensors came from, for the error message."""
    with torch.device("meta"):
        model = STFForConditionalGeneration(config)
    expected = set(model.state_dict())
    # CLIP's position_ids is a buffer that some CLIP dumps omit and older ones (the 2022
    # pytorch_model.bin of clip-vit-large-patch14-336) store; it is recomputed, not learned.
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("position_ids")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelInputError(
            f"{source} does not match the model it describes: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
        )
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    except RuntimeError as err:  # size mismatches: the config (window, blocks, tower) is wrong
        raise ModelInputError(f"{source} does not match the model it describes: {err}") from err
    materialise_buffers(model, config)
    if config.get_text_config().tie_word_embeddings:
        model.tie_weights()  # one Parameter for both, as the LLM had it
    return model


def materialise_buffers(model: STFForConditionalGeneration, config: STFConfig) -> None:
    """Non-persistent buffers (rotary ``inv_freq``, the towers' ``position_ids``) are still on
    the meta device after ``assign=True`` loading: rebuild them on the CPU."""
    for module_name, module in list(model.named_modules()):
        for buf_name, buf in list(module.named_buffers(recurse=False)):
            if buf.device.type != "meta":
                continue
            if buf_name == "position_ids":
                module.register_buffer(
                    buf_name, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False
                )
            elif buf_name in ("inv_freq", "original_inv_freq"):
                fresh = type(module)(config=config.text_config)
                module.register_buffer(buf_name, getattr(fresh, buf_name), persistent=False)
            else:
                raise RuntimeError(f"cannot materialise buffer {module_name}.{buf_name}")


def add_image_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Adds ``<image>`` as one special token (text elsewhere tokenises as before) and, where the
    LLM has no pad token, uses its unknown token as LLaVA does for LLaMA (or, without one, its
    end-of-sequence token). Returns the same tokenizer."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        image = AddedToken(IMAGE_TOKEN, special=True, normalized=False, lstrip=False, rstrip=False)
        tokenizer.add_tokens([image], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def grow_embeddings(
    model: STFForConditionalGeneration, vocab_size: int, pad_to_multiple_of: int | None = None
) -> None:
    """Grows the input embeddings (and an untied LM head) to ``vocab_size`` rows, rounded up to
    ``pad_to_multiple_of``; each new row is the mean of the existing ones. Nothing changes when
    the matrices are large enough already (LLMs often reserve rows)."""
    embeddings = model.get_input_embeddings().weight
    old = embeddings.shape[0]
    if pad_to_multiple_of:
        vocab_size = -(-vocab_size // pad_to_multiple_of) * pad_to_multiple_of
    if vocab_size <= old:
        return
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == embeddings.data_ptr()
    means = [embeddings.float().mean(dim=0)] + ([] if tied else [head.float().mean(dim=0)])
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    grown = [model.get_input_embeddings().weight]
    grown += [] if tied else [model.get_output_embeddings().weight]
    with torch.no_grad():
        for weight, mean in zip(grown, means, strict=True):
            weight[old:] = mean.to(weight.dtype)
    logger.info("embeddings grown from %d to %d rows (new rows: the mean row)", old, vocab_size)
