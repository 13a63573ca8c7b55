"""``stf preprocess``: LLaVA record files + images -> tokenised Parquet shards (Ray Data).

- :mod:`~pipelines.preprocess.spec`: the job's spec (no Ray, no model imports).
- :mod:`~pipelines.preprocess.source`: the streaming reader of JSON-list / JSONL record files.
- :mod:`~pipelines.preprocess.processor`: the map stage (validate, decode, tokenise).
- :mod:`~pipelines.preprocess.sink`: the shard and quarantine writer with its tally.
- :mod:`~pipelines.preprocess.job`: the driver (skip, run, account, commit the manifest).

``run`` and ``PreprocessFailed`` are imported from the driver on first use, so loading the spec
does not import Ray.
"""

from pipelines.preprocess.spec import PreprocessSpec

__all__ = ["PreprocessFailed", "PreprocessSpec", "run"]


def __getattr__(name: str):
    if name in ("run", "PreprocessFailed"):
        from pipelines.preprocess import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
