"""``stf infer``: batch generation over images or tables with Ray Data (resumable, errors as rows).

- :mod:`~pipelines.infer.spec`: the job's spec;
- :mod:`~pipelines.infer.rows`: listing the input rows (folders, globs, tables);
- :mod:`~pipelines.infer.replica`: one model replica of the actor pool;
- :mod:`~pipelines.infer.job`: the driver (resume, generate, check, summarise).

``run``, ``InferFailed``, ``InferSummary`` and ``read_output`` are imported from the driver on
first use, so loading the spec does not import Ray or the model.
"""

from pipelines.infer.spec import InferSpec

__all__ = ["InferFailed", "InferSpec", "InferSummary", "read_output", "run"]


def __getattr__(name: str):
    if name in ("run", "InferFailed", "InferSummary", "read_output"):
        from pipelines.infer import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
