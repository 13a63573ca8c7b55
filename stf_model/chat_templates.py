"""LLaVA's conversation formats as tokenizer chat templates with ``{% generation %}`` markers.

Label masks then come from ``apply_chat_template(..., return_assistant_tokens_mask=True)`` rather
than from hand-counted offsets (the reference code's offsets silently mask whole samples when the
template and tokenizer disagree).
"""

from __future__ import annotations

from importlib import resources

from stf_model.errors import ModelInputError

CHAT_TEMPLATE_NAMES = ("plain", "vicuna_v1")


def get_chat_template(name: str) -> str:
    """The Jinja source of a named template (``plain`` for pretraining, ``vicuna_v1`` for chat)."""
    if name not in CHAT_TEMPLATE_NAMES:
        raise ModelInputError(
            f"unknown chat template {name!r}; known: {', '.join(CHAT_TEMPLATE_NAMES)}"
        )
    return resources.files("stf_model").joinpath("templates", f"{name}.jinja").read_text()
