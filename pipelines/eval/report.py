"""``OUTPUT/report.json``: a benchmark's score as papers report it, every sub-metric, the
per-category breakdown, and how many ground-truth items had no answer (counted wrong). Also what
a score is set beside: the published numbers (the suite table) and, for a question file that
``stf synth`` wrote, its chance and majority-answer baselines."""

from __future__ import annotations

import posixpath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.documents import Document
from pipelines.spec import StorageOptions
from pipelines.storage import join
from pipelines.synth.corpus import CorpusInfo

# LLaVA-1.5-7B and LLaVA-STF-7B as LLaVA-STF's reference repository reports them (VQAv2 on
# test-dev, VizWiz on test, MMBench and MMBench-CN on dev, MME perception).
PUBLISHED: dict[str, dict[str, float]] = {
    "LLaVA-1.5-7B (published)": {
        "vqav2": 78.5,
        "gqa": 62.0,
        "vizwiz": 50.0,
        "sqa_img": 66.8,
        "textvqa": 58.2,
        "pope": 85.9,
        "mme": 1510.7,
        "mmbench": 64.3,
        "mmbench_cn": 58.3,
    },
    "LLaVA-STF-7B (published)": {
        "vqav2": 78.1,
        "gqa": 61.9,
        "vizwiz": 51.1,
        "sqa_img": 70.5,
        "textvqa": 57.4,
        "pope": 86.0,
        "mme": 1482.8,
        "mmbench": 66.2,
        "mmbench_cn": 58.9,
    },
}


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str
    expected: str
    prediction: str | None
    score: float
    category: str | None = None


class EvalReport(Document):
    """What ``stf eval`` measured."""

    KIND = "evaluation report"
    REMEDY = "re-run `stf eval` with this version"

    schema_version: Literal[2] = 2
    benchmark: str
    title: str = Field(description="the benchmark as papers name it")
    split: str
    headline: str = Field(description="what score is")
    score: float | None = Field(description="the headline; None: the benchmark's server scores")
    n: int = Field(description="ground-truth items scored")
    unanswered: int = Field(description="items without an answer, counted wrong")
    errors: int = Field(0, description="questions the model could not be asked (bad image)")
    metrics: dict[str, float]
    breakdown: dict[str, dict[str, float]]
    model: str | None
    answers: str = Field(description="the answers file scored")
    questions: str | None
    limit: int | None = None
    submission: str | None = Field(None, description="the file for the benchmark's server")
    baselines: dict[str, dict[str, float]] | None = Field(
        None, description="chance and majority answer (%) per type (synthetic corpus)"
    )
    examples: list[Example] = Field(description="a few, wrong ones first")


def corpus_baselines(
    questions: str, storage: StorageOptions
) -> tuple[dict[str, float], dict[str, dict[str, float]] | None]:
    """The chance and majority-answer accuracy (percent) of the synthetic corpus a question file
    belongs to (the ``synth.json`` beside it), overall and per question type; ``({}, None)``
    for any other question file."""
    corpus = CorpusInfo.read(join(posixpath.dirname(questions), "synth.json"), storage)
    if corpus is None:
        return {}, None
    b = corpus.baselines
    overall = {"chance": 100 * b.chance, "majority": 100 * b.majority}
    per_type = {
        "chance": {k: 100 * v for k, v in b.chance_by_type.items()},
        "majority": {k: 100 * v for k, v in b.majority_by_type.items()},
    }
    return overall, per_type
