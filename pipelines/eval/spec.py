"""The eval job's spec: which benchmark, its published files, the model (or an answers file), and
how the model answers. Loading it imports neither Ray nor the model library."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from pipelines.infer.spec import GenerationOptions
from pipelines.spec import InferenceModel, JobSpec, Location, Locations, StorageOptions

# The paper's nine, in its table's order, and a question file of your own.
BENCHMARK_NAMES = (
    "vqav2",
    "gqa",
    "vizwiz",
    "sqa_img",
    "textvqa",
    "pope",
    "mme",
    "mmbench",
    "mmbench_cn",
    "custom",
)
BenchmarkName = Literal[
    "vqav2", "gqa", "vizwiz", "sqa_img", "textvqa", "pope", "mme", "mmbench", "mmbench_cn", "custom"
]
# What each benchmark's score needs besides the answers: its ground truth is in ``annotations``
# (or, for MMBench dev, in the question file's answer column; for custom, in the question file).
NEEDS_ANNOTATIONS = ("gqa", "sqa_img", "textvqa", "pope", "mme")
# Their test splits have no public answers: without annotations, a submission file.
SUBMISSION_WITHOUT_ANNOTATIONS = ("vqav2", "vizwiz")
# Scored by their own published answer files without a question file.
QUESTIONS_OPTIONAL_TO_SCORE = ("vqav2", "gqa", "vizwiz", "sqa_img", "textvqa", "mme")


class EvalGeneration(GenerationOptions):
    """How the model answers a benchmark: greedy, short answers."""

    max_new_tokens: PositiveInt = Field(
        16,
        description="tokens per answer at most (the benchmarks ask for a word, a phrase, a letter)",
    )
    batch_size: PositiveInt = Field(16, description="rows per generate call")


class CustomColumns(JobSpec):
    """The columns of your own question file, and how a question is asked."""

    id: str = Field("question_id", description="the question id column")
    image: str = Field("image", description="the image path column")
    question: str = Field("text", description="the question column")
    answer: str = Field("answer", description="the ground-truth answer column")
    type: str = Field("question_type", description="per-type accuracy when present")
    prompt_template: str = Field(
        "{question}",
        description="wraps each question, e.g. '{question}\\nAnswer the question using a single "
        "word or phrase.'",
    )


class EvalSpec(JobSpec):
    """Scores a model (or an answers file) on a benchmark from its published files."""

    benchmark: BenchmarkName = Field(
        "custom",
        description="vqav2, gqa, vizwiz, sqa_img, textvqa, pope, mme, mmbench, mmbench_cn, or "
        "custom (a question file of your own with answers)",
    )
    model: InferenceModel | None = Field(
        None, description="the model that answers (or give answers instead)"
    )
    model_id: str | None = Field(None, description="recorded with each answer (default: dir name)")
    answers: Location | None = Field(
        None,
        description="score this answers file (LLaVA's JSONL: question_id, prompt, text) without "
        "loading a model",
    )
    questions: Location | None = Field(
        None,
        description="LLaVA's question file for the benchmark (llava_pope_test.jsonl, "
        "llava_mme.jsonl, llava_test_CQM-A.json, the MMBench .tsv, ...) or your own",
    )
    annotations: Locations | None = Field(
        None,
        description="the benchmark's ground truth: files, or folders holding them under their "
        "published names (docs/evaluation.md lists them)",
    )
    images: Location | None = Field(
        None, description="the image folder (default: the question file's folder)"
    )
    split: str | None = Field(
        None, description="the split (ScienceQA's pid_splits key; default: each benchmark's own)"
    )
    output: Location = Field(
        description="output directory (report.json, report.html, answers.jsonl)"
    )
    limit: PositiveInt | None = Field(
        None, description="only the first N questions (a quick look; a partial score)"
    )
    inference: EvalGeneration = Field(default_factory=EvalGeneration)
    custom: CustomColumns = Field(default_factory=CustomColumns)
    storage: StorageOptions = Field(default_factory=StorageOptions)

    @model_validator(mode="after")
    def _consistent(self) -> EvalSpec:
        name = self.benchmark
        if (self.model is None) == (self.answers is None):
            raise ValueError("give model (to generate the answers) or answers (to score a file)")
        if self.answers is not None and self.limit is not None:
            raise ValueError("limit applies to generation; an answers file is scored whole")
        if name in NEEDS_ANNOTATIONS and not self.annotations:
            raise ValueError(f"{name} is scored against its ground truth: annotations is required")
        if name == "custom" and self.annotations:
            raise ValueError("custom takes its answers from the question file, not annotations")
        if name != "custom" and self.custom != CustomColumns():
            raise ValueError("custom: options apply to benchmark: custom only")
        needs_questions = not (self.answers is not None and name in QUESTIONS_OPTIONAL_TO_SCORE)
        if name in SUBMISSION_WITHOUT_ANNOTATIONS:  # val: asked from the annotations
            needs_questions = not self.annotations
        if self.questions is None and needs_questions:
            raise ValueError(f"{name} needs questions (its question file)")
        return self

    @property
    def served_model_id(self) -> str:
        if self.model_id:
            return self.model_id
        path = self.model.path.rstrip("/") if self.model else ""
        return path.rsplit("/", 1)[-1] or "stf"


class SuiteModel(InferenceModel):
    """A model of the suite, and its row's name in the table."""

    name: str | None = Field(None, description="the table row (default: the directory's name)")

    @property
    def label(self) -> str:
        return self.name or self.path.rstrip("/").rsplit("/", 1)[-1]


class SuiteBenchmark(JobSpec):
    """One benchmark's published files (as in an eval spec)."""

    questions: Location | None = Field(None, description="LLaVA's question file")
    annotations: Locations | None = Field(None, description="the benchmark's ground truth")
    images: Location | None = Field(None, description="the image folder")
    split: str | None = Field(None, description="the split (default: the benchmark's own)")


class SuiteSpec(JobSpec):
    """Several benchmarks and models: one table in the papers' shape, the published rows beside."""

    models: list[SuiteModel] = Field(min_length=1, description="the models, one table row each")
    benchmarks: dict[BenchmarkName, SuiteBenchmark] = Field(
        min_length=1, description="benchmark name -> its files (the columns, in the paper's order)"
    )
    output: Location = Field(
        description="output directory (MODEL/BENCHMARK/ eval outputs, table.md, table.png)"
    )
    limit: PositiveInt | None = Field(None, description="only the first N questions of each")
    inference: EvalGeneration = Field(default_factory=EvalGeneration)
    storage: StorageOptions = Field(default_factory=StorageOptions)

    @model_validator(mode="after")
    def _distinct_rows(self) -> SuiteSpec:
        labels = [m.label for m in self.models]
        if len(set(labels)) != len(labels):
            raise ValueError(f"models: two rows would be named alike ({labels}); give names")
        return self

    def eval_spec(self, model: SuiteModel, name: str) -> EvalSpec:
        files = self.benchmarks[name]
        return EvalSpec(
            benchmark=name,
            model=InferenceModel(path=model.path, dtype=model.dtype, device=model.device),
            model_id=model.label,
            **files.model_dump(),
            output=f"{self.output.rstrip('/')}/{model.label}/{name}",
            limit=self.limit,
            inference=self.inference,
            storage=self.storage,
        )
