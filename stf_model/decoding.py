"""How each row of a batched ``generate`` is decoded: one temperature / top-p per row
(:class:`RowwiseSampling`, a logits processor), and each row finished on its own budget, stop
string, EOS or cancellation with its new text reported as it appears (:class:`RowProgress`, a
stopping criterion). Hooks into transformers' ``generate`` rather than a hand-written loop."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria

from stf_model.chat_request import ChatPrompt, FinishReason, OnDelta

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


class RowProgress(StoppingCriteria):
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
