"""Batched chat generation with per-request sampling, stop strings and token streaming.

transformers' ``generate`` takes one generation config per call and its text streamers accept a
batch of one, while a server batches requests that each bring their own ``temperature``, ``top_p``,
``max_tokens`` and ``stop``. We keep ``generate`` (prefill, KV cache, LLaVA's image merge) and plug
in two small hooks instead of a hand-written decode loop: :class:`RowwiseSampling`, a logits
processor with one temperature / top-p per row, and :class:`_Progress`, a stopping criterion that
finishes each row on its own budget or stop string and reports each row's new text as it appears.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from stf_model.errors import ModelInputError
from stf_model.user_text import Rendered, literal_token_ids, render_marking_user_text

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded. ``temperature`` 0 (under ``MIN_TEMPERATURE``) is greedy."""

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


# Below this, greedy (as in vLLM): logits / 1e-40 overflow, and the NaN fails the whole batch.
MIN_TEMPERATURE = 1e-5


class RowwiseSampling(LogitsProcessor):
    """Temperature and nucleus (top-p) filtering with one setting per batch row; temperature 0
    (below :data:`MIN_TEMPERATURE`) leaves only the arg-max, so greedy and sampled requests share
    one ``generate`` call.

    Shape: scores (B, V) -> (B, V)
    """

    def __init__(self, temperatures: Sequence[float], top_ps: Sequence[float]):
        self.temperatures = list(temperatures)
        self.top_ps = list(top_ps)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        device = scores.device
        temperature = torch.tensor(self.temperatures, device=device).unsqueeze(1)
        sampled = temperature >= MIN_TEMPERATURE
        greedy = ~sampled.squeeze(1)
        scores = scores / torch.where(sampled, temperature, torch.ones_like(temperature))
        top_p = torch.tensor(self.top_ps, device=device).unsqueeze(1)
        if bool((top_p < 1).any()):
            # As transformers' TopPLogitsWarper, per row: drop the tail whose mass is <= 1 - top_p,
            # always keeping the most likely token.
            sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            remove_sorted = cumulative <= (1 - top_p)
            remove_sorted[:, -1] = False
            remove = remove_sorted.scatter(1, order, remove_sorted)
            scores = scores.masked_fill(remove, -float("inf"))
        if bool(greedy.any()):
            best = scores.argmax(dim=-1, keepdim=True)
            only_best = torch.full_like(scores, -float("inf")).scatter(1, best, 0.0)
            scores = torch.where(greedy.unsqueeze(1), only_best, scores)
        return scores


class _Progress(StoppingCriteria):
    """Per-row bookkeeping after each generated token: decodes the row's text, finishes it on EOS,
    a stop string, its own token budget or cancellation, and reports new text through ``on_delta``.

    Text that might be the start of a stop string, or ends in an incomplete UTF-8 sequence, is held
    back until the next token decides it.
    """

    def __init__(
        self,
        tokenizer,
        prompts: Sequence[ChatPrompt],
        prompt_len: int,
        eos_ids,
        on_delta: OnDelta | None,
    ):
        self.tokenizer, self.prompts, self.prompt_len = tokenizer, prompts, prompt_len
        self.eos_ids = set(eos_ids)
        self.on_delta = on_delta
        n = len(prompts)
        self.texts = [""] * n
        self.sent = [0] * n  # characters of texts already reported
        self.generated = [0] * n
        self.finish: list[FinishReason | None] = [None] * n

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new_tokens = input_ids[:, self.prompt_len :].tolist()
        for row, prompt in enumerate(self.prompts):
            if self.finish[row] is not None:
                continue
            tokens = new_tokens[row]
            self.generated[row] = len(tokens)
            params = prompt.params
            hit_eos = bool(tokens) and tokens[-1] in self.eos_ids
            if hit_eos:
                tokens = tokens[:-1]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            reason: FinishReason | None = None
            cut = _first_stop(text, params.stop)
            if cut is not None:
                text, reason = text[:cut], "stop"
            elif hit_eos:
                reason = "stop"
            elif self.generated[row] >= params.max_new_tokens:
                reason = "length"
            elif prompt.cancelled.is_set():
                reason = "cancelled"
            self.texts[row] = text
            self._report(row, reason)
        return torch.tensor([f is not None for f in self.finish], device=input_ids.device)

    def _report(self, row: int, reason: FinishReason | None) -> None:
        self.finish[row] = reason
        if reason is None and not self.prompts[row].stream:
            return
        text = self.texts[row]
        ready = (
            len(text) if reason is not None else _safe_prefix(text, self.prompts[row].params.stop)
        )
        delta = text[self.sent[row] : ready] if ready > self.sent[row] else ""
        self.sent[row] = max(self.sent[row], ready)
        if self.on_delta is not None and (delta or reason is not None):
            self.on_delta(row, delta, reason, self.generated[row])


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _safe_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of ``text`` that can be reported now: not an undecoded byte, not a stop's prefix."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text[end - k : end] == stop[:k]:
                hold = max(hold, k)
                break
    return end - hold


class ChatGenerator:
    """A model and its processor, generating for batches of :class:`ChatPrompt`.

    The processor's chat template renders messages; images are expanded into the model's
    vision-token count by the processor; prompts are left-padded so generation continues from the
    right edge of every row.
    """

    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = sorted({*eos, self.tokenizer.eos_token_id} - {None})
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.eos_ids[0]
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    def render(self, messages: list[dict]) -> Rendered:
        """Chat messages (``role`` and ``content`` as a string or a list of ``text`` /
        ``image`` / ``image_url`` parts) -> the prompt text, ending with the assistant cue, with
        the spans of the messages' own text (see :class:`Rendered`)."""
        return render_marking_user_text(self.processor, messages)

    def count_prompt_tokens(self, prompt: ChatPrompt) -> int:
        """Tokens the prompt occupies in the model, image tokens included.
        Raises ModelInputError when its image placeholders do not match its images."""
        return len(self.prompt_ids(prompt))

    def prompt_ids(self, prompt: ChatPrompt) -> list[int]:
        """The prompt's token ids, each image expanded into the model's vision-token count.

        Tokenised as the processor does, except that a special token (``<image>``, ``</s>``,
        template markers) inside the client's own text is re-tokenised as the text it is.
        Raises ModelInputError when the placeholders left do not match the prompt's images.
        """
        image_id = self.model.config.image_token_id
        rendered = prompt.text if isinstance(prompt.text, Rendered) else Rendered(prompt.text)
        ids = literal_token_ids(self.tokenizer, rendered.text, rendered.user_spans).ids
        placeholders = ids.count(image_id)
        if placeholders != len(prompt.images):
            raise ModelInputError(
                f"the prompt has {placeholders} image placeholders for {len(prompt.images)} images"
            )
        expanded: list[int] = []
        for token in ids:
            expanded += (
                [token] * self.model.config.num_image_tokens if token == image_id else [token]
            )
        return expanded

    def _inputs(self, prompts: Sequence[ChatPrompt]) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids`` / ``attention_mask`` (B, L) and ``pixel_values`` (N, 3, S, S)."""
        rows = [self.prompt_ids(p) for p in prompts]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, width - len(row) :] = 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        images = [image for prompt in prompts for image in prompt.images]
        if images:
            pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
            inputs["pixel_values"] = pixels.to(self.model.dtype)
        return {k: v.to(self.device) for k, v in inputs.items()}

    def generate_each(
        self, prompts: Sequence[ChatPrompt], on_delta: OnDelta | None = None
    ) -> list[Completion | Exception]:
        """As :meth:`generate`, but a failure fails only its own row.

        When the batch fails before any row has produced text, each row runs alone and a row
        that still fails gets its exception in place of its completion. A failure after text has
        streamed cannot be pinned to a row (the rows share every step), so it fails the rows
        that had not finished.
        """
        started = [False] * len(prompts)

        def tracked(row: int, text: str, reason: FinishReason | None, tokens: int) -> None:
            started[row] = True
            if on_delta is not None:
                on_delta(row, text, reason, tokens)

        try:
            return list(self.generate(prompts, tracked))
        except Exception as err:
            if len(prompts) == 1 or any(started):
                return [err] * len(prompts)
        results: list[Completion | Exception] = []
        for row, prompt in enumerate(prompts):
            try:
                alone = self.generate([prompt], lambda _, *news, row=row: tracked(row, *news))
                results.append(alone[0])
            except Exception as err:
                results.append(err)
        return results

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[ChatPrompt], on_delta: OnDelta | None = None
    ) -> list[Completion]:
        """Generates for all prompts in one batched ``generate`` call.

        Each row stops on its own: EOS, a stop string, its ``max_new_tokens`` or its ``cancelled``
        event. ``on_delta(row, text, finish_reason, tokens)`` is called from this thread as text appears.
        """
        inputs = self._inputs(prompts)
        prompt_len = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        progress = _Progress(self.tokenizer, prompts, prompt_len, self.eos_ids, on_delta)
        temperatures = [p.params.temperature for p in prompts]
        sampling = RowwiseSampling(temperatures, [p.params.top_p for p in prompts])
        self.model.generate(
            **inputs,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max(p.params.max_new_tokens for p in prompts),
            logits_processor=LogitsProcessorList([sampling]),
            stopping_criteria=StoppingCriteriaList([progress]),
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        results = []
        for row in range(len(prompts)):
            if progress.finish[row] is None:  # generate ended first (e.g. the model's own limit)
                progress._report(row, "length")
            results.append(
                Completion(
                    text=progress.texts[row],
                    prompt_tokens=int(prompt_tokens[row]),
                    completion_tokens=progress.generated[row],
                    finish_reason=progress.finish[row],
                )
            )
        return results


__all__ = ["ChatGenerator", "ChatPrompt", "Completion", "RowwiseSampling", "SamplingParams"]
