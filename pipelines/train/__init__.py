"""``stf train``: one training stage with Ray Train + DeepSpeed ZeRO-1/2.

Read in this order: :mod:`~pipelines.train.spec` (the job's spec) ->
:mod:`~pipelines.train.plan` (shards checked against the model, the step budget; the typed plan
every worker receives) -> :mod:`~pipelines.train.loop` (the per-worker loop: setup, resume,
batches, step, export) -> :mod:`~pipelines.train.driver` (the TorchTrainer run). Beside them:
:mod:`~pipelines.train.arithmetic` (memory estimate, pre-flight, FLOPs; no Ray) and
:mod:`~pipelines.train.metrics` (meter, CSV, TensorBoard, loss plot).

``run`` and ``build_model`` are imported on first use, so loading the spec does not import Ray.
"""

from pipelines.train.spec import TrainSpec

__all__ = ["TrainSpec", "build_model", "run"]


def __getattr__(name: str):
    if name == "run":
        from pipelines.train.driver import run

        return run
    if name == "build_model":
        from pipelines.train.model import build_model

        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
