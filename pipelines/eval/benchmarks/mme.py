"""MME (14 yes/no subtasks, two questions per image): LLaVA's ``llava_mme.jsonl`` and the
``MME_Benchmark_release_version`` folder, whose subtask folders hold each image's two questions
with their answers (``<subtask>/<stem>.txt`` beside the image, or
``<subtask>/questions_answers_YN/<stem>.txt`` for the subtasks with an ``images/`` folder; a line
is ``question<TAB>Yes|No``). The MME tool's ``Your_Results/<subtask>.txt`` files
(``image<TAB>question<TAB>Yes|No``) are read as well.

The rules of LLaVA's ``convert_answer_to_mme.py`` and MME's ``calculation.py``: an answer finds its
ground truth by subtask (the first part of ``question_id``), the image's file stem and the question
(LLaVA's instruction removed, MME's " Please answer yes or no." put back); it says yes when it is
"yes" or its first four characters (lower-cased) hold "yes", else no when they hold "no", else
neither (wrong). Per subtask, acc is over questions and acc+ over images with both questions right;
the subtask's score is 100 x (acc + acc+), at most 200; the headline is the perception score, the
sum over the 10 perception subtasks (at most 2000), with the cognition score (4 subtasks) beside it.
"""

from __future__ import annotations

from pipelines.errors import InputError
from pipelines.eval.benchmarks.base import Answer, Benchmark, Item, Question, Scored, Tally, matched
from pipelines.storage import join

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
RELEASE = "MME_Benchmark_release_version"
LLAVA_INSTRUCTION = "Answer the question using a single word or phrase."
MME_INSTRUCTION = " Please answer yes or no."

Key = tuple[str, str, str]  # (subtask, the image's "<stem>.txt", MME's question)


def reads_as(text: str) -> str:
    """MME's reading of an answer: "yes", "no" or "other"."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


class Mme(Benchmark):
    name = "mme"
    title = "MME"
    headline = "perception score (the sum of 10 subtasks' acc + acc+, at most 2000)"
    reads_prompt = True

    def __init__(self, files, questions, images, split=None):
        super().__init__(files, questions, images, split)
        if self.images is None and len(files.annotations) == 1:  # the release folder holds
            folder = files.annotations[0]  # the images too (or the folder holding it does)
            inside = files.listdir(folder) if files.is_dir(folder) else []
            self.images = join(folder, RELEASE) if RELEASE in inside else folder

    def questions(self, staging: str) -> list[Question]:
        return [
            Question(
                f"{number:06d}",
                r["question_id"],
                r["text"],
                self.image_url(r["image"]),
            )
            for number, r in enumerate(self.question_records())
        ]

    def _truth(self) -> dict[Key, str]:
        return self.once("_truth", self._truth_read)

    def _truth_read(self) -> dict[Key, str]:
        (folder,) = self.files.annotations or [None]
        if folder is None or not self.files.is_dir(folder):
            raise InputError(
                "mme: annotations is the MME_Benchmark_release_version folder (or the MME tool's "
                f"Your_Results folder); given {self.files.annotations}"
            )
        if RELEASE in self.files.listdir(folder):  # the folder that holds it (LLaVA's MME/)
            folder = join(folder, RELEASE)
        truth: dict[Key, str] = {}
        for name in self.files.listdir(folder):
            path = join(folder, name)
            if name.removesuffix(".txt") in SUBTASKS and name.endswith(".txt"):
                truth.update(self._tool_file(path, name.removesuffix(".txt")))  # Your_Results
            elif name in SUBTASKS and self.files.is_dir(path):
                inside = self.files.listdir(path)
                qa = join(path, "questions_answers_YN") if "images" in inside else path
                for file in self.files.listdir(qa) if qa != path else inside:
                    if file.endswith(".txt"):
                        truth.update(self._qa_file(join(qa, file), name, file))
        if not truth:
            raise InputError(f"mme: {folder!r} holds no MME question files")
        return truth

    def _qa_file(self, url: str, subtask: str, file: str) -> dict[Key, str]:
        truth = {}
        for number, line in enumerate(self._lines(url), 1):
            question, answer = self._fields(url, number, line, 2)
            truth[(subtask, file, question)] = answer
        return truth

    def _tool_file(self, url: str, subtask: str) -> dict[Key, str]:
        truth = {}
        for number, line in enumerate(self._lines(url), 1):
            image, question, answer = self._fields(url, number, line, 3)
            truth[(subtask, image.split(".")[0] + ".txt", question)] = answer
        return truth

    def _lines(self, url: str) -> list[str]:
        text = self.files.read_bytes(url, "mme annotations").decode("utf-8")
        return [line.strip() for line in text.splitlines() if line.strip()]

    @staticmethod
    def _fields(url: str, number: int, line: str, count: int) -> list[str]:
        fields = line.split("\t")
        if len(fields) != count or fields[-1].lower() not in ("yes", "no"):
            raise InputError(f"mme: {url!r} line {number} is not 'question<TAB>Yes|No': {line!r}")
        return fields

    def check(self) -> None:
        self._truth()

    @staticmethod
    def key_of(question_id: str, prompt: str, truth: dict[Key, str]) -> Key:
        """LLaVA's way from an answer (its question_id and prompt) to MME's question."""
        subtask = question_id.split("/")[0]
        file = question_id.split("/")[-1].split(".")[0] + ".txt"
        question = prompt
        if LLAVA_INSTRUCTION in question:
            question = question.replace(LLAVA_INSTRUCTION, "").strip()
        if "Please answer yes or no." not in question:
            question += MME_INSTRUCTION
            if (subtask, file, question) not in truth:
                question = question.replace(MME_INSTRUCTION, " " + MME_INSTRUCTION)
        return (subtask, file, question)

    def score(self, answers: list[Answer], limit_to: list[Question] | None) -> Scored:
        truth = self._truth()
        found = matched(
            answers, lambda a: self.key_of(str(a.question_id), a.prompt, truth), set(truth), "mme"
        )
        universe = truth
        if limit_to is not None:
            asked = {self.key_of(str(q.question_id), q.prompt, truth) for q in limit_to}
            universe = {k: v for k, v in truth.items() if k in asked}
        items, per_image = Tally(), {}
        for key, expected in universe.items():
            subtask, file, question = key
            answer = found.get(key)
            right = answer is not None and reads_as(answer.text) == expected.lower()
            per_image.setdefault((subtask, file), []).append(right)
            image = self.image_url(str(answer.question_id)) if answer else None
            items.add(
                Item(
                    question,
                    expected,
                    answer.text if answer else None,
                    float(right),
                    subtask,
                    image,
                )
            )
        breakdown = {}
        for subtask in sorted({k[0] for k in universe}):
            rights, n = items.categories[subtask]
            images = [all(v) for (s, _), v in per_image.items() if s == subtask]
            acc, acc_plus = 100 * rights / n, 100 * sum(images) / len(images)
            breakdown[subtask] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "n": n}
        perception = sum(breakdown[t]["score"] for t in PERCEPTION if t in breakdown)
        cognition = sum(breakdown[t]["score"] for t in COGNITION if t in breakdown)
        metrics = {
            "perception": perception,
            "cognition": cognition,
            "total": perception + cognition,
        }
        return Scored(self.split, perception, metrics, breakdown, items, items.unanswered)
