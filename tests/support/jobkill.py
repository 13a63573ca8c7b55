"""Killing a running `stf` job, or one of its actors, from a test: a second driver on the test's
Ray cluster, SIGKILLed (its whole process group) as soon as its output shows it is mid-run; and
finding the processes of one class of actor on the test's own Ray only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable


def kill_cli_job_when(
    args: list[str],
    ray_address: str,
    ready: Callable[[], bool],
    timeout_s: float = 180,
    poll_s: float = 0.05,
) -> None:
    """Runs ``python -m pipelines.cli ARGS`` joined to ``ray_address`` and kills it once
    ``ready()`` is true (checked every ``poll_s``); fails if the job ends (or the timeout passes)
    first. Returns once Ray has also reaped the job's workers: they outlive the driver by a
    moment (a training worker can finish a step and write its metrics row after the kill), and
    what the killed run left is only settled once they are gone."""
    import ray

    assert ray.is_initialized(), "the test itself must be connected to the Ray at ray_address"
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    busy_before = {p.pid for p in _busy_workers(ray_address)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(poll_s)
        assert proc.poll() is None, "the job ended before it could be killed mid-run"
        assert ready(), "the job showed no progress before the timeout"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while (left := _busy_workers(ray_address, busy_before)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"the killed job's workers outlived it by 60 s: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def actor_processes(class_name: str, gcs_address: str) -> list:
    """The live processes of ``class_name`` actors of the Ray at ``gcs_address``, and of no other
    Ray on this machine (a developer's own training run must survive the fault tests). Ray titles
    an actor's process ``ray::CLASS``; its parent is its node's raylet, started with
    ``--gcs-address``. (The state API would find them too, but needs the dashboard.)"""
    return [
        p for p, title in _worker_processes(gcs_address) if title.startswith(f"ray::{class_name}")
    ]


def _busy_workers(gcs_address: str, excluding: set[int] = frozenset()) -> list:
    """The worker processes of the Ray at ``gcs_address`` that hold an actor or run a task (Ray
    retitles a worker ``ray::IDLE`` between tasks), less the pids in ``excluding`` and those of
    detached actors, which outlive their driver by design (Ray Data's stats and autoscaling
    singletons, Ray Train's placement-group cleaner)."""
    detached = _detached_actor_pids()
    return [
        p
        for p, title in _worker_processes(gcs_address)
        if title != "ray::IDLE" and p.pid not in excluding and p.pid not in detached
    ]


def _detached_actor_pids() -> set[int]:
    """The pids of the live detached actors in the GCS's actor table, read through the test's
    own connection to Ray (the public state API would need the dashboard, which the tests' Ray
    runs without)."""
    from ray._private import state

    return {a["Pid"] for a in state.actors().values() if a["IsDetached"] and a["State"] == "ALIVE"}


def _worker_processes(gcs_address: str) -> list:
    """(process, title) for each worker process of the Ray at ``gcs_address``, and of no other
    Ray on this machine."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        title = (proc.info["cmdline"] or [""])[0]
        if not title.startswith("ray::"):
            continue
        try:
            raylet = proc.parent()
            ours = raylet is not None and f"--gcs-address={gcs_address}" in raylet.cmdline()
        except psutil.NoSuchProcess:
            continue
        if ours:
            found.append((proc, title))
    return found
