"""Short-answer accuracy on a held-out question file (the synthetic eval split, or any LLaVA-style
question file with ``answer``), with VQA-style answer normalisation.

This is the in-process evaluator `make demo` uses after training; the Ray Data batch-inference
job (`stf eval`) reuses :func:`normalize_answer` and :func:`score`.
"""

from __future__ import annotations

import json
import string
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from stf_model import load_model_dir

_ARTICLES = {"a", "an", "the"}
_DIGITS = {
    str(i): w
    for i, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    )
}


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, spell out digits, squeeze spaces (VQA-style)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation.replace("-", "")))
    words = [_DIGITS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def score(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and per ``question_type`` from rows with ``answer`` and ``prediction``."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    for row in predictions:
        hit = normalize_answer(row["prediction"]) == normalize_answer(str(row["answer"]))
        by_type[row.get("question_type") or "all"].append(hit)
    hits = [h for values in by_type.values() for h in values]
    return {
        "n": len(hits),
        "accuracy": sum(hits) / len(hits) if hits else 0.0,
        "by_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
    }


def evaluate_questions(
    model_dir: str, questions: str | Path, limit: int | None = None, batch_size: int = 16
) -> dict[str, Any]:
    """Greedy answers from a model directory to each question (images relative to the file)."""
    questions = Path(questions)
    rows = [json.loads(line) for line in questions.read_text().splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    model, processor = load_model_dir(model_dir)
    model.eval()
    processor.tokenizer.padding_side = "left"  # generation continues from the right edge
    predictions = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = [
            processor.apply_chat_template(
                [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": r["text"]}],
                    }
                ],
                add_generation_prompt=True,
                tokenize=False,
            )
            for r in chunk
        ]
        images = [Image.open(questions.parent / r["image"]).convert("RGB") for r in chunk]
        inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        answers = processor.batch_decode(
            out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for row, answer in zip(chunk, answers, strict=True):
            predictions.append({**row, "prediction": answer.strip()})
    report = score(predictions)
    meta = questions.parent / "synth.json"
    if meta.exists():
        report["baselines"] = json.loads(meta.read_text())["baselines"]
    report["examples"] = [
        {k: p[k] for k in ("text", "answer", "prediction")} for p in predictions[:5]
    ]
    return report
