"""The local Ray `stf` starts, seen from the network: every listening socket of its processes is
listed and probed as a neighbour would (see `ray_sockets.py`). Nothing beyond loopback may let in a
client without the token, and Ray's own services refuse one on loopback too."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import psutil
import pytest
from support.ray_sockets import listeners, probe, ray_processes, target
from support.serve_cli import serve_spec, start_serve, wait_for_models


def _verdicts(root: psutil.Process) -> dict:
    found = listeners(ray_processes(root))
    assert any(x.process == "gcs_server" for x in found), found
    return {listener: probe(target(listener)) for listener in found}


def _assert_closed_to_clients_without_the_token(verdicts: dict, token: str) -> None:
    exposed = [
        f"{x}: {v}"
        for x, v in verdicts.items()
        if not x.loopback and v not in ("refused", "closed")
    ]
    assert exposed == [], "reachable beyond loopback without the token"
    # Ray's own gRPC services refuse a client without the token on loopback as well.
    open_grpc = [
        f"{x}: {v}"
        for x, v in verdicts.items()
        if v == "unknown service" or v.startswith("accepted: /")
    ]
    assert open_grpc == []
    # Ray's node services no longer listen on every interface.
    assert [
        str(x) for x in verdicts if x.process in ("gcs_server", "raylet") and not x.loopback
    ] == []
    # The probe tells a refusal from a welcome: with the token, the GCS answers.
    (gcs, *_) = [x for x in verdicts if x.process == "gcs_server"]
    assert probe(target(gcs), token=token).startswith("accepted: /ray.rpc.NodeInfoGcsService")


def test_the_tests_local_ray_lets_no_client_in_without_its_token(ray_local):
    """The session's Ray, started as `stf` starts its own (`start_local_ray`), after the jobs the
    suite ran on it (Ray Data, Train, Serve replicas, whose inter-deployment servers bind every
    interface: they are probed from this machine's network address)."""
    import ray

    assert ray.get(ray.remote(lambda: 1).remote()) == 1  # at least one worker process is up
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    _assert_closed_to_clients_without_the_token(_verdicts(psutil.Process()), token)


@pytest.mark.slow  # ~30 s on 2 cores: `stf serve` on its own Ray (`make test-slow`, and CI)
def test_stf_serve_with_no_set_up_keeps_its_ray_to_this_machine_and_its_token(tmp_path):
    """A first `make serve` on a fresh machine: no token anywhere, no Ray variables. `stf` writes
    Ray's token readable by its owner only, and its Ray, Serve included, lets no client in without
    it; the API answers on loopback."""
    spec, port = serve_spec(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env["HOME"] = str(home)
    proc = start_serve(spec, env, start_new_session=True)
    try:
        answered = wait_for_models(proc, port) is not None
        assert answered, "no answer" if proc.poll() is None else proc.stdout.read()[-3000:]
        token_file = home / ".ray" / "auth_token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        verdicts = _verdicts(psutil.Process(proc.pid))
        assert any(x.process.startswith("ray::ServeReplica") for x in verdicts)
        _assert_closed_to_clients_without_the_token(verdicts, token_file.read_text().strip())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
