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
    first."""
    env = {**os.environ, "RAY_ADDRESS": ray_address}
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
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def actor_processes(class_name: str, gcs_address: str) -> list:
    """The live processes of ``class_name`` actors of the Ray at ``gcs_address``, and of no other
    Ray on this machine (a developer's own training run must survive the fault tests). Ray titles
    an actor's process ``ray::CLASS``; its parent is its node's raylet, started with
    ``--gcs-address``. (The state API would find them too, but needs the dashboard.)"""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if not any(f"ray::{class_name}" in part for part in proc.info["cmdline"] or []):
            continue
        try:
            raylet = proc.parent()
            ours = raylet is not None and f"--gcs-address={gcs_address}" in raylet.cmdline()
        except psutil.NoSuchProcess:
            continue
        if ours:
            found.append(proc)
    return found
