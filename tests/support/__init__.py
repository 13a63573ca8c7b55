"""What several test files share: builders of inputs in published layouts (benchmark files, base
models in their public layouts, published checkpoints, hostile corpora), servers and faults the
tests start (moto's S3, an S3 outage, `stf serve` as a process, killing a job or its workers),
and readers of what jobs write (run metrics, the report page, the cluster manifests)."""
