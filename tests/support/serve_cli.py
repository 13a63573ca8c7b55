"""`stf serve` as a user runs it, for the tests that drive the command: a tiny model and a spec on
a free port, the command started, and the wait for its API."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def serve_spec(folder: Path, extra: str = "") -> tuple[Path, int]:
    """A tiny model in ``folder`` and an API-only serve spec for it on a free port (``extra``:
    more YAML lines); returns the spec's path and the port."""
    from stf_model import build_tiny, save_model_dir

    save_model_dir(*build_tiny(seed=0), folder / "model")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = folder / "serve.yaml"
    spec.write_text(
        f"model:\n  path: {folder / 'model'}\nport: {port}\nui: false\n"
        f"deployment:\n  num_cpus: 0.5\n{extra}"
    )
    return spec, port


def start_serve(spec: Path, env: dict[str, str], **popen) -> subprocess.Popen:
    """``python -m pipelines.cli serve SPEC`` with its output in a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", str(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def wait_for_models(proc: subprocess.Popen, port: int, timeout_s: float = 120) -> dict | None:
    """The server's ``/v1/models`` once it answers; None if the command ended or time ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()
        except (requests.RequestException, ValueError):
            time.sleep(0.5)
    return None
