"""A chat request as the generator takes it (prompt, images, sampling, cancellation) and what
it gives back: the completion, and each row's news while it runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from stf_model.user_text import Rendered

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded. ``temperature`` 0 (under ``decoding.MIN_TEMPERATURE``) is
    greedy."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class ChatPrompt:
    """One request: its rendered prompt (one ``<image>`` per image), images and sampling.
    ``stream=False`` reports its text once, when it finishes, instead of token by token."""

    text: Rendered | str  # a plain str is trusted whole (a prompt built in code)
    images: list[Image.Image] = field(default_factory=list)
    params: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = True
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Completion:
    """What one request produced."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


# One step's news for one row: (row, new text, finish reason or None while running, tokens so far).
OnDelta = Callable[[int, str, FinishReason | None, int], None]
