"""Job specs: YAML + --set overrides, one-paragraph errors, secrets never written out."""

import os

import pytest

from pipelines.cli import main
from pipelines.preprocess import PreprocessSpec
from pipelines.spec import SpecError, StorageOptions, apply_overrides, load_spec, spec_reference


def write(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_yaml_plus_overrides_are_validated_together(tmp_path):
    path = write(tmp_path, "inputs: a.jsonl\noutput: out\nstorage:\n  region: eu-west-1\n")
    spec = load_spec(
        PreprocessSpec,
        path,
        ["max_length=512", "storage.endpoint_url=http://127.0.0.1:9", "inputs=[a, b]"],
    )
    # Local paths become absolute (workers may run elsewhere); s3:// URLs stay as given.
    assert spec.inputs == [os.path.abspath("a"), os.path.abspath("b")] and spec.max_length == 512
    assert load_spec(PreprocessSpec, path, ["inputs=s3://bucket/x.jsonl"]).inputs == [
        "s3://bucket/x.jsonl"
    ]
    assert spec.storage.region == "eu-west-1"
    assert spec.storage.endpoint_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "text,overrides,needle",
    [
        ("inputs: a\n", [], "key 'output' is required"),
        ("inputs: a\noutput: o\nmax_lenght: 5\n", [], "unknown key 'max_lenght'"),
        ("inputs: a\noutput: o\n", ["max_error_rate=2"], "key 'max_error_rate'"),
        ("inputs: a\noutput: o\n", ["template=chatml"], "key 'template'"),
        ("- a\n- b\n", [], "a spec is a mapping"),
        ("inputs: [a\n", [], "not valid YAML"),
        ("inputs: a\noutput: o\n", ["storage"], "expected dotted.key=value"),
        ("inputs: a\noutput: o\n", ["output.x=1"], "output is 'o', not a mapping"),
    ],
)
def test_spec_errors_name_the_key(tmp_path, text, overrides, needle):
    with pytest.raises(SpecError) as err:
        load_spec(PreprocessSpec, write(tmp_path, text), overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_reports_spec_errors_with_exit_2_and_no_traceback(tmp_path, capsys):
    path = write(tmp_path, "inputs: a\noutput: o\nbatch_size: zero\n")
    assert main(["preprocess", str(path)]) == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and "Traceback" not in err
    assert main(["preprocess", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_secrets_are_masked_in_the_resolved_spec():
    spec = PreprocessSpec(
        inputs=["a"], output="o", storage={"access_key_id": "AKIA", "secret_access_key": "s3cr3t"}
    )
    assert "s3cr3t" not in str(spec.resolved()) and "AKIA" not in str(spec.resolved())
    assert spec.storage.s3fs_options()["secret"] == "s3cr3t"


def test_storage_falls_back_to_the_aws_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    options = StorageOptions().s3fs_options()
    assert options["endpoint_url"] == "http://127.0.0.1:5000" and "key" not in options
    assert StorageOptions(endpoint_url="http://x").s3fs_options()["endpoint_url"] == "http://x"


def test_s3_retries_ride_out_an_outage_unless_the_aws_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    retries = StorageOptions().s3fs_options()["config_kwargs"]["retries"]
    assert retries == {"max_attempts": 10, "mode": "standard"}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    retries = StorageOptions().s3fs_options()["config_kwargs"]["retries"]
    assert retries == {"max_attempts": 3, "mode": "adaptive"}
    retries = StorageOptions(max_attempts=20).s3fs_options()["config_kwargs"]["retries"]
    assert retries["max_attempts"] == 20
    with pytest.raises(ValueError):
        StorageOptions(max_attempts=0)


def test_overrides_do_not_mutate_the_input():
    data = {"a": {"b": 1}}
    assert apply_overrides(data, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}
    assert data == {"a": {"b": 1}}


def test_reference_lists_every_key(capsys):
    reference = spec_reference(PreprocessSpec)
    for name in PreprocessSpec.model_fields:
        assert f"\n{name}:" in "\n" + reference
    assert "  endpoint_url: null" in reference and "inputs:  # required" in reference
    assert main(["spec", "preprocess"]) == 0
    assert "max_error_rate: 0.05" in capsys.readouterr().out


def test_reference_shows_an_optional_block_commented_out_with_every_key():
    import yaml

    from pipelines.train.spec import LoraOptions, TrainSpec

    reference = spec_reference(TrainSpec)
    block = reference.split("\n# lora:\n", 1)[1].split("\npreflight:", 1)[0]
    uncommented = yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))
    assert set(uncommented) == set(LoraOptions.model_fields)
    assert LoraOptions.model_validate(uncommented) == LoraOptions()
    assert yaml.safe_load(reference)["preflight"]["enforce"] is True  # still YAML, lora absent


def test_the_spec_layer_knows_the_library_presets():
    from stf_model import PRESETS
    from stf_model.constants import PRESET_NAMES

    assert tuple(PRESETS) == PRESET_NAMES


def test_every_example_spec_is_valid():
    """The specs under examples/ (the demo's, the cloud and real-model ones) load as their job's
    spec: a renamed key or a bad value there would only show when a user runs them."""
    from pathlib import Path

    from pipelines.jobs import JOBS, spec_class

    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
    assert len(examples) >= 10
    for path in examples:
        job = next((j for j in JOBS if path.name.startswith(f"{j}-")), None)
        assert job is not None, f"{path}: no job named by its file name"
        load_spec(spec_class(job), path)


@pytest.mark.parametrize(
    "job,text,needle",
    [
        ("serve", "model: {path: /m}\ndeployment: {max_queued_requests: 0}\n", "max_queued"),
        ("serve", "model: {path: /m}\nroute_prefix: v1\n", "route_prefix"),
        ("serve", "model: {path: /m}\nroute_prefix: /api/\n", "route_prefix"),
        ("serve", "model: {path: /m}\nport: 70000\n", "port"),
        ("infer", "model: {path: /m}\ninputs: []\noutput: /o\n", "inputs"),
        (
            "train",
            "name: r\nstorage_path: /r\nstage: finetune\ndata: [/d]\ninit_from: /m\n"
            "optimizer: {betas: [1.5, -2]}\n",
            "betas",
        ),
    ],
)
def test_values_ray_or_torch_would_refuse_later_are_refused_when_the_spec_loads(
    tmp_path, job, text, needle
):
    """Refused at load time, naming the key, rather than as a traceback from Ray Serve's deploy
    or from Adam inside every training worker."""
    from pipelines.jobs import spec_class

    with pytest.raises(SpecError) as err:
        load_spec(spec_class(job), write(tmp_path, text), [])
    assert needle in str(err.value)


def test_a_model_directory_that_is_not_ours_is_named_as_such(tmp_path):
    from support.base_models import save_llama

    from pipelines.errors import InputError
    from pipelines.models import load_config

    save_llama(tmp_path / "llama")
    with pytest.raises(InputError, match="not a LLaVA-STF model directory.*'llama'"):
        load_config(str(tmp_path / "llama"), StorageOptions())


def test_the_train_spec_knows_what_each_stage_trains_as_the_library_does():
    """The spec names each stage's parts without importing the model library (it checks lora
    against them); the library is the reference."""
    from pipelines.train.spec import STAGE_PARTS
    from stf_model.modeling import STAGE_PARTS as LIBRARY

    assert STAGE_PARTS == LIBRARY
