"""``stf infer``: batch generation over images or tables with Ray Data (resumable, errors as rows).

- :mod:`~pipelines.infer.spec`: the job's spec;
- :mod:`~pipelines.infer.rows`: listing the input rows (folders, globs, tables);
- :mod:`~pipelines.infer.replica`: one model replica of the actor pool;
- :mod:`~pipelines.infer.job`: the driver (resume, generate, check, summarise).

Loading this package loads the spec alone (no Ray, no model); the driver is
:mod:`pipelines.infer.job`.
"""

from pipelines.infer.spec import InferSpec

__all__ = ["InferSpec"]
