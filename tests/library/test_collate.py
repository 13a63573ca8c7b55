"""Shard rows -> batches: placeholder expansion matches transformers' processor, padding, grouping."""

import random

import numpy as np
import pytest
import torch

from stf_model import build_processor, get_chat_template
from stf_model.collate import collate, length_grouped_batches, shuffled
from stf_model.constants import IGNORE_INDEX
from stf_model.records import parse_record, tokenize_conversation


def shard_row(tokenizer, record, pixels=None):
    conv = parse_record(record)
    sample = tokenize_conversation(
        conv.messages,
        tokenizer,
        get_chat_template("vicuna_v1"),
        max_length=4096,
        image_token_id=4,
        num_images=conv.num_images,
        image_tokens=36,
    )
    return {
        "id": record["id"],
        "input_ids": np.array(sample.input_ids, dtype=np.int32),
        "labels": np.array(sample.labels, dtype=np.int32),
        "pixels": None if pixels is None else pixels.tobytes(),
        "modality": "image" if conv.num_images else "text",
        "length": len(sample.input_ids),
    }


def test_expansion_matches_the_processor_and_the_model_runs(tiny, uint8_images):
    model, tokenizer = tiny
    turns = [{"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "red"}]
    image_row = shard_row(
        tokenizer, {"id": "a", "image": "x", "conversations": turns}, uint8_images[0].numpy()
    )
    text_turns = [{"from": "human", "value": "Sides?"}, {"from": "gpt", "value": "four"}]
    text_row = shard_row(tokenizer, {"id": "b", "conversations": text_turns})
    config = model.config
    batch = collate(
        [image_row, text_row],
        image_token_id=4,
        num_image_tokens=config.num_image_tokens,
        pad_token_id=tokenizer.pad_token_id,
        image_size=48,
    )
    processor = build_processor(config, tokenizer)
    text = tokenizer.decode(image_row["input_ids"])
    expected = processor(
        images=[np.zeros((48, 48, 3), np.uint8)],
        text=text,
        add_special_tokens=False,
        return_tensors="pt",
    )["input_ids"][0]
    n = len(expected)
    assert batch["input_ids"][0, :n].tolist() == expected.tolist()
    assert (batch["labels"][0, :n][expected == 4] == IGNORE_INDEX).all()
    assert batch["attention_mask"].sum(1).tolist() == [n, len(text_row["input_ids"])]
    assert batch["input_ids"][1, len(text_row["input_ids"]) :].eq(tokenizer.pad_token_id).all()
    assert (
        batch["pixel_values"].shape == (1, 3, 48, 48) and batch["pixel_values"].dtype == torch.uint8
    )
    loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_over_long_rows_are_refused_not_truncated(tiny):
    _, tokenizer = tiny
    row = shard_row(
        tokenizer,
        {
            "id": "a",
            "image": "x",
            "conversations": [
                {"from": "human", "value": "<image>\nColor?"},
                {"from": "gpt", "value": "red"},
            ],
        },
        np.zeros((3, 48, 48), np.uint8),
    )
    with pytest.raises(ValueError, match="max_length 60"):
        collate(
            [row],
            image_token_id=4,
            num_image_tokens=36,
            pad_token_id=3,
            image_size=48,
            max_length=60,
        )


def test_length_grouping_gives_full_batches_of_similar_rows():
    rng = random.Random(0)
    rows = [
        {"modality": "image" if i % 3 else "text", "length": rng.randint(5, 500)} for i in range(67)
    ]
    batches = list(length_grouped_batches(rows, 4, window=8, rng=random.Random(1)))
    assert [len(b) for b in batches] == [4] * 16  # 67 rows: 16 full batches, 3 dropped
    mixed = sum(len({r["modality"] for r in b}) > 1 for b in batches)
    assert mixed <= 3  # at most once per window of 8 batches
    spread = np.mean([max(r["length"] for r in b) - min(r["length"] for r in b) for b in batches])
    assert spread < 150  # random batches of 4 would spread about 300


def test_shuffling_is_a_permutation_that_one_seed_repeats_and_another_changes():
    rows = list(range(300))
    once = list(shuffled(iter(rows), 64, random.Random("0/3/1")))
    assert sorted(once) == rows and once != rows
    assert list(shuffled(iter(rows), 64, random.Random("0/3/1"))) == once  # a resume re-draws it
    assert list(shuffled(iter(rows), 64, random.Random("0/4/1"))) != once  # the next epoch
    assert list(shuffled(iter(rows), 0, random.Random(0))) == rows  # 0: shard order


def test_shuffling_mixes_records_that_arrive_file_by_file():
    """Two record files preprocessed together arrive one after the other; with a buffer as long
    as the stream every batch of 16 draws from both, as training on the mix needs."""
    rows = ["question"] * 500 + ["caption"] * 500
    out = list(shuffled(iter(rows), 1000, random.Random(0)))
    batches = [out[i : i + 16] for i in range(0, 1000 - 15, 16)]
    assert all(len(set(b)) == 2 for b in batches[:10] + batches[-10:])
    # A buffer shorter than the stream brings a row forward by at most the buffer's length.
    local = list(shuffled(iter(rows), 100, random.Random(0)))
    assert set(local[:300]) == {"question"} and "caption" in local[400:600]
