"""What every benchmark provides, and the records its pieces exchange.

A benchmark reads its published question file into :class:`Question` rows (what the model is
asked, and what LLaVA's answers file records for it), and scores a list of :class:`Answer` lines
(LLaVA's answers file, whoever wrote it) against its ground truth into a :class:`Scored`. The
universe of a score is the ground truth: an item without an answer is counted, and counted wrong.

Scoring holds the ground truth and the answers, and nothing more per item: each scored
:class:`Item` goes into a :class:`Tally`, which keeps the counts the metrics need and only the
items the report shows (a benchmark has up to 214,354 questions: VQAv2 val).
"""

from __future__ import annotations

import heapq
import posixpath
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Hashable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from pipelines.errors import InputError
from pipelines.eval.files import Files
from pipelines.storage import join

# How many offending ids an error quotes.
QUOTED = 3
# The scored items a report keeps, lowest scores first, for report.html: enough to see the
# failure modes, few enough for the page to open fast.
EXAMPLES_KEPT = 200
# Answers at most this long are one string however many lines give them ("Yes", "No", "A", a
# short phrase: most of a benchmark's answers).
SHARED_TEXT = 32


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


@dataclass(frozen=True, slots=True)
class Answer:
    """One line of LLaVA's answers file, as far as scorers read it: ``question_id`` and
    ``text``, the ``prompt`` (kept only for the benchmarks that find their question by it) and
    MMBench's ``round_id``. The rest of the line is not kept."""

    question_id: Any
    text: str
    prompt: str
    round_id: Any
    line: int

    @classmethod
    def of(cls, record: dict[str, Any], line: int, prompt: bool = True) -> Answer:
        text = record["text"]
        return cls(
            record["question_id"],
            sys.intern(text) if len(text) <= SHARED_TEXT else text,
            str(record.get("prompt") or "") if prompt else "",
            record.get("round_id"),
            line,
        )


@dataclass(frozen=True)
class Item:
    """One scored ground-truth item, for the report's examples."""

    question: str
    expected: str
    prediction: str | None  # None: no answer
    score: float  # 1 right, 0 wrong, or a VQA soft score
    category: str | None = None
    image: str | None = None
    ref: Any = None  # where a benchmark that does not hold the question and image reads them


class Tally:
    """Scored items counted as they come: how many, how many unanswered, the sum and count of
    each category's scores, and the ``kept`` lowest-scoring items in their order (the report's
    examples, wrong ones first). The other items are not kept."""

    def __init__(self, kept: int = EXAMPLES_KEPT):
        self.n = 0
        self.unanswered = 0
        self.total = 0.0
        self.categorised = False  # some item has a category
        self.categories: dict[str, list[float]] = {}  # category ("all" if none) -> [sum, n]
        self._kept = kept
        # A heap of (-score, -order, item): its top is the kept item that goes first when a
        # lower score (or an equal one met earlier) arrives.
        self._heap: list[tuple[float, int, Item]] = []

    def add(self, item: Item) -> None:
        self.n += 1
        self.total += item.score
        self.unanswered += item.prediction is None
        self.categorised = self.categorised or bool(item.category)
        sums = self.categories.setdefault(item.category or "all", [0.0, 0])
        sums[0] += item.score
        sums[1] += 1
        entry = (-item.score, -self.n, item)
        if len(self._heap) < self._kept:
            heapq.heappush(self._heap, entry)
        elif self._heap and entry > self._heap[0]:
            heapq.heapreplace(self._heap, entry)

    def percent(self) -> float:
        """The mean score, in percent, as papers report it."""
        return 100.0 * (self.total / self.n) if self.n else 0.0

    def by_category(self) -> dict[str, dict[str, float]]:
        """Accuracy (percent) and count per category."""
        return {
            k: {"accuracy": 100.0 * (total / n), "n": n}
            for k, (total, n) in sorted(self.categories.items())
        }

    def describe(self, read: Callable[[set], dict[Any, tuple[str, str | None]]]) -> None:
        """Fills in the kept items' question and image from ``read`` (their refs -> (question,
        image)): a benchmark that scores without holding them reads them again for these
        items only."""
        found = read({item.ref for _, _, item in self._heap})
        self._heap = [
            (score, order, replace(item, question=found[item.ref][0], image=found[item.ref][1]))
            for score, order, item in self._heap
        ]

    def lowest(self) -> list[Item]:
        """The kept items, lowest score first, in their order among equal scores."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: (-e[0], -e[1]))]


@dataclass
class Scored:
    """A benchmark's result: ``score`` is the headline as papers report it (None when the split's
    answers are not public and the score comes from the benchmark's server)."""

    split: str
    score: float | None
    metrics: dict[str, float]
    breakdown: dict[str, dict[str, float]]
    items: Tally
    unanswered: int
    submission: tuple[str, bytes] | None = None  # (file name, content) for the server


class Benchmark(ABC):
    """One benchmark: its question file, its ground truth and its official rules."""

    name: ClassVar[str]
    title: ClassVar[str]  # as papers name it
    headline: ClassVar[str]  # what the score is
    default_split: ClassVar[str] = "test"
    reads_prompt: ClassVar[bool] = False  # finds an answer's question by its prompt

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
        """LLaVA's JSONL question file, each line with ``question_id``, ``image`` and ``text``;
        read once per run."""
        return self.once("questions", lambda: list(self.question_lines()))

    def question_lines(self) -> Iterator[dict[str, Any]]:
        """The question file's lines as they are read (none held), checked as
        :meth:`question_records` checks them."""
        url = self._questions_url()
        number = 0
        for number, record in enumerate(self.files.jsonl(url, f"{self.name} questions"), 1):
            missing = [k for k in ("question_id", "image", "text") if record.get(k) in (None, "")]
            if missing:
                raise InputError(
                    f"{self.name} questions {url!r} line {number} has no {', '.join(missing)}: "
                    f"not LLaVA's question file for {self.title}"
                )
            yield record
        if not number:
            raise InputError(f"{self.name} questions {url!r} has no questions")

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
    universe: Container[Hashable],
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
