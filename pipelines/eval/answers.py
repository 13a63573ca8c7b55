"""LLaVA's answers file: one JSON object per line with ``question_id`` and ``text`` (and
``prompt``, ``answer_id``, ``model_id``, ``metadata``; MMBench adds ``round_id``, ``options`` and
``option_char``), as LLaVA's ``model_vqa_loader`` writes it. ``stf eval`` writes its own answers
in this format and scores any such file, whoever wrote it, on the same rules."""

from __future__ import annotations

import json
from typing import Any

from pipelines.errors import InputError
from pipelines.eval.benchmarks.base import Answer
from pipelines.eval.files import Files
from pipelines.spec import StorageOptions
from pipelines.storage import write_lines


def read_answers(url: str, files: Files, prompt: bool = True) -> list[Answer]:
    """Every line of an answers file, each with a ``question_id`` and a string ``text``
    (``prompt``: keep each line's prompt)."""
    answers = []
    for number, record in enumerate(files.jsonl(url, "answers"), 1):
        if record.get("question_id") is None or not isinstance(record.get("text"), str):
            raise InputError(
                f"answers {url!r} line {number} has no question_id or no text: not an answers "
                "file in LLaVA's format (question_id, prompt, text)"
            )
        answers.append(Answer.of(record, number, prompt))
    if not answers:
        raise InputError(f"answers {url!r} has no answers")
    return answers


def write_answers(url: str, lines: list[dict[str, Any]], storage: StorageOptions) -> None:
    write_lines(url, (json.dumps(line, ensure_ascii=False) + "\n" for line in lines), storage)


def as_answers(lines: list[dict[str, Any]]) -> list[Answer]:
    """Answers file lines (as :func:`write_answers` takes them) as :class:`Answer` records."""
    return [Answer.of(r, n) for n, r in enumerate(lines, 1)]
