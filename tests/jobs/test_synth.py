"""The synthetic corpus: deterministic, valid LLaVA records, answerable from the pixels."""

import json
from collections import Counter

from PIL import Image

from pipelines.synth.corpus import ANSWERS, COLORS, write_corpus
from stf_model.records import parse_record


def test_corpus_is_deterministic_and_valid(tmp_path):
    meta = write_corpus(tmp_path / "a", n=30, seed=3, n_eval=12)
    write_corpus(tmp_path / "b", n=30, seed=3, n_eval=12)
    for name in ("pretrain.json", "finetune.jsonl", "eval.jsonl", "images/train/000007.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    pretrain = json.loads((tmp_path / "a" / "pretrain.json").read_text())
    finetune = [json.loads(x) for x in (tmp_path / "a" / "finetune.jsonl").read_text().splitlines()]
    assert len(pretrain) == 30 and meta.records["finetune"] == len(finetune)
    for record in pretrain:
        parse_record(record, single_exchange=True)
    kinds = {parse_record(r).num_images for r in finetune}
    assert kinds == {0, 1}  # image conversations and text-only records
    assert any(len(r["conversations"]) > 2 for r in finetune)  # multi-turn


def test_eval_answers_come_from_the_image(tmp_path):
    write_corpus(tmp_path, n=5, seed=1, n_eval=40, width=96, height=96)
    questions = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert {q["question_type"] for q in questions} == set(ANSWERS)
    for q in questions:
        assert q["answer"] in ANSWERS[q["question_type"]] and "<image>" not in q["text"]
        if q["question_type"] == "color":  # the named quadrant's centre has that colour
            quadrant = q["text"].split("at the ")[1].split("?")[0]
            row, col = quadrant.split()
            x, y = (24 if col == "left" else 72), (24 if row == "top" else 72)
            pixel = Image.open(tmp_path / q["image"]).convert("RGB").getpixel((x, y))
            expected = COLORS[q["answer"]]
            assert sum(abs(a - b) for a, b in zip(pixel, expected, strict=True)) < 90, (q, pixel)


def test_cli_writes_the_corpus_and_reports_the_baselines(tmp_path, capsys):
    from pipelines.cli import main

    args = ["synth", "--set", f"output={tmp_path}", "--set", "n=12", "--set", "width=64"]
    assert main([*args, "--set", "height=48"]) == 0
    out = capsys.readouterr().out
    assert "12 captions" in out and "chance" in out
    assert json.loads((tmp_path / "synth.json").read_text())["image_size"] == [64, 48]
    assert Image.open(tmp_path / "images" / "train" / "000000.jpg").size == (64, 48)
    assert main([*args, "--set", "n=0"]) == 2  # a clear error, no traceback
    assert "key 'n'" in capsys.readouterr().err


def test_no_turn_of_a_conversation_answers_another(tmp_path):
    """A question that names another turn's answer ("Where is the red circle?" before "What color
    is the shape at the top left?", both about one shape) lets a model copy the answer from the
    conversation; a held-out question, asked alone, has nothing to copy."""
    import re

    write_corpus(tmp_path, n=300, seed=5, n_eval=0)
    records = [json.loads(x) for x in (tmp_path / "finetune.jsonl").read_text().splitlines()]
    asked = 0
    for record in records:
        turns = record["conversations"]
        questions = [t["value"] for t in turns[0::2]]
        answers = [t["value"] for t in turns[1::2]]
        for i, answer in enumerate(answers):
            for j, question in enumerate(questions):
                if i != j:
                    assert not re.search(rf"\b{re.escape(answer)}\b", question), record
        asked += len(answers)
    kinds = Counter(
        next(t for t, words in ANSWERS.items() if a in words)
        for r in records
        for a in [t["value"] for t in r["conversations"][1::2]]
        if any(a in words for words in ANSWERS.values())
    )
    assert asked > 2 * len(records) * 0.9 and min(kinds.values()) > 0.15 * sum(kinds.values())
