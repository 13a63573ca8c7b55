"""POPE (object hallucination, COCO val2014): LLaVA's ``llava_pope_test.jsonl`` and POPE's label
files ``coco_pope_{adversarial,popular,random}.json`` (JSON lines, despite the name).

The rules of LLaVA's ``eval_pope.py``: an answer is "no" when its first sentence (the text before
the first ".", commas removed, split at spaces) has the word ``No``, ``not`` or ``no``, else "yes";
per split, accuracy, precision, recall, F1 and the share of "yes"; the headline is the mean F1 of
the splits. LLaVA pairs a split's answers with its label lines by position; here each label line is
paired with the question at the same position of that split in the question file, and the pair
must ask the same thing of the same image (a label file of another POPE version, whose random
split has 3,000 lines where LLaVA's has 2,910, is refused rather than misaligned). A question
without an answer counts as the wrong answer (a false negative for "yes", false positive for
"no"); the share of "yes" is over the answers given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from pipelines.errors import InputError, MissingInput
from pipelines.eval.benchmarks.base import Answer, Benchmark, Item, Question, Scored, Tally, matched
from pipelines.storage import join

PREFIX, SUFFIX = "coco_pope_", ".json"


class Label(NamedTuple):
    """One line of a POPE label file, as far as scoring reads it."""

    image: str
    text: str
    yes: bool  # labelled "yes" (anything but "no")


@dataclass
class Split:
    """A split's label lines as scoring holds them: at each position, the id of the question
    asked there (None: none is) and whether the label is "yes"."""

    ids: list[str | None] = field(default_factory=list)
    yes: list[bool] = field(default_factory=list)


def _name(image: object) -> str:
    """An image's file name (a question file may give it with a folder)."""
    return str(image).rsplit("/", 1)[-1]


def says_no(text: str) -> bool:
    """LLaVA's reading of a POPE answer."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "No" in words or "not" in words or "no" in words


def confusion(pairs: Iterable[tuple[bool | None, bool]] | Counter) -> dict[str, float]:
    """POPE's metrics from (predicted yes, or None when unanswered; labelled yes) pairs, given
    one by one or as a :class:`Counter` of them."""
    counts = Counter(pairs)
    tp, fp = counts[(True, True)], counts[(True, False)] + counts[(None, False)]
    tn, fn = counts[(False, False)], counts[(False, True)] + counts[(None, True)]
    n = sum(counts.values())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    said_yes = counts[(True, True)] + counts[(True, False)]
    answered = n - counts[(None, True)] - counts[(None, False)]
    return {
        "f1": 100 * f1,
        "accuracy": 100 * (tp + tn) / n if n else 0.0,
        "precision": 100 * precision,
        "recall": 100 * recall,
        "yes_ratio": 100 * said_yes / answered if answered else 0.0,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": n,
    }


class Pope(Benchmark):
    name = "pope"
    title = "POPE"
    headline = "F1 (%), the mean of the adversarial, popular and random splits"

    def questions(self, staging: str) -> list[Question]:
        questions, seen = [], set()
        for r in self.question_lines():
            key = str(r["question_id"])
            if key in seen:
                raise InputError(
                    f"pope questions {self.questions_url!r}: question id {key} repeats"
                )
            seen.add(key)
            questions.append(Question(key, r["question_id"], r["text"], self.image_url(r["image"])))
        return questions

    def _label_urls(self) -> dict[str, str]:
        """Each split's label file among ``annotations``."""
        urls = {}
        for location in self.files.annotations:
            names = self.files.listdir(location) if self.files.is_dir(location) else [None]
            for name in names:
                url = join(location, name) if name else location
                base = url.rstrip("/").rsplit("/", 1)[-1]
                if base.startswith(PREFIX) and base.endswith(SUFFIX):
                    urls[base[len(PREFIX) : -len(SUFFIX)]] = url
        if not urls:
            raise MissingInput(
                "pope: annotations holds no coco_pope_<split>.json label file (POPE's output/coco)"
            )
        return dict(sorted(urls.items()))

    def _labels(self, url: str) -> Iterator[Label]:
        for line in self.files.jsonl(url, "pope labels"):
            yield Label(str(line.get("image")), str(line.get("text")), line.get("label") != "no")

    def _paired(self) -> tuple[dict[str, Split], set[str]]:
        return self.once("_paired", self._paired_read)

    def _paired_read(self) -> tuple[dict[str, Split], set[str]]:
        """Each split's label lines, each with the id of the question asked at its position of
        the split (None: no question), checked to ask the same thing of the same image; and the
        set of those ids. The question file and the label files are read side by side, a line at
        a time."""
        urls = self._label_urls()
        labels = {split: enumerate(self._labels(url)) for split, url in urls.items()}
        splits = {split: Split() for split in urls}
        seen: set[str] = set()
        for question in self.question_lines():
            split = question.get("category")
            if split not in labels:
                raise InputError(
                    f"pope questions {self.questions_url!r} have category {str(split)!r}, with "
                    f"no label file among the annotations (splits: {list(urls)})"
                )
            position, label = next(labels[split], (len(splits[split].ids), None))
            if label is None:
                raise InputError(
                    f"pope: more {split} questions than coco_pope_{split}.json's {position} "
                    "labels: not the label file of this question file"
                )
            asked = str(question["text"]).split("\n")[0]  # the instruction follows
            if _name(label.image) != _name(question["image"]) or label.text.split("\n")[0] != asked:
                raise InputError(
                    f"pope: {split} question {position + 1} ({question['image']}: {asked!r}) "
                    f"and coco_pope_{split}.json line {position + 1} ({label.image}: "
                    f"{label.text!r}) differ; LLaVA pairs them by position, so the label file "
                    "must be the version the question file was made from"
                )
            qid = str(question["question_id"])
            if qid in seen:
                raise InputError(
                    f"pope questions {self.questions_url!r}: question id {qid} repeats"
                )
            seen.add(qid)
            splits[split].ids.append(qid)
            splits[split].yes.append(label.yes)
        for split, rest in labels.items():
            for _, label in rest:
                splits[split].ids.append(None)
                splits[split].yes.append(label.yes)
        return splits, seen

    def check(self) -> None:
        self._paired()

    def score(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        splits, ids = self._paired()
        by_id = matched(answers, lambda a: str(a.question_id), ids, "pope")
        asked = {str(q.question_id) for q in limit_to} if limit_to is not None else None
        per_split: dict[str, Counter] = {}
        items = Tally()
        for name, split in splits.items():
            for position, (qid, labelled_yes) in enumerate(zip(split.ids, split.yes, strict=True)):
                if asked is not None and qid not in asked:
                    continue
                answer = by_id.get(qid)
                predicted = None if answer is None else not says_no(answer.text)
                per_split.setdefault(name, Counter())[(predicted, labelled_yes)] += 1
                items.add(
                    Item(
                        question="",  # described below, for the items the report keeps
                        expected="yes" if labelled_yes else "no",
                        prediction=None if answer is None else answer.text,
                        score=float(predicted is not None and predicted == labelled_yes),
                        category=name,
                        ref=(name, position),
                    )
                )
        items.describe(self._described)
        breakdown = {split: confusion(counts) for split, counts in sorted(per_split.items())}
        keys = ("f1", "accuracy", "precision", "recall", "yes_ratio")
        metrics = {k: sum(b[k] for b in breakdown.values()) / len(breakdown) for k in keys}
        return Scored(self.split, metrics["f1"], metrics, breakdown, items, items.unanswered)

    def _described(self, refs: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, str]]:
        """The question and image of these label lines, read again from their files."""
        urls = self._label_urls()
        found = {}
        for split in sorted({split for split, _ in refs}):
            for position, label in enumerate(self._labels(urls[split])):
                if (split, position) in refs:
                    found[(split, position)] = (label.text, self.image_url(label.image))
        return found
