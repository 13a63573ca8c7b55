"""VQAv2 and VizWiz: ten human answers per question, scored with the VQA API's accuracy.

Their test splits (VQAv2 test-dev, VizWiz test) have no public answers: with no ``annotations``
the job writes the file their servers (EvalAI) take, answers passed through EvalAI's processor as
LLaVA's ``convert_vqav2_for_submission.py`` / ``convert_vizwiz_for_submission.py`` do, and says the
score comes from there. Their val splits are scored here: VQAv2's val annotations and questions
(``v2_mscoco_val2014_annotations.json``, ``v2_OpenEnded_mscoco_val2014_questions.json``), VizWiz's
``val.json``. Neither has a LLaVA question file for val; without ``questions`` the job asks each
annotated question with the instruction LLaVA uses for that benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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
from pipelines.eval.vqa_accuracy import evalai_answer, vizwiz_accuracy, vqa_accuracy
from pipelines.storage import join

SHORT = "\nAnswer the question using a single word or phrase."
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."


class _TenAnswers(Benchmark):
    """What VQAv2 and VizWiz share: ground truth by question id, the official accuracy, the
    submission file of the test split."""

    test_split: str
    default_split = "val"
    accuracy: Callable[[str, Sequence[str]], float]  # the benchmark's own API's rule

    def questions(self, staging: str) -> list[Question]:
        if self.questions_url is None:
            return self._from_annotations()
        rows = self.question_records()
        keys = [str(r["question_id"]) for r in rows]
        if len(set(keys)) != len(keys):
            raise InputError(f"{self.name} questions {self.questions_url!r}: question ids repeat")
        return [
            Question(k, r["question_id"], r["text"], self.image_url(r["image"]))
            for k, r in zip(keys, rows, strict=True)
        ]

    def _from_annotations(self) -> list[Question]:
        if not self.files.annotations:
            raise InputError(f"{self.name}: give questions (LLaVA's question file) or annotations")
        return [
            Question(
                str(qid),
                qid,
                entry["prompt"],
                self.image_url(entry["image"]),
                {"prompt": entry["prompt"]},
            )
            for qid, entry in self._truth().items()
        ]

    def _truth(self) -> dict[Any, dict[str, Any]]:
        return self.once("_truth", self._truth_read)

    def _truth_read(self) -> dict[Any, dict[str, Any]]:
        """Question id -> {answers, image, question, prompt, category}."""
        raise NotImplementedError

    def check(self) -> None:
        if self.files.annotations:
            self._truth()

    def score(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        if not self.files.annotations:
            return self._submission(answers, limit_to)
        truth = self._truth()
        found = matched(answers, lambda a: str(a.question_id), {str(k) for k in truth}, self.name)
        asked = {str(q.question_id) for q in limit_to} if limit_to is not None else None
        items = Tally()
        for qid, entry in truth.items():
            if asked is not None and str(qid) not in asked:
                continue
            answer = found.get(str(qid))
            items.add(
                Item(
                    entry["question"],
                    " / ".join(entry["answers"]),
                    answer.text if answer else None,
                    self.accuracy(answer.text, entry["answers"]) if answer else 0.0,
                    entry["category"],
                    self.image_url(entry["image"]),
                )
            )
        breakdown = items.by_category()
        metrics = {"accuracy": items.percent()}
        metrics |= {k: v["accuracy"] for k, v in breakdown.items()}
        return Scored(self.split, metrics["accuracy"], metrics, breakdown, items, items.unanswered)

    def _submission(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        questions = limit_to if limit_to is not None else self.questions("")
        by_id = matched(
            answers, lambda a: str(a.question_id), {q.key for q in questions}, self.name
        )
        entries = [self._upload_entry(q, by_id.get(q.key)) for q in questions]
        unanswered = sum(1 for q in questions if q.key not in by_id)
        name = f"{self.name}_{self.test_split}_submission.json"
        return Scored(
            self.test_split, None, {}, {}, Tally(), unanswered, (name, json.dumps(entries).encode())
        )

    def _upload_entry(self, question: Question, answer: Answer | None) -> dict[str, Any]:
        raise NotImplementedError


class VqaV2(_TenAnswers):
    name = "vqav2"
    title = "VQAv2"
    headline = "VQA accuracy (%)"
    test_split = "test-dev"
    accuracy = staticmethod(vqa_accuracy)

    def _truth_read(self) -> dict[Any, dict[str, Any]]:
        annotations = questions = None
        for url in self._files():
            data = self.files.json(url, "vqav2 annotations")
            if isinstance(data, dict) and isinstance(data.get("annotations"), list):
                annotations = data["annotations"]
            elif isinstance(data, dict) and isinstance(data.get("questions"), list):
                questions = {q["question_id"]: q for q in data["questions"]}
            else:
                raise InputError(
                    f"vqav2 annotations {url!r} is neither VQAv2's annotation file ('annotations') "
                    "nor its question file ('questions')"
                )
        if annotations is None or questions is None:
            raise InputError(
                "vqav2: annotations takes both VQA files of the split: the annotations "
                "(v2_mscoco_val2014_annotations.json) and the questions "
                "(v2_OpenEnded_mscoco_val2014_questions.json)"
            )
        truth = {}
        for a in annotations:
            question = questions.get(a["question_id"])
            if question is None:
                raise InputError(
                    f"vqav2: annotated question {a['question_id']} is not in the questions file"
                )
            truth[a["question_id"]] = {
                "answers": [str(x["answer"]) for x in a["answers"]],
                "image": f"COCO_val2014_{a['image_id']:012d}.jpg",
                "question": question["question"],
                "prompt": question["question"] + SHORT,
                "category": a.get("answer_type"),
            }
        return truth

    def _upload_entry(self, question: Question, answer: Answer | None) -> dict[str, Any]:
        return {
            "question_id": question.question_id,
            "answer": evalai_answer(answer.text) if answer else "",
        }

    def _files(self) -> list[str]:
        """The annotation files: those given, and the JSON files in a folder given."""
        found = []
        for location in self.files.annotations:
            if self.files.is_dir(location):
                names = [n for n in self.files.listdir(location) if n.endswith(".json")]
                found += [join(location, n) for n in names]
            else:
                found.append(location)
        return found


class VizWiz(_TenAnswers):
    name = "vizwiz"
    title = "VizWiz"
    headline = "VQA accuracy (%)"
    test_split = "test"
    accuracy = staticmethod(vizwiz_accuracy)  # VizWiz's API: the human answers as they are

    def _truth_read(self) -> dict[Any, dict[str, Any]]:
        """VizWiz's annotations are keyed by image; a question file's ids (LLaVA's numbering: the
        position in file order) reach them through its images."""
        url = self.files.single("vizwiz", "val.json")
        data = self.files.json(url, "vizwiz annotations")
        if not isinstance(data, list) or not all(
            isinstance(e, dict) and {"image", "question", "answers"} <= set(e) for e in data
        ):
            raise InputError(
                f"vizwiz annotations {url!r} is not VizWiz's val.json (a list of image, question, "
                "answers)"
            )
        by_image = {e["image"]: e for e in data}
        if self.questions_url is None:
            ids = {number: e["image"] for number, e in enumerate(data)}
        else:
            ids = {r["question_id"]: r["image"] for r in self.question_records()}
        truth = {}
        for qid, image in ids.items():
            entry = by_image.get(image)
            if entry is None:
                raise InputError(
                    f"vizwiz: question {qid!r} asks about {image}, which val.json does not annotate"
                )
            truth[qid] = {
                "answers": [str(x["answer"]) for x in entry["answers"]],
                "image": image,
                "question": entry["question"],
                "prompt": entry["question"] + UNANSWERABLE + SHORT,
                "category": entry.get("answer_type"),
            }
        return truth

    def _upload_entry(self, question: Question, answer: Answer | None) -> dict[str, Any]:
        image = question.image.rsplit("/", 1)[-1] if question.image else ""
        return {"image": image, "answer": evalai_answer(answer.text) if answer else ""}
