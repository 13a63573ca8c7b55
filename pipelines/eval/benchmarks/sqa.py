"""ScienceQA, image questions (SQA-IMG): LLaVA's ``llava_test_CQM-A.json`` (a JSON list of
LLaVA conversations: ``id``, ``image`` for image questions, the human turn holding the context,
the question and the options ``A. ...``) and ScienceQA's ``problems.json`` and ``pid_splits.json``.

The rules of LLaVA's ``model_vqa_science.py`` and ``eval_science_qa.py``: the prompt is the human
turn without ``<image>`` and the instruction "Answer with the option's letter from the given
choices directly."; the letter is the answer when it is exactly one of A-E, or the first character
of an answer starting "X. ", or the one match of "The answer is X."; anything else, or a letter
beyond the problem's choices, is wrong. Every problem of the split is scored; the headline is the
accuracy on the problems with an image. A problem without an answer counts as wrong here in both
accuracies (LLaVA's script drops it from the image accuracy's count instead).
"""

from __future__ import annotations

import re
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

LETTERS = ("A", "B", "C", "D", "E")
INSTRUCTION = "Answer with the option's letter from the given choices directly."
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def letter_of(text: str) -> str | None:
    """LLaVA's reading of a ScienceQA answer: a letter, or None."""
    if text in LETTERS:
        return text
    if len(text) >= 3 and text[0] in LETTERS and text[1:3] == ". ":
        return text[0]
    found = _THE_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else None


class ScienceQaImg(Benchmark):
    name = "sqa_img"
    title = "SQA-IMG"
    headline = "accuracy (%) on the test problems with an image"

    def questions(self, staging: str) -> list[Question]:
        url = self._questions_url()
        records = self.files.json(url, "sqa_img questions")
        if not isinstance(records, list):
            raise InputError(
                f"sqa_img questions {url!r} is not a JSON list (llava_test_CQM-A.json)"
            )
        questions = []
        for number, record in enumerate(records, 1):
            try:
                turn = record["conversations"][0]["value"]
                pid = str(record["id"])
            except (KeyError, IndexError, TypeError):
                raise InputError(
                    f"sqa_img questions {url!r} item {number} is not a LLaVA conversation with an "
                    "id (llava_test_CQM-A.json)"
                ) from None
            text = turn.replace("<image>", "").strip()
            image = record.get("image")
            shown = ("<image>\n" if image else "") + text + "\n" + INSTRUCTION
            prompt = text + "\n" + INSTRUCTION
            questions.append(
                Question(
                    pid, pid, prompt, self.image_url(image) if image else None, {"prompt": shown}
                )
            )
        return questions

    def _truth(self, split: str) -> dict[str, dict[str, Any]]:
        return self.once(f"truth-{split}", lambda: self._truth_read(split))

    def _truth_read(self, split: str) -> dict[str, dict[str, Any]]:
        problems_url = self.files.annotation("problems.json", "sqa_img")
        splits_url = self.files.annotation("pid_splits.json", "sqa_img")
        problems = self.files.json(problems_url, "sqa_img annotations")
        splits = self.files.json(splits_url, "sqa_img annotations")
        if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
            raise InputError(
                f"sqa_img: {splits_url!r} has no list of problem ids for split {split!r}"
            )
        if not isinstance(problems, dict):
            raise InputError(f"sqa_img: {problems_url!r} is not ScienceQA's problems.json")
        truth = {}
        for pid in map(str, splits[split]):
            problem = problems.get(pid)
            if not isinstance(problem, dict) or not {"choices", "answer"} <= set(problem):
                raise InputError(f"sqa_img: problem {pid} of {split!r} is not in {problems_url!r}")
            truth[pid] = problem
        return truth

    def check(self) -> None:
        self._truth(self.split)

    def score(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        truth = self._truth(self.split)
        found = matched(answers, lambda a: str(a.question_id), set(truth), "sqa_img")
        asked = {q.key for q in limit_to} if limit_to is not None else None
        items, with_image = Tally(), Tally(kept=0)
        for pid, problem in truth.items():
            if asked is not None and pid not in asked:
                continue
            answer = found.get(pid)
            letter = letter_of(answer.text) if answer else None
            choices = problem["choices"]
            right = letter in LETTERS[: len(choices)] and LETTERS.index(letter) == problem["answer"]
            item = Item(
                str(problem.get("question")),
                f"{LETTERS[problem['answer']]}. {choices[problem['answer']]}",
                answer.text if answer else None,
                float(right),
                problem.get("subject"),
                self.image_url(f"{pid}/{problem['image']}") if problem.get("image") else None,
            )
            items.add(item)
            if problem.get("image"):
                with_image.add(item)
        if not with_image.n:
            raise InputError("sqa_img: no problem of the split has an image")
        metrics = {
            "img_accuracy": with_image.percent(),
            "accuracy": items.percent(),
        }
        breakdown = with_image.by_category()
        return Scored(
            self.split, metrics["img_accuracy"], metrics, breakdown, items, items.unanswered
        )
