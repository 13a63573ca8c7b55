"""The synthetic corpus itself: scenes of coloured shapes, their captions and questions, the files
``write_corpus`` writes, and ``synth.json`` (:class:`CorpusInfo`) with the eval split's baselines."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

from pipelines.documents import Document
from pipelines.spec import StorageOptions

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 170),
    "orange": (250, 130, 10),
}
SHAPES = ("circle", "square", "triangle")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
SHORT_ANSWER = "Answer the question using a single word or phrase."
ANSWERS: dict[str, tuple[str, ...]] = {
    "count": COUNT_WORDS[1:],
    "color": tuple(COLORS),
    "shape": SHAPES,
    "position": QUADRANTS,
}
# Text-only records (mix665k has them too): facts about the same vocabulary.
TEXT_ONLY = (
    ("How many sides does a triangle have?", "three"),
    ("How many sides does a square have?", "four"),
    ("Which shape has no corners?", "circle"),
    ("Which shape has three corners?", "triangle"),
    ("What color do you get when you mix red and yellow?", "orange"),
    ("What color do you get when you mix red and blue?", "purple"),
    ("What color do you get when you mix blue and yellow?", "green"),
)


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    quadrant: str


def random_scene(rng: random.Random) -> list[Shape]:
    """1-4 shapes in distinct quadrants, each (color, kind) pair unique in the scene."""
    quadrants = rng.sample(QUADRANTS, rng.randint(1, 4))
    pairs = rng.sample([(c, k) for c in COLORS for k in SHAPES], len(quadrants))
    return [Shape(kind=k, color=c, quadrant=q) for q, (c, k) in zip(quadrants, pairs, strict=True)]


def draw_scene(scene: list[Shape], width: int, height: int, rng: random.Random) -> Image.Image:
    grey = rng.randint(225, 255)
    image = Image.new("RGB", (width, height), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    qw, qh = width / 2, height / 2
    for shape in scene:
        row, col = QUADRANTS.index(shape.quadrant) // 2, QUADRANTS.index(shape.quadrant) % 2
        r = rng.uniform(0.26, 0.36) * min(qw, qh)
        cx = (col + 0.5) * qw + rng.uniform(-0.1, 0.1) * qw
        cy = (row + 0.5) * qh + rng.uniform(-0.1, 0.1) * qh
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape.kind == "square":
            s = r * 0.9
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    return image


def caption(scene: list[Shape]) -> str:
    parts = [
        f"{_article(s.color)} {s.color} {s.kind} at the {s.quadrant}" for s in _reading_order(scene)
    ]
    noun = "shape" if len(scene) == 1 else "shapes"
    return f"{COUNT_WORDS[len(scene)]} {noun}: " + " and ".join(parts) + "."


def questions(scene: list[Shape], rng: random.Random) -> list[tuple[str, str, str]]:
    """(question type, question, answer) for each kind of question, in random order. The position
    question asks about another shape than the colour and shape questions where the scene has one."""
    target = rng.choice(scene)
    others = [s for s in scene if s != target]
    located = rng.choice(others) if others else target
    qa = [
        ("count", "How many shapes are there?", COUNT_WORDS[len(scene)]),
        ("color", f"What color is the shape at the {target.quadrant}?", target.color),
        ("shape", f"What shape is at the {target.quadrant}?", target.kind),
        ("position", f"Where is the {located.color} {located.kind}?", located.quadrant),
    ]
    rng.shuffle(qa)
    return qa


def without_leaks(qa: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The questions, in order, less each one whose answer another kept question names, or whose
    text names a kept answer. One conversation's turns must not answer each other: "Where is the red
    circle?" followed by "What color is the shape at the top left?" (the same shape) teaches a model
    to copy the colour from the conversation instead of reading it from the image, and a held-out
    question, asked alone, then has nothing to copy."""
    kept: list[tuple[str, str, str]] = []
    for qtype, question, answer in qa:
        if not any(_names(question, a) or _names(q, answer) for _, q, a in kept):
            kept.append((qtype, question, answer))
    return kept


def _names(text: str, answer: str) -> bool:
    return re.search(rf"\b{re.escape(answer)}\b", text) is not None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _reading_order(scene: list[Shape]) -> list[Shape]:
    return sorted(scene, key=lambda s: QUADRANTS.index(s.quadrant))


def _with_image(text: str, rng: random.Random) -> str:
    """<image> at the start or the end of the first human turn, as LLaVA's files have it."""
    return f"<image>\n{text}" if rng.random() < 0.5 else f"{text}\n<image>"


class Baselines(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    chance: float = Field(description="uniform guessing within each question type's answers")
    majority: float = Field(description="always the type's most common training answer")
    chance_by_type: dict[str, float] = Field(default_factory=dict, description="per type")
    majority_by_type: dict[str, float] = Field(default_factory=dict, description="per type")


class CorpusInfo(Document):
    """``synth.json``: what the corpus holds, and the baselines a trained model must beat."""

    KIND = "synthetic corpus description"
    REMEDY = "re-write the corpus with `stf synth`"

    schema_version: Literal[1] = 1
    n_train_images: int
    n_eval: int
    seed: int
    image_size: tuple[int, int]
    files: dict[str, str]
    records: dict[str, int]
    answers: dict[str, list[str]]
    baselines: Baselines


def write_corpus(
    out: str | Path,
    n: int = 1000,
    seed: int = 0,
    width: int = 96,
    height: int = 72,
    n_eval: int | None = None,
    quality: int = 90,
) -> CorpusInfo:
    """Writes the corpus under ``out`` and returns its ``synth.json``."""
    out = Path(out)
    n_eval = max(20, n // 5) if n_eval is None else n_eval
    rng = random.Random(seed)
    pretrain, finetune, evaluation = [], [], []
    train_answers: dict[str, Counter] = {t: Counter() for t in ANSWERS}

    for split, count in (("train", n), ("eval", n_eval)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            scene = random_scene(rng)
            image_rel = f"images/{split}/{i:06d}.jpg"
            draw_scene(scene, width, height, rng).save(out / image_rel, quality=quality)
            qa = questions(scene, rng)
            if split == "eval":
                evaluation.append(_eval_record(i, image_rel, qa))
                continue
            pretrain.append(_caption_record(i, image_rel, scene, rng))
            finetune.append(_questions_record(i, image_rel, qa, rng, train_answers))
            if i % 10 == 0:
                finetune.append(_text_only_record(i, rng))

    (out / "pretrain.json").write_text(json.dumps(pretrain))
    (out / "finetune.jsonl").write_text("".join(json.dumps(r) + "\n" for r in finetune))
    (out / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evaluation))
    info = CorpusInfo(
        n_train_images=n,
        n_eval=n_eval,
        seed=seed,
        image_size=(width, height),
        files={"pretrain": "pretrain.json", "finetune": "finetune.jsonl", "eval": "eval.jsonl"},
        records={"pretrain": len(pretrain), "finetune": len(finetune), "eval": len(evaluation)},
        answers={t: list(a) for t, a in ANSWERS.items()},
        baselines=eval_baselines(evaluation, train_answers),
    )
    info.write(str(out / "synth.json"), StorageOptions())
    return info


# One record of each kind. Each takes the corpus's one random stream in the order write_corpus
# calls it, so a seed keeps giving the same corpus.


def _eval_record(i: int, image_rel: str, qa: list[tuple[str, str, str]]) -> dict:
    """A held-out question: the scene's first, with the answer to score against."""
    qtype, question, answer = qa[0]
    return {
        "question_id": f"eval-{i:06d}",
        "image": image_rel,
        "text": f"{question}\n{SHORT_ANSWER}",
        "answer": answer,
        "question_type": qtype,
    }


def _caption_record(i: int, image_rel: str, scene: list[Shape], rng: random.Random) -> dict:
    """A pretraining record: the image and its caption."""
    return {
        "id": f"cap-{i:06d}",
        "image": image_rel,
        "conversations": [
            {"from": "human", "value": _with_image("Describe the image briefly.", rng)},
            {"from": "gpt", "value": caption(scene)},
        ],
    }


def _questions_record(
    i: int,
    image_rel: str,
    qa: list[tuple[str, str, str]],
    rng: random.Random,
    train_answers: dict[str, Counter],
) -> dict:
    """A finetuning conversation: two or more of the scene's questions that do not answer each
    other; their answers are counted into ``train_answers`` (the majority baseline)."""
    turns = []
    asked = without_leaks(qa)
    for k, (qtype, question, answer) in enumerate(asked[: rng.randint(2, len(asked))]):
        train_answers[qtype][answer] += 1
        text = f"{question}\n{SHORT_ANSWER}"
        turns.append({"from": "human", "value": _with_image(text, rng) if k == 0 else text})
        turns.append({"from": "gpt", "value": answer})
    return {"id": f"qa-{i:06d}", "image": image_rel, "conversations": turns}


def _text_only_record(i: int, rng: random.Random) -> dict:
    """A text-only exchange, as LLaVA's mix keeps some."""
    question, answer = TEXT_ONLY[rng.randrange(len(TEXT_ONLY))]
    return {
        "id": f"text-{i:06d}",
        "conversations": [
            {"from": "human", "value": question},
            {"from": "gpt", "value": answer},
        ],
    }


def eval_baselines(evaluation: list[dict], train_answers: dict[str, Counter]) -> Baselines:
    """Accuracy on ``evaluation`` of uniform guessing within each question type's answer set, and
    of always giving the type's most common training answer."""
    if not evaluation:
        return Baselines(chance=0.0, majority=0.0)
    majority = {t: c.most_common(1)[0][0] if c else None for t, c in train_answers.items()}
    chance_of = {q["question_id"]: 1 / len(ANSWERS[q["question_type"]]) for q in evaluation}
    hit_of = {q["question_id"]: q["answer"] == majority[q["question_type"]] for q in evaluation}

    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 4)

    types = sorted({q["question_type"] for q in evaluation})
    of_type = {t: [q["question_id"] for q in evaluation if q["question_type"] == t] for t in types}
    return Baselines(
        chance=mean(list(chance_of.values())),
        majority=mean([float(h) for h in hit_of.values()]),
        chance_by_type={t: mean([chance_of[i] for i in ids]) for t, ids in of_type.items()},
        majority_by_type={t: mean([float(hit_of[i]) for i in ids]) for t, ids in of_type.items()},
    )
