"""Killing a running `stf` job from a test: a second driver on the test's Ray cluster, SIGKILLed
(its whole process group) as soon as its output shows it is mid-run."""

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
