"""What every benchmark provides, and the records its pieces exchange.

A benchmark reads its published question file into :class:`Question` rows (what the model is
asked, and what LLaVA's answers file records for it), and scores a list of :class:`Answer` lines
(LLaVA's answers file, whoever wrote it) against its ground truth into a :class:`Scored`. The
universe of a score is the ground truth: an item without an answer is counted, and counted wrong.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipelines.errors import InputError
from pipelines.eval.files import Files
from pipelines.storage import join

# How many offending ids an error quotes.
QUOTED = 3


@dataclass(frozen=True)
class Question:
    """One row the model answers. ``key`` is unique within a run (several of a benchmark's
    questions can share its ``question_id``: TextVQA's image id, MME's image path)."""

    key: str
    question_id: Any
    prompt: str
    image: str | None
    recorded: dict[str, Any] = field(default_factory=dict)  # answers-file fields; its prompt
    # is ``prompt`` unless this says otherwise (ScienceQA, MMBench record another)

    def answer_line(self, text: str, model_id: str) -> dict[str, Any]:
        """This question's line of LLaVA's answers file."""
        return {
            "question_id": self.question_id,
            "prompt": self.prompt,
            **self.recorded,
            "text": text,
            "answer_id": self.key,
            "model_id": model_id,
            "metadata": {},
        }


@dataclass(frozen=True)
class Answer:
    """One line of LLaVA's answers file (``question_id`` and ``text``; ``prompt`` and the rest
    where the benchmark's scorer reads them)."""

    question_id: Any
    text: str
    record: dict[str, Any]
    line: int

    @property
    def prompt(self) -> str:
        return str(self.record.get("prompt") or "")


@dataclass(frozen=True)
class Item:
    """One scored ground-truth item, for the report's examples."""

    question: str
    expected: str
    prediction: str | None  # None: no answer
    score: float  # 1 right, 0 wrong, or a VQA soft score
    category: str | None = None
    image: str | None = None


@dataclass
class Scored:
    """A benchmark's result: ``score`` is the headline as papers report it (None when the split's
    answers are not public and the score comes from the benchmark's server)."""

    split: str
    score: float | None
    metrics: dict[str, float]
    breakdown: dict[str, dict[str, float]]
    items: list[Item]
    unanswered: int
    submission: tuple[str, bytes] | None = None  # (file name, content) for the server


class Benchmark(ABC):
    """One benchmark: its question file, its ground truth and its official rules."""

    name: ClassVar[str]
    title: ClassVar[str]  # as papers name it
    headline: ClassVar[str]  # what the score is
    default_split: ClassVar[str] = "test"
    needs_questions_to_score: ClassVar[bool] = False

    def __init__(
        self, files: Files, questions: str | None, images: str | None, split: str | None = None
    ):
        self.files = files
        self.questions_url = questions
        self.images = images
        self.split = split or self.default_split
        self._read: dict[str, Any] = {}

    def once(self, name: str, read: Callable[[], Any]) -> Any:
        """``read()``'s result, read once per run (a ground truth is checked, used to check the
        questions and then to score; VQAv2's val annotations alone are over 100 MB of JSON)."""
        if name not in self._read:
            self._read[name] = read()
        return self._read[name]

    @abstractmethod
    def questions(self, staging: str) -> list[Question]:
        """The rows to generate for (``staging``: a folder the benchmark may write images to)."""

    def check(self) -> None:  # noqa: B027 (optional hook)
        """Reads and checks the ground truth before any model loads (the default reads it when
        scoring)."""

    @abstractmethod
    def score(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        """Scores ``answers``; ``limit_to``: only the ground truth of these questions (a run with
        ``limit``)."""

    # -- helpers for the benchmarks --

    def question_records(self) -> list[dict[str, Any]]:
        """LLaVA's JSONL question file, each line with ``question_id``, ``image`` and ``text``."""
        return self.once("questions", self._question_records)

    def _question_records(self) -> list[dict[str, Any]]:
        url = self._questions_url()
        records = self.files.jsonl(url, f"{self.name} questions")
        for number, record in enumerate(records, 1):
            missing = [k for k in ("question_id", "image", "text") if record.get(k) in (None, "")]
            if missing:
                raise InputError(
                    f"{self.name} questions {url!r} line {number} has no {', '.join(missing)}: "
                    f"not LLaVA's question file for {self.title}"
                )
        if not records:
            raise InputError(f"{self.name} questions {url!r} has no questions")
        return records

    def _questions_url(self) -> str:
        if self.questions_url is None:
            raise InputError(f"{self.name}: questions is required (LLaVA's question file)")
        return self.questions_url

    def image_url(self, relative: str) -> str:
        """An image path of a question file, under ``images`` (default: the question file's
        folder)."""
        root = self.images or (
            posixpath.dirname(self.questions_url) if self.questions_url else None
        )
        if relative.startswith(("s3://", "/")) or root is None:
            return relative
        return join(root, relative)

    def first(self, questions: list[Question], limit: int) -> list[Question]:
        """The questions a run with ``limit`` asks."""
        return questions[:limit]


def matched(
    answers: Iterable[Answer],
    key: Callable[[Answer], Hashable],
    universe: set,
    what: str,
) -> dict[Hashable, Answer]:
    """Each answer by its ground-truth key; an answer whose key is not in ``universe`` or that
    repeats one is an :class:`InputError` naming them (another benchmark's answers, or answers
    concatenated twice)."""
    found: dict[Hashable, Answer] = {}
    strays, twice = [], []
    for answer in answers:
        k = key(answer)
        if k not in universe:
            strays.append(answer)
        elif k in found:
            twice.append(answer)
        else:
            found[k] = answer
    if strays:
        quoted = ", ".join(f"line {a.line}: {a.question_id!r}" for a in strays[:QUOTED])
        raise InputError(
            f"{len(strays)} answers are not in {what}'s ground truth ({quoted}): answers of "
            "another benchmark or split?"
        )
    if twice:
        quoted = ", ".join(f"line {a.line}: {a.question_id!r}" for a in twice[:QUOTED])
        raise InputError(f"{len(twice)} answers repeat an answered question ({quoted})")
    return found


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def percent(values: Iterable[float]) -> float:
    """The mean of 0-1 scores, in percent, as papers report it."""
    return 100.0 * mean(values)


def by_category(items: list[Item]) -> dict[str, dict[str, float]]:
    """Accuracy (percent) and count per category."""
    groups: dict[str, list[float]] = {}
    for item in items:
        groups.setdefault(item.category or "all", []).append(item.score)
    return {k: {"accuracy": percent(v), "n": len(v)} for k, v in sorted(groups.items())}
