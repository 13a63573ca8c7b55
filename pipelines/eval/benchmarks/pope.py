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

from pipelines.errors import InputError, MissingInput
from pipelines.eval.benchmarks.base import Answer, Benchmark, Item, Question, Scored, matched
from pipelines.storage import join

PREFIX, SUFFIX = "coco_pope_", ".json"


def _name(image: object) -> str:
    """An image's file name (a question file may give it with a folder)."""
    return str(image).rsplit("/", 1)[-1]


def says_no(text: str) -> bool:
    """LLaVA's reading of a POPE answer."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "No" in words or "not" in words or "no" in words


def confusion(pairs: list[tuple[bool | None, bool]]) -> dict[str, float]:
    """POPE's metrics from (predicted yes, or None when unanswered; labelled yes) pairs."""
    tp = sum(1 for p, y in pairs if p is True and y)
    fp = sum(1 for p, y in pairs if (p is True and not y) or (p is None and not y))
    tn = sum(1 for p, y in pairs if p is False and not y)
    fn = sum(1 for p, y in pairs if (p is False and y) or (p is None and y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    answered = [p for p, _ in pairs if p is not None]
    return {
        "f1": 100 * f1,
        "accuracy": 100 * (tp + tn) / len(pairs) if pairs else 0.0,
        "precision": 100 * precision,
        "recall": 100 * recall,
        "yes_ratio": 100 * sum(answered) / len(answered) if answered else 0.0,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": len(pairs),
    }


class Pope(Benchmark):
    name = "pope"
    title = "POPE"
    headline = "F1 (%), the mean of the adversarial, popular and random splits"
    needs_questions_to_score = True

    def questions(self, staging: str) -> list[Question]:
        rows = self.question_records()
        ids = [r["question_id"] for r in rows]
        if len(set(ids)) != len(ids):
            raise InputError(f"pope questions {self.questions_url!r}: question ids repeat")
        return [
            Question(str(r["question_id"]), r["question_id"], r["text"], self.image_url(r["image"]))
            for r in rows
        ]

    def _labels(self) -> dict[str, list[dict]]:
        return self.once("_labels", self._labels_read)

    def _labels_read(self) -> dict[str, list[dict]]:
        """The label lines of each split whose file ``annotations`` holds."""
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
        return {split: self.files.jsonl(url, "pope labels") for split, url in sorted(urls.items())}

    def _paired(self) -> dict[str, tuple[str, int, dict]]:
        return self.once("_paired", self._paired_read)

    def _paired_read(self) -> dict[str, tuple[str, int, dict]]:
        """Each question id -> (split, position, label line), checked to ask the same thing."""
        labels = self._labels()
        by_split: dict[str, list[dict]] = {}
        for record in self.question_records():
            by_split.setdefault(record.get("category"), []).append(record)
        unknown = set(by_split) - set(labels)
        if unknown:
            raise InputError(
                f"pope questions {self.questions_url!r} have categories {sorted(map(str, unknown))} "
                f"with no label file among the annotations (splits: {sorted(labels)})"
            )
        pairs: dict[str, tuple[str, int, dict]] = {}
        for split, questions in by_split.items():
            lines = labels[split]
            if len(questions) > len(lines):
                raise InputError(
                    f"pope: {len(questions)} {split} questions but coco_pope_{split}.json has "
                    f"{len(lines)} labels: not the label file of this question file"
                )
            for position, (question, label) in enumerate(zip(questions, lines, strict=False)):
                asked = str(question["text"]).split("\n")[0]  # the instruction follows
                same_image = _name(label.get("image")) == _name(question["image"])
                if not same_image or str(label.get("text")).split("\n")[0] != asked:
                    raise InputError(
                        f"pope: {split} question {position + 1} ({question['image']}: {asked!r}) "
                        f"and coco_pope_{split}.json line {position + 1} ({label.get('image')}: "
                        f"{label.get('text')!r}) differ; LLaVA pairs them by position, so the "
                        "label file must be the version the question file was made from"
                    )
                pairs[str(question["question_id"])] = (split, position, label)
        return pairs

    def check(self) -> None:
        self._paired()

    def score(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        pairs = self._paired()
        labels = self._labels()
        by_id = matched(answers, lambda a: str(a.question_id), set(pairs), "pope")
        asked = {str(q.question_id) for q in limit_to} if limit_to is not None else None
        universe = {
            (split, position): label
            for split, lines in labels.items()
            for position, label in enumerate(lines)
        }
        position_of = {(s, p): qid for qid, (s, p, _) in pairs.items()}
        if asked is not None:
            universe = {k: v for k, v in universe.items() if position_of.get(k) in asked}
        per_split: dict[str, list[tuple[bool | None, bool]]] = {}
        items = []
        for (split, position), label in universe.items():
            answer = by_id.get(position_of.get((split, position)))
            labelled_yes = label.get("label") != "no"
            predicted = None if answer is None else not says_no(answer.text)
            per_split.setdefault(split, []).append((predicted, labelled_yes))
            items.append(
                Item(
                    question=str(label.get("text")),
                    expected="yes" if labelled_yes else "no",
                    prediction=None if answer is None else answer.text,
                    score=float(predicted is not None and predicted == labelled_yes),
                    category=split,
                    image=self.image_url(str(label.get("image"))),
                )
            )
        breakdown = {split: confusion(pairs) for split, pairs in sorted(per_split.items())}
        keys = ("f1", "accuracy", "precision", "recall", "yes_ratio")
        metrics = {k: sum(b[k] for b in breakdown.values()) / len(breakdown) for k in keys}
        unanswered = sum(1 for item in items if item.prediction is None)
        return Scored(self.split, metrics["f1"], metrics, breakdown, items, unanswered)
