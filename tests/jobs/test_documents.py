"""The typed records that cross stages and processes: documents with one schema-version check, and
the frozen train plan that every worker receives (no Ray needed)."""

import json

import pytest
from pydantic import ValidationError

from pipelines.errors import InputError, MissingInput
from pipelines.eval.report import EvalReport
from pipelines.infer.output import InferSummary
from pipelines.shards import MANIFEST, read_manifest
from pipelines.spec import StorageOptions
from pipelines.train import TrainSpec
from pipelines.train.plan import TrainPlan
from pipelines.train.run_folder import METRIC_COLUMNS, RunFolder, TrainState

STORAGE = StorageOptions()


def summary(**changes) -> dict:
    fields = dict(
        rows=3,
        answered=2,
        errors=1,
        errors_by_reason={"image_missing": 1},
        resumed_rows=0,
        model="/m",
        model_id="m",
        seconds=1.5,
        spec={"output": "/o"},
    )
    return {**fields, **changes}


def test_a_document_round_trips_with_its_schema_version(tmp_path):
    url = str(tmp_path / "summary.json")
    InferSummary(**summary()).write(url, STORAGE)
    assert json.loads((tmp_path / "summary.json").read_text())["schema_version"] == 1
    assert InferSummary.read(url, STORAGE) == InferSummary(**summary())
    assert InferSummary.read(str(tmp_path / "none.json"), STORAGE) is None


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_another_schema_version_is_one_clear_error(tmp_path, version):
    data = {**summary(), "schema_version": version}
    (tmp_path / "summary.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=f"schema version {version!r}, this code reads 1") as err:
        InferSummary.read(str(tmp_path / "summary.json"), STORAGE)
    assert "re-run `stf infer`" in str(err.value)


def test_documents_refuse_unknown_and_missing_keys():
    with pytest.raises(ValidationError, match="extra"):
        InferSummary(**summary(surprise=1))
    with pytest.raises(ValidationError, match="rows"):
        InferSummary(**{k: v for k, v in summary().items() if k != "rows"})
    with pytest.raises(ValidationError):
        EvalReport(n=1, accuracy=1.0, by_type={}, errors=0, model="/m", questions="/q")  # v1


def test_read_manifest_refuses_missing_failed_and_foreign_outputs(tmp_path):
    with pytest.raises(MissingInput, match="did not finish"):
        read_manifest(str(tmp_path))
    (tmp_path / MANIFEST).write_text(json.dumps({"schema_version": 0, "status": "complete"}))
    with pytest.raises(
        InputError, match="shard manifest schema version 0.*re-run `stf preprocess`"
    ):
        read_manifest(str(tmp_path))


def plan_fields(spec: TrainSpec) -> dict:
    return dict(
        spec=spec,
        shard_urls=["/d/shards/a.parquet"],
        rows=48,
        data_bytes=350_000,
        world_size=2,
        micro_per_epoch=6,
        steps_per_epoch=6,
        total_steps=12,
        image_token_id=4,
        num_image_tokens=36,
        pad_token_id=3,
        image_size=48,
        max_length=2048,
        longest=120,
        flops_per_token=1e6,
        peak_flops=0.0,
    )


def test_the_train_plan_is_frozen_and_refuses_a_wrong_key():
    spec = TrainSpec(name="r", storage_path="/runs", stage="pretrain", data=["/d"])
    plan = TrainPlan(**plan_fields(spec))
    with pytest.raises(ValidationError):
        plan.total_steps = 99
    with pytest.raises(ValidationError, match="image_tokens"):
        TrainPlan(**{**plan_fields(spec), "image_tokens": 36})  # a misspelt key, caught here
    missing = {k: v for k, v in plan_fields(spec).items() if k != "pad_token_id"}
    with pytest.raises(ValidationError, match="pad_token_id"):
        TrainPlan(**missing)
    state = TrainState(step=5, epoch=1, micro_in_epoch=3)
    assert TrainState.model_validate_json(state.model_dump_json()) == state


def test_the_run_folder_reads_metrics_typed_and_leaves_out_a_row_being_written(tmp_path):
    run = RunFolder(str(tmp_path / "run"), STORAGE)
    assert run.read_metrics() == []  # before the first row
    (tmp_path / "run").mkdir()
    header = ",".join(METRIC_COLUMNS)
    rows = [
        "1,0,6.25,0.001,1.5,40.0,900.0,nan,0.2,0.05",
        "2,0,6.0,0.001,nan,41.0,910.0,nan,0.2,0.04",
    ]
    torn = "3,0,5.9,0.0"
    (tmp_path / "run" / "metrics.csv").write_text("\n".join([header, *rows, torn]))
    first, second = run.read_metrics()
    assert (first.step, first.loss, second.step, second.loss) == (1, 6.25, 2, 6.0)
    assert "mfu" not in first.measured() and first.measured()["grad_norm"] == 1.5
    assert set(second.measured()) == set(METRIC_COLUMNS) - {"step", "mfu", "grad_norm"}
    (tmp_path / "run" / "metrics.csv").write_text(f"{header}\n1,0,6.25\n")
    with pytest.raises(ValidationError, match="lr"):
        run.read_metrics()  # a whole row with columns missing is an error, not a guess
