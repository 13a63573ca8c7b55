"""A question file of your own (the synthetic corpus's held-out split, or any JSONL or Parquet
table of questions with answers): exact match after a VQA-style normalisation, overall and per
question type, with the chance and majority-answer baselines when the file comes from
``stf synth``."""

from __future__ import annotations

import posixpath
import re
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import InputError
from pipelines.eval.benchmarks.base import (
    SHARED_TEXT,
    Answer,
    Benchmark,
    Item,
    Question,
    Scored,
    Tally,
    matched,
)
from pipelines.eval.spec import CustomColumns
from pipelines.infer.rows import iter_records
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


@dataclass
class Rows:
    """What scoring holds of the question file: each question's position by id, and at each
    position its answer and type (its question and image are read again for the report)."""

    position: dict[str, int] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)
    kinds: list[str | None] = field(default_factory=list)


class Custom(Benchmark):
    name = "custom"
    title = "custom questions"
    headline = "accuracy (%), exact match after normalisation"
    default_split = "eval"
    columns = CustomColumns()

    def _rows(self) -> Rows:
        """The question file's rows by id, each with a question and an answer (a question
        without text would be asked nothing); read once per run."""
        return self.once("rows", self._read_rows)

    def _read_rows(self) -> Rows:
        c = self.columns
        rows = Rows()
        for position, key, record in self._records({c.id, c.question, c.answer, c.image, c.type}):
            if key in rows.position:
                raise InputError(f"{self.questions_url}: question id {key!r} repeats")
            kind, answer = record.get(c.type), str(record[c.answer])
            rows.position[key] = position
            rows.answers.append(sys.intern(answer) if len(answer) <= SHARED_TEXT else answer)
            rows.kinds.append(None if kind in (None, "") else sys.intern(str(kind)))
        return rows

    def _records(self, columns: set[str] | None = None) -> Iterator[tuple[int, str, dict]]:
        """The question file's records (with ``columns``; None: all) with their positions and
        ids; each checked to have an id, a question, an answer and an image."""
        url = self._questions_url()
        if has_magic(url) and not filesystem(url, self.files.storage).isfile(fs_path(url)):
            raise InputError(f"questions {url!r}: name one file, not a pattern")
        c = self.columns
        for number, record in enumerate(iter_records(url, self.files.storage, columns), 1):
            for column in (c.id, c.question, c.answer, c.image):
                if record.get(column) in (None, ""):
                    raise InputError(
                        f"{url} question {number} has no {column!r} (custom.id / question / "
                        "answer / image)"
                    )
            yield number - 1, str(record[c.id]), record

    def _image_url(self, record: dict[str, Any]) -> str:
        image = str(record[self.columns.image])
        root = self.images or posixpath.dirname(self._questions_url())
        return image if image.startswith(("s3://", "/")) else join(root, image)

    def questions(self, staging: str) -> list[Question]:
        c = self.columns
        questions = []
        for _, key, record in self._records():
            try:
                values = {**record, "question": record[c.question], "prompt": record[c.question]}
                prompt = c.prompt_template.format_map(values)
            except KeyError as err:
                raise InputError(
                    f"custom.prompt_template names {err}, which the questions lack"
                ) from None
            questions.append(Question(key, record[c.id], prompt, self._image_url(record)))
        return questions

    def check(self) -> None:
        self._rows()

    def score(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        rows = self._rows()
        found = matched(answers, lambda a: str(a.question_id), rows.position, "the question file")
        asked = {q.key for q in limit_to} if limit_to is not None else None
        items = Tally()
        for key, position in rows.position.items():
            if asked is not None and key not in asked:
                continue
            answer = found.get(key)
            prediction = answer.text if answer else None
            expected = rows.answers[position]
            items.add(
                Item(
                    "",  # described below, for the items the report keeps
                    expected,
                    prediction,
                    float(is_correct(prediction, expected)),
                    rows.kinds[position],
                    ref=position,
                )
            )
        items.describe(self._described)
        accuracy = items.percent()
        breakdown = items.by_category() if items.categorised else {}
        return Scored(
            self.split, accuracy, {"accuracy": accuracy}, breakdown, items, items.unanswered
        )

    def _described(self, positions: set[int]) -> dict[int, tuple[str, str]]:
        """The question and image of these questions, read again from the question file."""
        c = self.columns
        return {
            position: (str(record[c.question]), self._image_url(record))
            for position, _, record in self._records({c.id, c.question, c.answer, c.image})
            if position in positions
        }
