"""`stf submit` / `stf jobs` and Ray's own `ray job submit` against a real head started with
`ray start --head` with Ray's token authentication (loopback only, the session's token, its own
temp dir, stopped at the end): without the token or with a wrong one the cluster refuses and `stf`
says where the token goes; with it, from any of the places Ray's clients look, jobs run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from pipelines.synth.corpus import write_corpus

# A second Ray cluster (a `ray start --head` with the Jobs API) and three submitted jobs: about
# 2.5 minutes, so these run with the slow tests (`make test-slow`, and CI's `.ci/run`).
TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head with the Jobs API and token authentication (the session's token: the tests'
    environment has it in RAY_AUTH_TOKEN_PATH), every process listening on 127.0.0.1 alone;
    yields the dashboard URL."""
    temp_dir = tempfile.mkdtemp(prefix="rh-")
    port, dashboard = _free_port(), _free_port()
    # Every port a second cluster would otherwise share with the session's own Ray (its dashboard
    # agent's default port is taken, and the job agent then never registers).
    agent_ports = [
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
    ]
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback only, as stf's own local Ray
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    env.pop("RAY_ADDRESS", None)
    ray = shutil.which("ray", path=str(BIN)) or "ray"
    proc = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--num-cpus=2",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            "--disable-usage-stats",
            *agent_ports,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/api/version", headers=_headers(), timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Ray head did not start")
            time.sleep(0.5)
        _wait_for_job_agent(url, deadline)
        yield url
    finally:
        proc.terminate()  # `ray start --block` stops this node's processes when it ends
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_job_agent(url: str, deadline: float) -> None:
    """The dashboard answers before its job agent is registered ("No available agent to submit
    job"): wait until a trivial job runs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(url, headers=_headers())
    while True:
        try:
            job = client.submit_job(entrypoint="echo ready")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        if time.monotonic() > deadline:
            raise RuntimeError("the Ray head's job agent did not run a trivial job")
        time.sleep(0.5)


def _headers() -> dict[str, str]:
    from pipelines.ray_auth import find_token

    return find_token().http_headers()


def _stf(*args, timeout=600, env_update=None, env_drop=()) -> subprocess.CompletedProcess:
    """Runs `stf ARGS`; its environment is this one without RAY_ADDRESS and ``env_drop``, then
    with ``env_update``."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for name in ("RAY_ADDRESS", *env_drop):
        env.pop(name, None)
    env.update(env_update or {})
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("submit")
    write_corpus(root / "corpus", n=40, seed=3, n_eval=0)
    return root


def test_submit_preprocess_then_train_and_list_them(ray_head, corpus):
    spec = corpus / "preprocess.yaml"
    spec.write_text(
        f"inputs: {corpus / 'corpus' / 'finetune.jsonl'}\noutput: {corpus / 'shards'}\n"
    )
    done = _stf("submit", str(spec), "--address", ray_head, "--submission-id", "stf-pre-1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "submitted stf preprocess as stf-pre-1" in done.stdout
    assert "SUCCEEDED" in done.stdout
    manifest = json.loads((corpus / "shards" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["written"] > 0

    train = corpus / "train.yaml"
    train.write_text(
        f"name: tiny\nstorage_path: {corpus / 'runs'}\nstage: finetune\ndata: {corpus / 'shards'}\n"
        "max_steps: 3\nscaling: {num_workers: 2}\ndeepspeed: {zero_stage: 2, precision: fp32, "
        "micro_batch_size: 2}\ncheckpoint_every: 100\nlog_every: 1\n"
    )
    done = _stf("submit", str(train), "--address", ray_head, "--set", "max_steps=2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (corpus / "runs" / "tiny" / "model" / "model.safetensors").exists()
    assert "train tiny: 2 steps" in done.stdout  # the job's own output, streamed back

    listed = _stf("jobs", "list", "--address", ray_head)
    assert listed.returncode == 0 and "stf-pre-1" in listed.stdout and "SUCCEEDED" in listed.stdout
    status = _stf("jobs", "status", "stf-pre-1", "--address", ray_head)
    assert "stf-pre-1: SUCCEEDED" in status.stdout
    logs = _stf("jobs", "logs", "stf-pre-1", "--address", ray_head)
    assert "preprocess " in logs.stdout


def test_a_failing_job_exits_nonzero_and_a_bad_spec_is_refused(ray_head, corpus):
    spec = corpus / "broken.yaml"
    spec.write_text(f"inputs: {corpus / 'missing' / '*.jsonl'}\noutput: {corpus / 'out2'}\n")
    done = _stf("submit", str(spec), "--address", ray_head)
    assert done.returncode == 1 and "FAILED" in done.stdout
    bad = corpus / "bad.yaml"
    bad.write_text("stage: sideways\n")
    refused = _stf("submit", str(bad), "--address", ray_head)
    assert refused.returncode == 2 and "not a valid spec for any job" in refused.stderr
    no_cluster = _stf("submit", str(spec))
    assert no_cluster.returncode == 2 and "--address" in no_cluster.stderr


def test_ray_job_submit_runs_the_same_entrypoint(ray_head, corpus):
    """Users who never touch our wrapper: Ray's own CLI (RAY_AUTH_MODE=token and the token's
    path, as Ray's documentation has them), this project as the working dir."""
    spec = corpus / "preprocess-ray.yaml"
    spec.write_text(
        f"inputs: {corpus / 'corpus' / 'pretrain.json'}\noutput: {corpus / 'shards-ray'}\n"
        "template: plain\nimage_aspect: crop\n"
    )
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    runtime_env = json.dumps(
        {"working_dir": str(ROOT), "excludes": [".venv", ".git", "tests/data"]}
    )
    done = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            ray_head,
            "--runtime-env-json",
            runtime_env,
            "--",
            "python",
            "-m",
            "pipelines.cli",
            "preprocess",
            str(spec),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((corpus / "shards-ray" / "manifest.json").read_text())["status"] == "complete"


def test_without_the_token_the_cluster_refuses_and_stf_says_where_it_goes(ray_head, corpus):
    """No token anywhere Ray's clients look (HOME without ~/.ray/auth_token): refused, exit 2,
    one line, no job created."""
    spec = corpus / "refused.yaml"
    spec.write_text(f"inputs: {corpus / 'corpus' / 'finetune.jsonl'}\noutput: {corpus / 'no'}\n")
    home = corpus / "home-without-token"
    home.mkdir(exist_ok=True)
    bare = {"env_update": {"HOME": str(home)}, "env_drop": TOKEN_VARIABLES}
    for args in (
        ["submit", str(spec), "--address", ray_head, "--submission-id", "stf-refused"],
        ["jobs", "list", "--address", ray_head],
        ["jobs", "logs", "stf-pre-1", "--follow", "--address", ray_head],
    ):
        done = _stf(*args, **bare)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "requires a token and none was found" in done.stderr, done.stderr
        assert "RAY_AUTH_TOKEN" in done.stderr and "Traceback" not in done.stderr
    listed = _stf("jobs", "list", "--address", ray_head)  # with the token
    assert listed.returncode == 0 and "stf-refused" not in listed.stdout
    assert not (corpus / "no").exists()


def test_a_wrong_token_is_refused_whichever_way_it_comes(ray_head, corpus, tmp_path):
    wrong = tmp_path / "wrong_token"
    wrong.write_text("not-this-clusters-token\n")
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("also-not-it")
    for source, how in (
        ("RAY_AUTH_TOKEN", {"env_update": {"RAY_AUTH_TOKEN": "nope"}}),
        (f"RAY_AUTH_TOKEN_PATH ({wrong})", {"env_update": {"RAY_AUTH_TOKEN_PATH": str(wrong)}}),
        ("~/.ray/auth_token", {"env_update": {"HOME": str(home)}, "env_drop": TOKEN_VARIABLES}),
    ):  # each ahead of the session's token in RAY_AUTH_TOKEN_PATH, or with it removed
        done = _stf("jobs", "list", "--address", ray_head, **how)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"refused the token from {source}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "nope" not in done.stderr
    done = _stf("jobs", "list", "--address", ray_head, "--token-file", str(wrong))
    assert done.returncode == 2 and f"refused the token from --token-file {wrong}" in done.stderr


def test_the_right_token_is_found_where_rays_clients_look(ray_head, corpus, tmp_path):
    """The token from --token-file, RAY_AUTH_TOKEN or ~/.ray/auth_token, with or without
    RAY_AUTH_MODE=token exported (Ray's own clients send nothing without it)."""
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    home, empty = tmp_path / "home", tmp_path / "empty"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(token)
    empty.mkdir()
    # Nothing but the one place under test: no RAY_AUTH_* variables, HOME without a token.
    bare = {"env_drop": ("RAY_AUTH_MODE", *TOKEN_VARIABLES), "env_update": {"HOME": str(empty)}}
    for args, env in (
        (["--token-file", os.environ["RAY_AUTH_TOKEN_PATH"]], {}),
        ([], {"RAY_AUTH_TOKEN": token}),
        ([], {"HOME": str(home)}),
    ):
        how = {**bare, "env_update": {**bare["env_update"], **env}}
        done = _stf("jobs", "list", "--address", ray_head, *args, **how)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCEEDED" in done.stdout  # the jobs earlier tests ran
    missing = _stf("jobs", "list", "--address", ray_head, "--token-file", str(tmp_path / "none"))
    assert missing.returncode == 2 and "cannot read the token file" in missing.stderr
