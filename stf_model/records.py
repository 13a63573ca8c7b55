"""LLaVA training records -> validated chat messages -> token ids and labels.

A LLaVA record is ``{"id", "image" (optional), "conversations": [{"from": "human"|"gpt", "value"}]}``.
:func:`parse_record` checks its structure and normalises the ``<image>`` placeholder to the start of
the first human turn followed by ``\\n`` (as LLaVA's ``preprocess_multimodal`` does);
:func:`tokenize_conversation` renders a chat template, takes the label mask from the template's
generation markers and checks that mask against the text it should cover, so a template/tokenizer
disagreement is an error on that record instead of a silent loss-0 sample.

Every problem is a :class:`RecordError` with a stable ``reason`` code from :data:`REASONS`.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from transformers import PreTrainedTokenizerBase

from stf_model.constants import IGNORE_INDEX, IMAGE_TOKEN
from stf_model.user_text import literal_token_ids, render_marking_user_text, special_tokens

# Reason code -> what it means and what to do; quarantine rows carry the code and a detail. These
# are the library's; the pipelines add the codes only they raise (reading files and images).
REASONS: dict[str, str] = {
    "not_an_object": "the record is not a JSON object",
    "missing_conversations": "no 'conversations' list, or it is empty",
    "bad_turn": "a turn is not {'from': ..., 'value': str} or has an unknown role",
    "wrong_turn_order": "turns must alternate human, gpt, ... starting with human and ending with gpt",
    "empty_turn": "a human or gpt turn has no text",
    "not_single_exchange": "the plain (pretraining) template takes one human + gpt exchange",
    "plain_without_image": "the plain (pretraining) template keeps only the image and the answer",
    "bad_image_field": "'image' must be one relative path (a string)",
    "placeholder_count": "an image record needs exactly one <image>, in the first human turn",
    "placeholder_without_image": "<image> appears but the record has no 'image'",
    "image_without_placeholder": "the record has an 'image' but no <image> in its text",
    "image_empty": "the image file has zero bytes",
    "image_undecodable": "the bytes are not an image format Pillow can read",
    "image_truncated": "the image file is truncated or corrupt",
    "image_too_large": "the image padded to a square is over the pixel limit (bomb guard)",
    "image_aspect": "one side is over 32 times the other (resizing it would cost far more)",
    "too_long": "even the first exchange is longer than max_length (image tokens included)",
    "mask_mismatch": "the supervised tokens do not match the assistant text (template/tokenizer)",
    "placeholder_tokenization": "the tokenizer did not produce one <image> token per image",
}

_USER_ROLES = {"human": "user", "user": "user"}
_ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant"}


class RecordError(ValueError):
    """A record that cannot become a training sample: ``reason`` is a key of ``reasons``
    (:data:`REASONS`; a subclass may extend the table with codes of its own)."""

    reasons: ClassVar[dict[str, str]] = REASONS

    def __init__(self, reason: str, detail: str):
        if reason not in self.reasons:
            raise KeyError(f"unknown record error reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Conversation:
    """A validated record: chat messages (``role``/``content``) and its image path, if any."""

    id: str | None
    image: str | None
    messages: list[dict[str, str]]

    @property
    def num_images(self) -> int:
        return 0 if self.image is None else 1


def parse_record(
    record: Any, add_missing_image_token: bool = False, single_exchange: bool = False
) -> Conversation:
    """Validates one LLaVA record and normalises its ``<image>`` placeholder.

    ``single_exchange`` (the ``plain`` pretraining template) demands exactly one human + gpt pair
    about an image: that template keeps only the image and the answer, as LLaVA's
    ``preprocess_plain`` asserts, so a text-only record would train on its answer alone.
    ``add_missing_image_token`` puts ``<image>\\n`` in front of the first human turn of an image
    record that has none (otherwise that record is an ``image_without_placeholder`` error).
    """
    if not isinstance(record, dict):
        raise RecordError("not_an_object", f"got a JSON {type(record).__name__}")
    record_id = None if record.get("id") is None else str(record["id"])
    image = _image_field(record)
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("missing_conversations", f"'conversations' is {turns!r:.80}")

    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RecordError("bad_turn", f"turn {i} is {turn!r:.80}")
        source = turn.get("from")
        source = source if isinstance(source, str) else repr(source)
        role = _USER_ROLES.get(source) or _ASSISTANT_ROLES.get(source)
        if source == "system" and i == 0:
            role = "system"
        if role is None:
            raise RecordError("bad_turn", f"turn {i} has unknown role 'from': {source!r}")
        messages.append({"role": role, "content": turn["value"]})

    dialogue = messages[1:] if messages[0]["role"] == "system" else messages
    for i, message in enumerate(dialogue):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise RecordError(
                "wrong_turn_order",
                f"turn {i} is a {message['role']} turn where a {expected} turn belongs",
            )
        if not message["content"].strip() and IMAGE_TOKEN not in message["content"]:
            raise RecordError("empty_turn", f"turn {i} ({message['role']}) is empty")
    if not dialogue or dialogue[-1]["role"] != "assistant":
        raise RecordError("wrong_turn_order", "the conversation does not end with a gpt turn")

    if single_exchange and len(dialogue) != 2:
        raise RecordError("not_single_exchange", f"{len(dialogue)} turns")
    if single_exchange and image is None:
        raise RecordError("plain_without_image", "a text-only record; its question would be lost")
    if messages[0]["role"] == "system" and IMAGE_TOKEN in messages[0]["content"]:
        raise RecordError("placeholder_count", "an <image> in the system turn")
    _normalise_placeholder(dialogue, image, add_missing_image_token)
    return Conversation(id=record_id, image=image, messages=messages)


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _image_field(record: dict) -> str | None:
    image = record.get("image")
    if isinstance(image, list) and len(image) == 1:
        image = image[0]  # some exports wrap a single image in a list
    if image is None:
        return None
    if not isinstance(image, str) or not image.strip():
        raise RecordError("bad_image_field", f"'image' is {image!r:.80}")
    if "\x00" in image:
        raise RecordError(
            "bad_image_field", f"'image' {image!r:.80} holds a NUL, which no path can"
        )
    return image


def _normalise_placeholder(
    dialogue: list[dict[str, str]], image: str | None, add_missing: bool
) -> None:
    counts = [m["content"].count(IMAGE_TOKEN) for m in dialogue]
    total = sum(counts)
    if image is None:
        if total:
            raise RecordError("placeholder_without_image", f"{total} <image> in a text-only record")
        return
    if total == 0:
        if not add_missing:
            raise RecordError("image_without_placeholder", f"image {image!r} is never referenced")
        counts[0] = 1
        dialogue[0]["content"] = IMAGE_TOKEN + dialogue[0]["content"]
    elif total != 1 or counts[0] != 1:
        where = ", ".join(f"turn {i}: {c}" for i, c in enumerate(counts) if c)
        raise RecordError("placeholder_count", f"one <image> expected in turn 0, found {where}")
    # LLaVA: strip the placeholder wherever it is in the turn, then put "<image>\n" first.
    text = dialogue[0]["content"].replace(IMAGE_TOKEN, "").strip()
    dialogue[0]["content"] = f"{IMAGE_TOKEN}\n{text}"


@dataclass(frozen=True)
class TokenizedSample:
    """Token ids with one ``<image>`` id per image, and labels (``-100`` where not supervised)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def tokenize_conversation(
    messages: Sequence[dict[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str,
    *,
    max_length: int,
    image_token_id: int,
    num_images: int,
    image_tokens: int,
) -> TokenizedSample:
    """Renders ``chat_template``, tokenises, builds labels and checks them.

    Stored sequences keep one placeholder per image; the model expands each into
    ``image_tokens`` positions, so the length checked against ``max_length`` is
    ``len(input_ids) + num_images * (image_tokens - 1)``. An over-long sample keeps its longest
    prefix of whole exchanges that fits (``truncated``); if not even one fits it is ``too_long``.
    """
    out = tokenizer.apply_chat_template(
        list(messages),
        chat_template=chat_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = _literal_user_text(tokenizer, chat_template, messages, out, image_token_id)
    if ids.count(image_token_id) != num_images:
        raise RecordError(
            "placeholder_tokenization",
            f"{ids.count(image_token_id)} <image> tokens (id {image_token_id}) for {num_images} "
            "image(s): the tokenizer must treat <image> as one special token",
        )
    spans = _supervised_spans(mask)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if len(spans) != len(answers):
        raise RecordError(
            "mask_mismatch",
            f"{len(spans)} supervised spans for {len(answers)} assistant turns; the template's "
            "{% generation %} markers do not line up with the tokenizer's tokens",
        )
    for (start, end), answer in zip(spans, answers, strict=True):
        # Compared modulo whitespace: tokenizers may normalise spaces when decoding, but a span
        # that covers other text than the answer is a real mismatch.
        # And modulo Unicode compatibility forms: a tokenizer that normalises (Qwen2: NFC)
        # turns "e" + combining acute into "é".
        got = tokenizer.decode(ids[start:end], skip_special_tokens=True).strip()
        if _nfkc(got).split() != _nfkc(answer).split():
            raise RecordError(
                "mask_mismatch",
                f"supervised tokens read {got!r:.60}, answer is {answer.strip()!r:.60}",
            )

    extra = num_images * (image_tokens - 1)
    truncated = False
    if len(ids) + extra > max_length:
        fitting = [end for _, end in spans if end + extra <= max_length]
        if not fitting:
            raise RecordError(
                "too_long",
                f"{len(ids)} tokens + {extra} for images > max_length {max_length}, "
                f"and the first answer ends at {spans[0][1] + extra}",
            )
        # The templates only append, so a prefix ending after an answer is that shorter chat.
        ids, mask, truncated = ids[: fitting[-1]], mask[: fitting[-1]], True
    labels = [i if m else IGNORE_INDEX for i, m in zip(ids, mask, strict=True)]
    return TokenizedSample(input_ids=ids, labels=labels, truncated=truncated)


def _literal_user_text(
    tokenizer: PreTrainedTokenizerBase,
    chat_template: str,
    messages: Sequence[dict[str, str]],
    rendered_ids: dict,
    image_token_id: int,
) -> tuple[list[int], list[int]]:
    """The template's ids and assistant mask, with any special token that a record's own text
    holds (``</s>``, ``<|im_end|>``, ...) re-tokenised as text; ``<image>`` stays the image
    placeholder, as LLaVA's format defines it (its count is checked by :func:`parse_record`)."""
    ids, mask = list(rendered_ids["input_ids"]), list(rendered_ids["assistant_masks"])
    specials = special_tokens(tokenizer).values()
    typed = [s for s in specials if any(s in m["content"] for m in messages)]
    if not typed or typed == [IMAGE_TOKEN]:  # the usual record: nothing to re-tokenise
        return ids, mask
    rendered = render_marking_user_text(
        tokenizer, list(messages), chat_template=chat_template, add_generation_prompt=False
    )
    tokens = literal_token_ids(tokenizer, rendered.text, rendered.user_spans, keep={image_token_id})
    if tokens.plain != ids:  # the template tokenised differently: keep its ids unchanged
        return ids, mask
    return tokens.ids, [mask[i] for i in tokens.origin]


def _supervised_spans(mask: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs of 1 in ``mask`` as ``(start, end)`` with ``end`` exclusive."""
    spans, pos = [], 0
    for value, run in itertools.groupby(mask):
        length = len(list(run))
        if value:
            spans.append((pos, pos + length))
        pos += length
    return spans
