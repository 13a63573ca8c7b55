"""GQA (testdev-balanced): LLaVA's ``llava_gqa_testdev_balanced.jsonl`` and GQA's
``testdev_balanced_questions.json`` (question id -> question, answer, isBalanced, types).

The rules of LLaVA's ``convert_gqa_for_eval.py`` and GQA's ``eval.py``: the prediction is the
answer with every trailing "." removed, lower-cased, and it must equal the answer exactly; the
accuracy is over the balanced questions, with the binary (yes/no, choose, compare...) and open
("query") questions beside it, and each semantic type.
"""

from __future__ import annotations

from typing import Any

from pipelines.errors import InputError
from pipelines.eval.benchmarks.base import (
    Answer,
    Benchmark,
    Item,
    Question,
    Scored,
    Tally,
    matched,
)


def prediction(text: str) -> str:
    """LLaVA's GQA answer: trailing periods removed, lower case."""
    return text.rstrip(".").lower()


class Gqa(Benchmark):
    name = "gqa"
    title = "GQA"
    headline = "accuracy (%) on the balanced test-dev questions"
    default_split = "testdev_balanced"

    def questions(self, staging: str) -> list[Question]:
        rows = self.question_records()
        keys = [str(r["question_id"]) for r in rows]
        if len(set(keys)) != len(keys):
            raise InputError(f"gqa questions {self.questions_url!r}: question ids repeat")
        return [
            Question(k, r["question_id"], r["text"], self.image_url(r["image"]))
            for k, r in zip(keys, rows, strict=True)
        ]

    def _truth(self) -> dict[str, dict[str, Any]]:
        return self.once("_truth", self._truth_read)

    def _truth_read(self) -> dict[str, dict[str, Any]]:
        url = self.files.single("gqa", "testdev_balanced_questions.json")
        truth = self.files.json(url, "gqa annotations")
        if not isinstance(truth, dict) or not all(
            isinstance(q, dict) and "answer" in q for q in list(truth.values())[:100]
        ):
            raise InputError(
                f"gqa annotations {url!r} is not GQA's questions file (an object of question ids "
                "to questions with an 'answer')"
            )
        return truth

    def check(self) -> None:
        self._truth()

    def score(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        truth = self._truth()
        found = matched(answers, lambda a: str(a.question_id), set(truth), "gqa")
        asked = {q.key for q in limit_to} if limit_to is not None else None
        items, kinds = Tally(), {"binary": Tally(kept=0), "open": Tally(kept=0)}
        for qid, question in truth.items():
            if not question.get("isBalanced", True) or (asked is not None and qid not in asked):
                continue
            answer = found.get(qid)
            right = answer is not None and prediction(answer.text) == question["answer"]
            types = question.get("types") or {}
            item = Item(
                str(question.get("question", qid)),
                str(question["answer"]),
                answer.text if answer else None,
                float(right),
                types.get("semantic"),
                self.image_url(f"{question['imageId']}.jpg") if "imageId" in question else None,
            )
            items.add(item)
            kinds["open" if types.get("structural") == "query" else "binary"].add(item)
        if not items.n:
            raise InputError("gqa: the annotations hold no balanced question to score")
        metrics = {"accuracy": items.percent()}
        metrics |= {k: kind.percent() for k, kind in kinds.items() if kind.n}
        return Scored(
            self.split, metrics["accuracy"], metrics, items.by_category(), items, items.unanswered
        )
