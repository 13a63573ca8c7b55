"""The ``stf`` jobs: each one's spec class, the module that runs it, and its help line. The
command line builds its verbs from this table and ``stf submit`` detects a spec's job with it;
both import it from here."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Job:
    """One ``stf`` job: where its spec class and its runner live, imported on first use (so
    ``stf --help`` and spec errors stay fast), and its one-line help."""

    spec: str  # "module:SpecClass"
    runner: str  # a module with run(spec) -> result and summary_line(spec, result) -> str
    help: str


JOBS: dict[str, Job] = {
    "init": Job(
        "pipelines.init.spec:InitSpec",
        "pipelines.init.job",
        "assemble a LLaVA-STF model directory from a base LLM and a CLIP or SigLIP tower",
    ),
    "preprocess": Job(
        "pipelines.preprocess.spec:PreprocessSpec",
        "pipelines.preprocess.job",
        "LLaVA JSON/JSONL + images -> tokenised Parquet shards (Ray Data)",
    ),
    "train": Job(
        "pipelines.train.spec:TrainSpec",
        "pipelines.train.job",
        "train one stage with Ray Train + DeepSpeed ZeRO-1/2 (resumes by name)",
    ),
    "serve": Job(
        "pipelines.serve.spec:ServeSpec",
        "pipelines.serve.job",
        "serve a model directory with an OpenAI-compatible API (Ray Serve; Ctrl-C stops)",
    ),
    "infer": Job(
        "pipelines.infer.spec:InferSpec",
        "pipelines.infer.job",
        "batch generation over images or tables -> Parquet (Ray Data, resumable)",
    ),
    "eval": Job(
        "pipelines.eval.spec:EvalSpec",
        "pipelines.eval.job",
        "score a model, or an answers file, on a benchmark (the paper's nine, or your questions)",
    ),
    "eval-suite": Job(
        "pipelines.eval.spec:SuiteSpec",
        "pipelines.eval.suite",
        "several benchmarks and models -> one table in the papers' shape, published rows beside",
    ),
    "synth": Job(
        "pipelines.synth.spec:SynthSpec",
        "pipelines.synth.job",
        "write the synthetic shapes corpus (the demo's and the tests' data)",
    ),
    "convert": Job(
        "pipelines.convert.spec:ConvertSpec",
        "pipelines.convert.job",
        "convert a published LLaVA-STF checkpoint into a model directory",
    ),
}


def spec_class(job: str) -> type:
    """The spec model of a job, imported on first use."""
    module, name = JOBS[job].spec.split(":")
    return getattr(importlib.import_module(module), name)


def run_job(job: str, spec: Any) -> tuple[Any, str]:
    """Runs a validated spec; returns the job's result and its one-line summary."""
    runner = importlib.import_module(JOBS[job].runner)
    result = runner.run(spec)
    return result, runner.summary_line(spec, result)
