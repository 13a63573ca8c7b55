"""Text that users typed stays text: no special token can be injected through it.

A chat template renders messages into one string, and a tokenizer turns every occurrence of a
special token's string into that token. So a user who types ``<image>`` would add an image
placeholder (which fails a whole batch when it does not match the images), and ``</s>`` or
``<|im_end|>`` would end a turn early. Here rendering remembers where each message's own text
lies (:func:`render_marking_user_text`), and tokenisation re-tokenises any special token found
inside those spans as the plain text it is (:func:`literal_token_ids`), leaving every other token
exactly as the tokenizer produced it.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt and where the client's own text sits in it (character spans of
    ``text``).

    :meth:`ChatGenerator.render` returns one. That text is tokenised as text: a literal
    ``<image>``, ``</s>`` or chat-template marker typed by a user is never a placeholder or a
    control token. A plain ``str`` prompt is trusted whole (for prompts built in code). This is
    not a ``str``, so that no string operation can turn it into one and drop the spans (and with
    them the safe tokenisation): ``str()`` and formatting refuse; read ``text`` and keep
    ``user_spans`` with it.
    """

    text: str
    user_spans: tuple[tuple[int, int], ...] = ()

    def __str__(self) -> str:
        raise TypeError(
            "a Rendered prompt is not a str: use its .text and keep its .user_spans with it"
        )


# Private-use characters around a message number: no tokenizer or template uses them.
_MARK = re.compile("\ue000(\\d+)\ue001")


def render_marking_user_text(processor: Any, messages: list[dict], **options: Any) -> Rendered:
    """Renders with ``processor.apply_chat_template`` (a processor's or a tokenizer's, with
    ``options`` such as ``chat_template=``) and finds each message's text in the result.

    The template is rendered once with every text replaced by a marker, and the plain rendering
    is read against it: the template's own pieces must be there verbatim, and between them each
    message's text, as given or stripped (Llama 3's template trims it). A template that rewrites
    text otherwise falls back to the plain rendering with no spans, whose placeholders
    :meth:`ChatGenerator.prompt_ids` still counts against the images.
    """
    texts: list[str] = []

    def mark(text: str) -> str:
        texts.append(text)
        return f"\ue000{len(texts) - 1}\ue001"

    marked = [_with_texts(message, mark) for message in messages]
    options = {"add_generation_prompt": True, **options, "tokenize": False}
    plain = processor.apply_chat_template(messages, **options)
    pieces = _MARK.split(processor.apply_chat_template(marked, **options))
    spans = _user_spans(plain, pieces[0::2], [texts[int(i)] for i in pieces[1::2]])
    return Rendered(plain, () if spans is None else tuple(spans))


def _user_spans(plain: str, fixed: list[str], texts: list[str]) -> list[tuple[int, int]] | None:
    """Where each of ``texts`` sits in ``plain``, which must read ``fixed[0] text[0] fixed[1]
    ... fixed[-1]``, each text as given or stripped; None when it does not."""
    if not plain.startswith(fixed[0]):
        return None
    spans, at = [], len(fixed[0])
    for text, after in zip(texts, fixed[1:], strict=True):
        for form in dict.fromkeys((text, text.strip(), text.lstrip(), text.rstrip())):
            end = at + len(form)
            if plain.startswith(form, at) and plain.startswith(after, end):
                spans.append((at, end))
                at = end + len(after)
                break
        else:
            return None
    return spans if at == len(plain) else None


def _with_texts(message: dict, mark: Callable[[str], str]) -> dict:
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": mark(content)}
    if isinstance(content, list):
        parts = [
            {**part, "text": mark(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
        return {**message, "content": parts}
    return message


class LiteralTokens(NamedTuple):
    """``ids`` with user text literal; ``origin[k]``: the index in ``plain`` (the tokenizer's own
    ids) that ``ids[k]`` came from, so per-token data such as an assistant mask can follow."""

    ids: list[int]
    origin: list[int]
    plain: list[int]


def special_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
    """The tokenizer's special tokens (``<s>``, ``</s>``, ``<image>``, ``<|im_end|>``, ...) by id."""
    return {i: t.content for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def literal_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    user_spans: Sequence[tuple[int, int]],
    keep: Collection[int] = (),
) -> LiteralTokens:
    """Tokenises ``text`` as the tokenizer does (no BOS/EOS added), except that a special token
    reaching into one of ``user_spans`` (and not in ``keep``) becomes the tokens of its text:
    also one that user text completes across a boundary (two parts "</" and "s>")."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    special = set(special_tokens(tokenizer)) - set(keep)
    ids: list[int] = []
    origin: list[int] = []
    for index, (token, (start, end)) in enumerate(
        zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ):
        if token in special and any(a < end and start < b for a, b in user_spans):
            pieces = _as_text_ids(tokenizer, text[start:end])
            ids += pieces
            origin += [index] * len(pieces)
        else:
            ids.append(token)
            origin.append(index)
    return LiteralTokens(ids, origin, list(encoded["input_ids"]))


# Per fast tokenizer: its vocabulary size when copied, and a copy of its Rust tokenizer that
# always splits special tokens (made again if tokens were added since).
_splitting_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_splitting_copies_lock = threading.Lock()


def _as_text_ids(tokenizer: PreTrainedTokenizerBase, piece: str) -> list[int]:
    """``piece`` tokenised with any special token in it as plain text (no BOS/EOS added).

    Not ``tokenizer(piece, split_special_tokens=True)``: a fast tokenizer applies that option by
    setting a flag on its Rust tokenizer, which every call shares, before it encodes. Calls on
    two threads (a request's intake while the replica generates a batch) then encode under each
    other's flag: the template's own ``<image>`` split into text, or the user's kept a
    placeholder. A copy of the Rust tokenizer with the flag set once is shared with no other call.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):  # a Python tokenizer reads the option per call
        return tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    size = backend.get_vocab_size(with_added_tokens=True)
    copied = _splitting_copies.get(tokenizer)
    if copied is None or copied[0] != size:
        with _splitting_copies_lock:
            copied = _splitting_copies.get(tokenizer)
            if copied is None or copied[0] != size:
                config = json.loads(backend.to_str())
                _drop_prefix_space(config)
                splitting = Tokenizer.from_str(json.dumps(config))
                splitting.no_truncation()
                splitting.no_padding()
                splitting.encode_special_tokens = True
                copied = _splitting_copies[tokenizer] = (size, splitting)
    return copied[1].encode(piece, add_special_tokens=False).ids


def _drop_prefix_space(node: Any) -> None:
    """Turns off, in a tokenizer's JSON, the space a tokenizer adds before its input: a piece
    cut from the middle of a text must not gain one ("a </s>" would read "a  </s>").

    Metaspace (LLaMA-2, Vicuna) prepends "▁" to the first word, legacy LLaMA's normaliser
    prepends it to the text, and ByteLevel may add a space (GPT-2's ``add_prefix_space``).
    """
    if isinstance(node, list):
        node[:] = [n for n in node if not (isinstance(n, dict) and n.get("type") == "Prepend")]
        for item in node:
            _drop_prefix_space(item)
    elif isinstance(node, dict):
        if node.get("type") == "Metaspace":
            node["prepend_scheme"] = "never"
            node.pop("add_prefix_space", None)  # the pre-0.14 spelling of the same switch
        if node.get("type") == "ByteLevel":
            node["add_prefix_space"] = False
        for key in ("normalizer", "pre_tokenizer", "normalizers", "pretokenizers"):
            if key in node:
                if isinstance(node[key], dict) and node[key].get("type") == "Prepend":
                    node[key] = None
                _drop_prefix_space(node[key])
