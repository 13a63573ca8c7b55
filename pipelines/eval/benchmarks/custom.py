"""A question file of your own (the synthetic corpus's held-out split, or any JSONL or Parquet
table of questions with answers): exact match after a VQA-style normalisation, overall and per
question type, with the chance and majority-answer baselines when the file comes from
``stf synth``."""

from __future__ import annotations

import posixpath
import re
import unicodedata
from typing import Any

from pipelines.errors import InputError
from pipelines.eval.benchmarks.base import (
    Answer,
    Benchmark,
    Item,
    Question,
    Scored,
    by_category,
    matched,
    percent,
)
from pipelines.eval.spec import CustomColumns
from pipelines.infer.rows import read_records
from pipelines.storage import filesystem, fs_path, has_magic, join

_ARTICLES = {"a", "an", "the"}
_DIGITS = {
    str(i): w
    for i, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    )
}
# A decimal point or a thousands comma sits between digits; other punctuation separates words,
# but apostrophes and hyphens join them (don't, t-shirt).
_NUMBER_MARK = re.compile(r"(?<=\d)[.,](?=\d)")


def normalize_answer(text: str) -> str:
    """VQA-style: Unicode compatibility forms folded (NFKC: "２" is "2", full-width and curly
    quotes plain), case folded, punctuation dropped (a decimal point kept, a thousands comma
    removed: "3.5" is not "35", "1,000" is "1000"), articles dropped unless nothing else is
    left (a multiple-choice "A"), digits spelled out, spaces squeezed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _NUMBER_MARK.sub(lambda m: "\ue000" if m.group() == "." else "", text)
    text = "".join(_word_char(c) for c in text).replace("\ue000", ".")
    words = [_DIGITS.get(w, w) for w in text.split()]
    return " ".join([w for w in words if w not in _ARTICLES] or words)


def _word_char(char: str) -> str:
    if char in "'\u2019":  # apostrophes join: "don't" is "dont"
        return ""
    if char in "-\ue000":  # hyphens, and the decimal points marked above, stay
        return char
    return " " if unicodedata.category(char).startswith(("P", "S")) else char


def is_correct(prediction: str | None, answer: str) -> bool:
    """The prediction equals the answer once both are normalised (no prediction: wrong)."""
    predicted = normalize_answer(prediction or "")
    return bool(predicted) and predicted == normalize_answer(str(answer))


class Custom(Benchmark):
    name = "custom"
    title = "custom questions"
    headline = "accuracy (%), exact match after normalisation"
    default_split = "eval"
    columns = CustomColumns()

    def _records(self) -> list[dict[str, Any]]:
        """The question file's records, each with an id, a question and an answer (a question
        without text would be asked nothing); read once per run."""
        return self.once("records", self._read_records)

    def _read_records(self) -> list[dict[str, Any]]:
        url = self._questions_url()
        if has_magic(url) and not filesystem(url, self.files.storage).isfile(fs_path(url)):
            raise InputError(f"questions {url!r}: name one file, not a pattern")
        records = read_records(url, self.files.storage)
        c = self.columns
        for number, record in enumerate(records, 1):
            for column in (c.id, c.question, c.answer, c.image):
                if record.get(column) in (None, ""):
                    raise InputError(
                        f"{url} question {number} has no {column!r} (custom.id / question / "
                        "answer / image)"
                    )
        ids = [str(r[c.id]) for r in records]
        if len(set(ids)) != len(ids):
            raise InputError(f"{url}: question ids repeat")
        return records

    def questions(self, staging: str) -> list[Question]:
        c = self.columns
        root = self.images or posixpath.dirname(self._questions_url())
        questions = []
        for record in self._records():
            try:
                values = {**record, "question": record[c.question], "prompt": record[c.question]}
                prompt = c.prompt_template.format_map(values)
            except KeyError as err:
                raise InputError(
                    f"custom.prompt_template names {err}, which the questions lack"
                ) from None
            image = str(record[c.image])
            url = image if image.startswith(("s3://", "/")) else join(root, image)
            questions.append(Question(str(record[c.id]), record[c.id], prompt, url))
        return questions

    def check(self) -> None:
        self._records()

    def score(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        c = self.columns
        records = {str(r[c.id]): r for r in self._records()}
        found = matched(answers, lambda a: str(a.question_id), set(records), "the question file")
        asked = {q.key for q in limit_to} if limit_to is not None else None
        root = self.images or posixpath.dirname(self._questions_url())
        items = []
        for key, record in records.items():
            if asked is not None and key not in asked:
                continue
            answer = found.get(key)
            kind = record.get(c.type)
            image = str(record[c.image])
            items.append(
                Item(
                    str(record[c.question]),
                    str(record[c.answer]),
                    answer.text if answer else None,
                    float(is_correct(answer.text if answer else None, str(record[c.answer]))),
                    None if kind in (None, "") else str(kind),
                    image if image.startswith(("s3://", "/")) else join(root, image),
                )
            )
        accuracy = percent(i.score for i in items)
        breakdown = by_category(items) if any(i.category for i in items) else {}
        metrics = {"accuracy": accuracy}
        unanswered = sum(1 for i in items if i.prediction is None)
        return Scored(self.split, accuracy, metrics, breakdown, items, unanswered)
