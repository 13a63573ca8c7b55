"""Shard rows -> model batches: per-epoch shuffling, length/modality grouping, placeholder
expansion, padding.

Shards store one ``<image>`` token per image so they do not depend on the STF window; the
collator expands each into the model's ``num_image_tokens`` positions (label ``-100``) and stacks
the uint8 pixels, which the model normalises on its device.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from stf_model.constants import IGNORE_INDEX


def shuffled(rows: Iterable[Any], buffer_rows: int, rng: random.Random) -> Iterator[Any]:
    """``rows`` in a random order drawn through a buffer of ``buffer_rows`` (0 or 1: unchanged).

    As each row enters, one from a random slot of the full buffer leaves, so a row comes out at
    most ``buffer_rows`` places earlier than it went in (and later by a random wait); a stream no
    longer than the buffer comes out fully permuted. Written here rather than with Ray Data's
    ``local_shuffle_buffer_size`` because that order also depends on the stream's block
    boundaries, and a resumed run must re-draw exactly the order of the epoch it resumes (it
    depends here only on the rows' order and ``rng``)."""
    if buffer_rows <= 1:
        yield from rows
        return
    buffer: list[Any] = []
    for row in rows:
        if len(buffer) < buffer_rows:
            buffer.append(row)
            continue
        slot = rng.randrange(buffer_rows)
        yield buffer[slot]
        buffer[slot] = row
    rng.shuffle(buffer)
    yield from buffer


def length_grouped_batches(
    rows: Iterable[dict[str, Any]], batch_size: int, window: int, rng: random.Random
) -> Iterator[list[dict[str, Any]]]:
    """LLaVA-style modality-length grouping, streaming: every ``window * batch_size`` rows are
    sorted by (modality, length) and cut into ``window`` full batches, whose order is shuffled.

    Each batch has exactly ``batch_size`` rows (the last fewer than ``batch_size`` rows of the
    stream are dropped), so workers that receive equal row counts run equal step counts, which
    data-parallel training needs. Image and text rows share a batch at most once per window.
    """
    buffer: list[dict[str, Any]] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) == window * batch_size:
            yield from _grouped(buffer, batch_size, rng)
            buffer = []
    full = len(buffer) - len(buffer) % batch_size
    yield from _grouped(buffer[:full], batch_size, rng)


def _grouped(rows: list[dict[str, Any]], batch_size: int, rng: random.Random):
    ordered = sorted(rows, key=lambda r: (str(r["modality"]), -int(r["length"])))
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    rng.shuffle(batches)
    return batches


def rows_of(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A Ray Data numpy batch (column -> array) as a list of row dicts."""
    columns = list(batch)
    n = len(batch[columns[0]]) if columns else 0
    return [{c: batch[c][i] for c in columns} for i in range(n)]


def collate(
    rows: Iterable[dict[str, Any]],
    *,
    image_token_id: int,
    num_image_tokens: int,
    pad_token_id: int,
    image_size: int,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pads a list of shard rows into model inputs.

    Returns ``input_ids``, ``labels``, ``attention_mask`` of shape (B, L) and, when any row has an
    image, ``pixel_values`` (N_images, 3, S, S) uint8 in row order.
    Raises ValueError when an expanded row exceeds ``max_length`` (never truncates silently).
    """
    ids_list, labels_list, pixels = [], [], []
    for row in rows:
        ids = np.asarray(row["input_ids"], dtype=np.int64)
        labels = np.asarray(row["labels"], dtype=np.int64)
        is_image = ids == image_token_id
        # (L,) -> (L + n_img * (T - 1),): each <image> becomes T copies, labelled -100.
        repeats = np.where(is_image, num_image_tokens, 1)
        ids = np.repeat(ids, repeats)
        labels = np.where(np.repeat(is_image, repeats), IGNORE_INDEX, np.repeat(labels, repeats))
        if max_length is not None and len(ids) > max_length:
            raise ValueError(
                f"row {row.get('id')!r}: {len(ids)} tokens with images expanded to "
                f"{num_image_tokens} each > max_length {max_length}; preprocess with "
                f"image_tokens={num_image_tokens} (or a smaller max_length) so it is checked there"
            )
        ids_list.append(ids)
        labels_list.append(labels)
        if int(is_image.sum()):
            data = row["pixels"]
            if data is None:
                raise ValueError(f"row {row.get('id')!r} has <image> but no pixels")
            pixels.append(np.frombuffer(data, dtype=np.uint8).reshape(3, image_size, image_size))

    width = max(len(ids) for ids in ids_list)
    batch = len(ids_list)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(ids_list, labels_list, strict=True)):
        input_ids[i, : len(ids)] = torch.from_numpy(ids)
        labels[i, : len(lab)] = torch.from_numpy(lab)
        attention_mask[i, : len(ids)] = 1
    out = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    if pixels:
        out["pixel_values"] = torch.from_numpy(np.stack(pixels))
    return out
