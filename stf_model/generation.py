"""Batched chat generation with per-request sampling, stop strings and token streaming.

transformers' ``generate`` takes one generation config per call and its text streamers accept a
batch of one, while a server batches requests that each bring their own ``temperature``, ``top_p``,
``max_tokens`` and ``stop``. We keep ``generate`` (prefill, KV cache, LLaVA's image merge) and plug
in two small hooks instead of a hand-written decode loop: :class:`~stf_model.decoding.RowwiseSampling`, a
logits processor with one temperature / top-p per row, and :class:`~stf_model.decoding.RowProgress`,
a stopping criterion that finishes each row on its own budget or stop string and reports each row's
new text as it appears. The request types are in :mod:`stf_model.chat_request`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from stf_model.chat_request import ChatPrompt, Completion, FinishReason, OnDelta, SamplingParams
from stf_model.decoding import RowProgress, RowwiseSampling
from stf_model.errors import ModelInputError
from stf_model.user_text import Rendered, literal_token_ids, render_marking_user_text

# The request types are part of generation's API: callers build prompts and read completions.
__all__ = [
    "ChatGenerator",
    "ChatPrompt",
    "Completion",
    "FinishReason",
    "OnDelta",
    "SamplingParams",
]


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
        progress = RowProgress(self.tokenizer, prompts, prompt_len, self.eos_ids, on_delta)
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
