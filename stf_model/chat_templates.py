"""LLaVA's conversation formats as tokenizer chat templates with ``{% generation %}`` markers.

Label masks then come from ``apply_chat_template(..., return_assistant_tokens_mask=True)`` rather
than from hand-counted offsets (the reference code's offsets silently mask whole samples when the
template and tokenizer disagree).

Besides LLaVA's own ``plain`` and ``vicuna_v1``, an LLM's own chat format can be used
(:func:`llm_chat_template`): for the ChatML (Qwen) and Llama 3 families we ship the same format
with generation markers, and check that it renders text conversations exactly as the LLM's own
template does before using it.
"""

from __future__ import annotations

import json
from importlib import resources

from transformers import PreTrainedTokenizerBase

from stf_model.errors import ModelInputError

CHAT_TEMPLATE_NAMES = ("plain", "vicuna_v1")
# LLM chat-format families we can mark, told apart by a token only their templates use.
LLM_FAMILIES = {"chatml": "<|im_start|>", "llama3": "<|start_header_id|>"}
# Conversations both templates must render alike (text only: image parts are ours to define).
PROBES = (
    ([{"role": "user", "content": "Hello"}], True),
    (
        [
            {"role": "user", "content": "<image>\nWhat is it?"},
            {"role": "assistant", "content": "A dog."},
        ],
        False,
    ),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there"},
            {"role": "user", "content": "Colour?"},
            {"role": "assistant", "content": "red"},
        ],
        False,
    ),
)


def _source(name: str) -> str:
    return resources.files("stf_model").joinpath("templates", f"{name}.jinja").read_text()


def get_chat_template(name: str) -> str:
    """The Jinja source of a named template (``plain`` for pretraining, ``vicuna_v1`` for chat)."""
    if name not in CHAT_TEMPLATE_NAMES:
        raise ModelInputError(
            f"unknown chat template {name!r}; known: {', '.join(CHAT_TEMPLATE_NAMES)}"
        )
    return _source(name)


def llm_chat_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's own chat format with generation markers added, checked to render the
    probe conversations exactly as the tokenizer's template does. Raises
    :class:`~stf_model.errors.ModelInputError` for a template we cannot mark."""
    base = tokenizer.chat_template
    if not base or not isinstance(base, str):
        raise ModelInputError(
            "the LLM's tokenizer has no chat template: use template vicuna_v1 (or plain)"
        )
    family = next((name for name, marker in LLM_FAMILIES.items() if marker in base), None)
    if family is None:
        raise ModelInputError(
            f"the LLM's chat template is not one we can add generation markers to (known: "
            f"{', '.join(LLM_FAMILIES)}): use template vicuna_v1 (or plain)"
        )
    marked = _source(family)
    if family == "chatml":
        default = _chatml_default_system(tokenizer, base)
        marked = marked.replace(
            "DEFAULT_SYSTEM", "none" if default is None else json.dumps(default)
        )
    _check_same_rendering(tokenizer, base, marked, family)
    return marked


def _render(tokenizer: PreTrainedTokenizerBase, template: str, messages, prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=prompt
    )


def _chatml_default_system(tokenizer: PreTrainedTokenizerBase, base: str) -> str | None:
    """The system text the base template adds to a conversation without one, if any."""
    rendered = _render(tokenizer, base, [{"role": "user", "content": "x"}], False)
    head = "<|im_start|>system\n"
    if not rendered.startswith(head):
        return None
    return rendered[len(head) : rendered.index("<|im_end|>")]


def _check_same_rendering(tokenizer, base: str, marked: str, family: str) -> None:
    for messages, prompt in PROBES:
        want, got = (
            _render(tokenizer, base, messages, prompt),
            _render(tokenizer, marked, messages, prompt),
        )
        if want != got:
            at = next(
                (i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
                min(len(want), len(got)),
            )
            raise ModelInputError(
                f"the LLM's chat template is a {family} variant we do not reproduce exactly (at "
                f"character {at}: the LLM renders {want[at : at + 40]!r}, ours "
                f"{got[at : at + 40]!r}): use template vicuna_v1 (or plain)"
            )
