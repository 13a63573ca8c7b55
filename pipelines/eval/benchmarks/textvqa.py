"""TextVQA (val): LLaVA's ``llava_textvqa_val_v051_ocr.jsonl`` (the question, a line of OCR
tokens, the instruction; ``question_id`` is the image id, shared by an image's questions) and
``TextVQA_0.5.1_val.json`` (``data``: image_id, question, the 10 human answers).

The rules of LLaVA's ``eval_textvqa.py``: an answer finds its question by the image id and the
question read back from its prompt (the first line, or the second when the prompt starts with the
OCR line), lower-cased; the score is the VQA accuracy of the prediction against the 10 answers,
both through EvalAI's answer processor. Two questions with the same image and text are matched in
order (LLaVA's dictionary would score both against the last).
"""

from __future__ import annotations

import re
from typing import Any

from pipelines.errors import InputError
from pipelines.eval.benchmarks.base import (
    QUOTED,
    Answer,
    Benchmark,
    Item,
    Question,
    Scored,
    Tally,
)
from pipelines.eval.vqa_accuracy import textvqa_accuracy

Key = tuple[str, str]


def question_of(prompt: str) -> str:
    """LLaVA's ``prompt_processor``: the question a TextVQA prompt asks, lower-cased."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match is None:
            raise ValueError(prompt)
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(prompt)
    return question.lower()


class TextVqa(Benchmark):
    name = "textvqa"
    title = "TextVQA"
    headline = "VQA accuracy (%) on the val questions"
    reads_prompt = True
    default_split = "val"

    def questions(self, staging: str) -> list[Question]:
        return [
            Question(
                f"{number:06d}",
                r["question_id"],
                r["text"],
                self.image_url(r["image"]),
            )
            for number, r in enumerate(self.question_records())
        ]

    def _truth(self) -> dict[Key, list[dict[str, Any]]]:
        return self.once("_truth", self._truth_read)

    def _truth_read(self) -> dict[Key, list[dict[str, Any]]]:
        url = self.files.single("textvqa", "TextVQA_0.5.1_val.json")
        data = self.files.json(url, "textvqa annotations")
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and {"image_id", "question", "answers"} <= set(e) for e in entries
        ):
            raise InputError(
                f"textvqa annotations {url!r} is not TextVQA's annotation file (an object whose "
                "'data' lists image_id, question and answers)"
            )
        truth: dict[Key, list[dict[str, Any]]] = {}
        for entry in entries:
            truth.setdefault((str(entry["image_id"]), entry["question"].lower()), []).append(entry)
        return truth

    def check(self) -> None:
        self._truth()

    def _key(self, question_id: Any, prompt: str, where: str) -> Key:
        try:
            return (str(question_id), question_of(prompt))
        except ValueError:
            raise InputError(
                f"textvqa: {where} has a prompt LLaVA's TextVQA scorer cannot read a question "
                f"from (question, OCR line, instruction): {prompt[:120]!r}"
            ) from None

    def _assign(
        self, answers: list[Answer], truth: dict[Key, list[dict[str, Any]]]
    ) -> dict[int, Answer]:
        """Each answer's annotation (by id()), in order among equal keys."""
        taken: dict[Key, int] = {}
        assigned, strays = {}, []
        for answer in answers:
            key = self._key(answer.question_id, answer.prompt, f"answers line {answer.line}")
            entries = truth.get(key, [])
            if taken.get(key, 0) >= len(entries):
                strays.append(answer)
                continue
            assigned[id(entries[taken.get(key, 0)])] = answer
            taken[key] = taken.get(key, 0) + 1
        if strays:
            quoted = ", ".join(f"line {a.line}: {a.question_id!r}" for a in strays[:QUOTED])
            raise InputError(
                f"{len(strays)} answers are not in textvqa's ground truth or answer a question "
                f"twice ({quoted})"
            )
        return assigned

    def score(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        truth = self._truth()
        assigned = self._assign(answers, truth)
        universe = [e for entries in truth.values() for e in entries]
        if limit_to is not None:
            asked = [Answer(q.question_id, "", q.prompt, None, n) for n, q in enumerate(limit_to)]
            chosen = self._assign(asked, truth)
            universe = [e for e in universe if id(e) in chosen]
        items = Tally()
        for entry in universe:
            answer = assigned.get(id(entry))
            humans = [str(a) for a in entry["answers"]]
            items.add(
                Item(
                    entry["question"],
                    " / ".join(humans),
                    answer.text if answer else None,
                    textvqa_accuracy(answer.text, humans) if answer else 0.0,
                    None,
                    self.image_url(f"{entry['image_id']}.jpg"),
                )
            )
        accuracy = items.percent()
        return Scored(self.split, accuracy, {"accuracy": accuracy}, {}, items, items.unanswered)
