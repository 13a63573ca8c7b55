"""Jobs that can never be scheduled fail at once with what was asked and what the machine has,
instead of waiting forever for resources that a local Ray cannot get (no autoscaler); on a
cluster they say what they wait for and give up after ``schedule_timeout_s``."""

import os
import subprocess
import sys
import time

import pytest
from PIL import Image

import pipelines.ray_env as ray_env
from pipelines.errors import Unschedulable
from pipelines.infer import InferSpec
from pipelines.infer.job import run as run_infer
from pipelines.preprocess import PreprocessSpec
from pipelines.preprocess.job import run as preprocess
from pipelines.serve import ServeSpec
from pipelines.serve.job import run as run_serve
from pipelines.synth.corpus import write_corpus
from pipelines.train import TrainSpec
from pipelines.train.job import run as run_train

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "a.png")
    return str(folder)


@pytest.fixture
def local(monkeypatch):
    """As if this process had started its Ray (the session's is local, 2 CPUs, no GPU)."""
    monkeypatch.setattr(ray_env, "_started_local", True)


def refused(call, within_s: float = 30) -> str:
    start = time.monotonic()
    with pytest.raises(Unschedulable) as err:
        call()
    assert time.monotonic() - start < within_s
    return str(err.value)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("unschedulable-data")
    write_corpus(root / "corpus", n=24, seed=1, n_eval=0)
    data = str(root / "shards")
    preprocess(PreprocessSpec(inputs=[str(root / "corpus" / "finetune.jsonl")], output=data))
    return data


def test_train_asking_for_gpus_or_too_many_cpus_or_a_custom_resource(local, shards, tmp_path):
    base = {"name": "r", "storage_path": str(tmp_path / "runs"), "stage": "finetune"}
    base |= {"data": [shards], "model": "tiny"}
    gpu = refused(lambda: run_train(TrainSpec(**base, scaling={"use_gpu": True})))
    assert "2 workers of {'GPU': 1.0} need 2 GPU at once" in gpu and "has 0 GPU" in gpu
    cpus = refused(lambda: run_train(TrainSpec(**base, scaling={"num_workers": 3})))
    assert "need 3 CPU" in cpus and "has 2 CPU" in cpus
    custom = {"num_workers": 1, "resources_per_worker": {"CPU": 1, "tpu_slice": 1}}
    assert "0 tpu_slice" in refused(lambda: run_train(TrainSpec(**base, scaling=custom)))
    assert not (tmp_path / "runs" / "r").exists() or not any((tmp_path / "runs" / "r").iterdir())


def test_infer_and_serve_replicas_asking_for_a_gpu(local, model_dir, image_dir, tmp_path):
    infer = InferSpec(
        model={"path": model_dir}, inputs=image_dir, output=str(tmp_path / "o"), num_gpus=1
    )
    assert "1 replicas of {'CPU': 1.0, 'GPU': 1.0} need 1 CPU, 1 GPU" in refused(
        lambda: run_infer(infer)
    )
    serve = ServeSpec(model={"path": model_dir}, port=8131, deployment={"num_gpus": 0.5})
    assert "need 1 CPU, 0.5 GPU" in refused(lambda: run_serve(serve, blocking=False))
    many = ServeSpec(model={"path": model_dir}, port=8131, deployment={"num_replicas": 3})
    assert "3 replicas" in refused(lambda: run_serve(many, blocking=False))


@pytest.mark.slow  # ~10 s on 2 cores: a second Ray head, the CLI's own (`make test-slow`, CI)
def test_the_cli_on_its_own_local_ray_exits_2_at_once(model_dir, image_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = ["infer", "--set", f"model.path={model_dir}", "--set", f"inputs={image_dir}"]
    args += ["--set", f"output={tmp_path / 'o'}", "--set", "num_gpus=1"]
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "need 1 CPU, 1 GPU at once" in done.stderr and "has 2 CPU, 0 GPU" in done.stderr


@pytest.mark.slow  # three jobs wait out their timeouts (`make test-slow`)
def test_on_a_cluster_each_job_says_what_it_waits_for_and_gives_up_in_time(
    shards, model_dir, image_dir, tmp_path, caplog
):
    """The session's Ray stands for a cluster here (this process did not start it): nothing is
    refused up front, and each job gives up after its schedule_timeout_s."""
    from ray import serve

    base = {"name": "c", "storage_path": str(tmp_path / "runs"), "stage": "finetune"}
    base |= {"data": [shards], "model": "tiny"}
    gpu = {"use_gpu": True, "num_workers": 1, "schedule_timeout_s": 3}
    train = refused(lambda: run_train(TrainSpec(**base, scaling=gpu)), within_s=90)
    assert "did not start within schedule_timeout_s = 3 s" in train and "1 GPU" in train
    assert "waiting up to 3 s for 1 workers" in caplog.text
    infer = InferSpec(
        model={"path": model_dir},
        inputs=image_dir,
        output=str(tmp_path / "o"),
        num_gpus=1,
        schedule_timeout_s=3,
    )
    assert "stf infer: 1 replicas" in refused(lambda: run_infer(infer), within_s=90)
    spec = {"model": {"path": model_dir}, "port": 8132, "app_name": "never"}
    spec["deployment"] = {"num_gpus": 0.5, "schedule_timeout_s": 3}
    try:
        message = refused(lambda: run_serve(ServeSpec(**spec), blocking=False), within_s=90)
        assert "stf serve: 1 replicas" in message and "0.5 GPU" in message
        assert "never" not in serve.status().applications  # deleted, not left pending
    finally:
        serve.shutdown()
