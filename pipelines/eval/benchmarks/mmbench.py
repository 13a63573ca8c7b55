"""MMBench and MMBench-CN (dev): the ``.tsv`` of questions with base64 images, options A-D, the
answer letter, the category and l2-category.

Circular evaluation, as MMBench scores it: a question with N options is asked N times, the options
shifted round by one each time (``index + k * 1,000,000``, the answer letter shifted with them),
and it counts only when every round is right. A TSV that already holds the shifted rows (index of
a million or more, as LLaVA's ``mmbench_dev_20230712.tsv``) is asked as it is; otherwise the rounds
are made here. The prompt is LLaVA's ``model_vqa_mmbench.py``'s: the hint (when there is one), the
question, the options ``A. ...``, then the instruction ("Answer with the option's letter from the
given choices directly.", or "请直接回答选项字母。" for MMBench-CN). Answers made elsewhere that
cover only the TSV's own rows are scored on those rows, as MMBench's evaluator groups the rows
it has (the report's ``rounds_per_question`` is then 1). The letter is read from the answer
with VLMEvalKit's ``can_infer`` (an option letter standing alone, else the one option whose text
the answer contains), MMBench's rule-based matching without the ChatGPT fallback. A TSV without
answers (the test split) gives the ``.xlsx`` MMBench's server takes, as LLaVA's
``convert_mmbench_for_submission.py`` writes it.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from PIL import Image, UnidentifiedImageError

from pipelines.errors import InputError
from pipelines.eval.benchmarks.base import (
    Answer,
    Benchmark,
    Item,
    Question,
    Scored,
    Tally,
    matched,
    percent,
)
from pipelines.storage import join, write_bytes

ROUND = 1_000_000
OPTIONS = ("A", "B", "C", "D")
INSTRUCTIONS = {
    "mmbench": "Answer with the option's letter from the given choices directly.",
    "mmbench_cn": "请直接回答选项字母。",
}
_SEPARATORS = ".()[],:;!*#{}"
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
# The columns LLaVA's convert_mmbench_for_submission.py drops from the TSV for the upload.
_NOT_UPLOADED = ("hint", "category", "source", "image", "comment", "l2-category")

Row = dict[str, str]


# The cells pandas reads as NaN by default (LLaVA's scripts and VLMEvalKit read the TSV with it).
PANDAS_NA = frozenset(
    ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN")
    + ("<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
)


def is_none(value: Any) -> bool:
    """LLaVA's test for an absent cell, on the cells pandas would have read as NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, str) and (value in PANDAS_NA or value.lower() in ("nan", "none"))


def options_of(row: Row) -> list[str]:
    """The row's options, from A up to the first absent one."""
    options = []
    for letter in OPTIONS:
        if is_none(row.get(letter)):
            break
        options.append(row[letter])
    return options


def _letter_alone(answer: str, choices: dict[str, str]) -> str | None:
    if "Failed to obtain answer via API" in answer:
        return None
    if any(refusal in answer for refusal in _REFUSALS):
        return "Z"
    spaced = answer
    for char in _SEPARATORS:
        spaced = spaced.replace(char, " ")
    words = [w.strip() for w in spaced.split()]
    named = [letter for letter in choices if letter in words]
    if len(named) == 1:
        return named[0]
    return "Z" if not named and "Z" in words else None


def can_infer(answer: str, choices: dict[str, str]) -> str | None:
    """The option an answer gives, as VLMEvalKit's ``can_infer`` reads it: a letter standing
    alone (separators ``.()[],:;!*#{}`` made spaces), "Z" for a refusal, else the one option
    whose text (lower-cased) the answer contains; None when neither decides."""
    letter = _letter_alone(answer, choices)
    if letter:
        return letter
    lowered = answer.lower()
    contained = [k for k, text in choices.items() if str(text).lower() in lowered]
    return contained[0] if len(contained) == 1 else None


def rounds(row: Row) -> list[Row]:
    """A question's circular rounds: round k shows the options shifted left k times, its index is
    ``index + k * ROUND`` and its answer letter moves with its option."""
    options = options_of(row)
    out = []
    for k in range(len(options)):
        shifted = dict(zip(OPTIONS, options[k:] + options[:k], strict=False))
        rotated = {
            **row,
            **{o: "" for o in OPTIONS},
            **shifted,
            "index": str(int(row["index"]) + k * ROUND),
        }
        if row.get("answer", "") in OPTIONS[: len(options)]:
            rotated["answer"] = OPTIONS[(OPTIONS.index(row["answer"]) - k) % len(options)]
        out.append(rotated)
    return out


class MmBench(Benchmark):
    name = "mmbench"
    title = "MMBench"
    headline = "circular accuracy (%) on the dev questions"
    default_split = "dev"

    def _rows(self, with_rounds: bool) -> dict[int, Row]:
        """The TSV's rows by index; ``with_rounds``: with the circular rounds made when the TSV
        has none (the rows asked here; answers made elsewhere may cover the TSV's rows only,
        and are then scored on those, as MMBench's evaluator does)."""
        return self.once(f"rows-{with_rounds}", lambda: self._rows_read(with_rounds))

    def _rows_read(self, with_rounds: bool) -> dict[int, Row]:
        url = self._questions_url()
        rows = self.files.tsv(url, f"{self.name} questions")
        missing = {"index", "question", "A", "B", "image"} - set(rows[0])
        if missing:
            raise InputError(
                f"{self.name} questions {url!r} has no column {', '.join(sorted(missing))}: not "
                "an MMBench .tsv"
            )
        for number, row in enumerate(rows, 2):
            if not row["index"].isdigit():
                raise InputError(
                    f"{self.name} questions {url!r} line {number}: index {row['index']!r}"
                )
        if with_rounds and not any(int(r["index"]) >= ROUND for r in rows):
            rows = [rotated for row in rows for rotated in rounds(row)]
        by_index = {int(r["index"]): r for r in rows}
        if len(by_index) != len(rows):
            raise InputError(f"{self.name} questions {url!r}: indices repeat")
        if self.files.annotations:
            self._take_answers(by_index)
        return by_index

    def _take_answers(self, rows: dict[int, Row]) -> None:
        """The answer letters of ``annotations`` (the dev TSV), by index."""
        url = self.files.single(self.name, "mmbench_dev.tsv")
        truth = {
            int(r["index"]): r.get("answer", "")
            for r in self.files.tsv(url, f"{self.name} annotations")
        }
        for index, row in rows.items():
            if index in truth:
                row["answer"] = truth[index]
            elif index % ROUND in truth and index >= ROUND:
                main = rows[index % ROUND]
                row["answer"] = rounds({**main, "answer": truth[index % ROUND]})[index // ROUND][
                    "answer"
                ]
            else:
                raise InputError(
                    f"{self.name}: annotations {url!r} has no answer for question {index}"
                )

    def questions(self, staging: str) -> list[Question]:
        rows = self._rows(with_rounds=True)
        images = self._images(rows, staging)
        questions = []
        for index, row in rows.items():
            options = options_of(row)
            text = (
                row["question"] if is_none(row.get("hint")) else f"{row['hint']}\n{row['question']}"
            )
            text += "".join(
                f"\n{letter}. {option}" for letter, option in zip(OPTIONS, options, strict=False)
            )
            recorded = {
                "round_id": 0,
                "prompt": text,
                "options": options,
                "option_char": list(OPTIONS[: len(options)]),
            }
            prompt = f"{text}\n{INSTRUCTIONS[self.name]}"
            questions.append(Question(str(index), index, prompt, images[index % ROUND], recorded))
        return questions

    def first(self, questions: list[Question], limit: int) -> list[Question]:
        """Every round of the first ``limit`` questions."""
        mains = list(dict.fromkeys(q.question_id % ROUND for q in questions))[:limit]
        return [q for q in questions if q.question_id % ROUND in set(mains)]

    def _images(self, rows: dict[int, Row], staging: str) -> dict[int, str]:
        """Each question's image, decoded once from its base64 cell into ``staging/images`` (a
        shifted round's cell may hold its main row's index instead of the image)."""
        urls: dict[int, str] = {}
        for index, row in rows.items():
            main = index % ROUND
            if main in urls:
                continue
            cell = row["image"]
            if cell.isdigit():
                cell = rows.get(int(cell), rows.get(main, row))["image"]
            try:
                data = base64.b64decode(cell, validate=True)
                with Image.open(io.BytesIO(data)) as image:
                    suffix = (image.format or "png").lower()
            except (ValueError, UnidentifiedImageError):
                raise InputError(
                    f"{self.name}: the image of question {index} is not a base64 image"
                ) from None
            urls[main] = join(staging, "images", f"{main}.{suffix}")
            write_bytes(urls[main], data, self.files.storage)
        return urls

    def score(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        asked = [self._row_of(a) for a in answers] + [q.question_id for q in limit_to or []]
        rows = self._rows(with_rounds=any(i is not None and i >= ROUND for i in asked))
        found = matched(answers, self._row_of, set(rows), self.name)
        if not all(r.get("answer") in OPTIONS for r in rows.values()):
            return self._submission(rows, found)
        asked = {q.question_id % ROUND for q in limit_to} if limit_to is not None else None
        groups: dict[int, list[Row]] = {}
        for index, row in sorted(rows.items()):
            if asked is None or index % ROUND in asked:
                groups.setdefault(index % ROUND, []).append(row)
        items, first_round, l2 = Tally(), [], {}
        for group in groups.values():
            given = [found.get(int(row["index"])) for row in group]
            right = [
                a is not None and self._reads(row, a) == row["answer"]
                for row, a in zip(group, given, strict=True)
            ]
            head = group[0]
            first_round.append(float(right[0]))
            items.add(
                Item(
                    head["question"],
                    f"{head['answer']}. {head.get(head['answer'], '')}",
                    None if any(a is None for a in given) else given[0].text,
                    float(all(right)),
                    head.get("category") or None,
                    None,
                )
            )
            l2.setdefault(head.get("l2-category") or "other", []).append(float(all(right)))
        rounds_per_question = sum(map(len, groups.values())) / max(len(groups), 1)
        return self._scored(items, first_round, l2, rounds_per_question)

    @staticmethod
    def _row_of(answer: Answer) -> int | None:
        """The row an answer is for: its ``question_id`` (``index + k * ROUND``), or, as LLaVA's
        ``model_vqa_mmbench.py --all-rounds`` writes it, the question's index and ``round_id``."""
        try:
            index, round_id = int(answer.question_id), int(answer.round_id or 0)
        except (TypeError, ValueError):
            return None
        return index + round_id * ROUND if index < ROUND else index

    @staticmethod
    def _reads(row: Row, answer: Answer) -> str | None:
        return can_infer(answer.text, {o: row[o] for o in OPTIONS if not is_none(row.get(o))})

    def _scored(
        self, items: Tally, first_round: list[float], l2: dict, rounds_per_question: float
    ) -> Scored:
        metrics = {
            "circular_accuracy": items.percent(),
            "first_round_accuracy": percent(first_round),
            "rounds_per_question": rounds_per_question,  # 1: the TSV's rows only were answered
        }
        metrics |= {f"l2:{k}": percent(v) for k, v in sorted(l2.items())}
        return Scored(
            self.split,
            metrics["circular_accuracy"],
            metrics,
            items.by_category(),
            items,
            items.unanswered,
        )

    def _submission(self, rows: dict[int, Row], found: dict) -> Scored:
        """The .xlsx MMBench's server takes: the TSV's rows without the image and the columns
        LLaVA drops, the raw answer as ``prediction`` in the seventh column."""
        import pandas as pd

        table = pd.DataFrame(
            [{k: v for k, v in r.items() if k not in _NOT_UPLOADED} for r in rows.values()]
        )
        predictions = [found[i].text if i in found else None for i in rows]
        table["index"] = table["index"].astype(int)
        table.insert(min(6, len(table.columns)), "prediction", predictions)
        buffer = io.BytesIO()
        table.to_excel(buffer, index=False, engine="openpyxl")
        unanswered = sum(1 for i in rows if i not in found)
        name = f"{self.name}_{self.split}_submission.xlsx"
        return Scored(self.split, None, {}, {}, Tally(), unanswered, (name, buffer.getvalue()))


class MmBenchCn(MmBench):
    name = "mmbench_cn"
    title = "MMBench-CN"
