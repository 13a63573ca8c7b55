"""``stf preprocess``: LLaVA record files + images -> tokenised Parquet shards (Ray Data).

- :mod:`~pipelines.preprocess.spec`: the job's spec (no Ray, no model imports).
- :mod:`~pipelines.preprocess.source`: the streaming reader of JSON-list / JSONL record files.
- :mod:`~pipelines.preprocess.processor`: the map stage (validate, decode, tokenise).
- :mod:`~pipelines.preprocess.sink`: the shard and quarantine writer with its tally.
- :mod:`~pipelines.preprocess.job`: the driver (skip, run, account, commit the manifest).

Loading this package loads the spec alone (no Ray); the driver is :mod:`pipelines.preprocess.job`.
"""

from pipelines.preprocess.spec import PreprocessSpec

__all__ = ["PreprocessSpec"]
