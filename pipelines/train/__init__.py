"""``stf train``: one training stage with Ray Train + DeepSpeed ZeRO-1/2.

Read in this order: :mod:`~pipelines.train.spec` (the job's spec) ->
:mod:`~pipelines.train.plan` (shards checked against the model, the step budget; the typed plan
every worker receives) -> :mod:`~pipelines.train.loop` (the per-worker loop: setup, resume,
batches, step, export) -> :mod:`~pipelines.train.job` (the TorchTrainer run: ``run``). Beside them:
:mod:`~pipelines.train.arithmetic` (memory estimate, pre-flight, FLOPs; no Ray) and
:mod:`~pipelines.train.metrics` (meter, CSV, TensorBoard, loss plot).

Loading this package loads the spec alone (no Ray, no torch).
"""

from pipelines.train.spec import TrainSpec

__all__ = ["TrainSpec"]
