"""How long an S3 outage a request rides out: one PUT through a relay in front of moto's S3 server
that refuses every connection for N seconds from the PUT's first byte, with botocore's default
retries and with the retries our storage options set (`storage.max_attempts`, default 10).

    python bench/storage_outage.py [--outages 5 20 40]

Prints, per outage, the seconds until the PUT succeeded or gave up. The relay is the one the fault
tests use (tests/jobs/outage.py).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "jobs"))

from outage import S3Outage  # noqa: E402


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)


def put_through_outage(endpoint: str, seconds: float, options: dict) -> tuple[bool, float]:
    import s3fs

    relay = S3Outage(endpoint, trigger=b"PUT /bench/object", seconds=seconds)
    try:
        fs = s3fs.S3FileSystem(endpoint_url=relay.url, skip_instance_cache=True, **options)
        if not fs.exists("bench"):
            fs.mkdir("bench")
        start = time.perf_counter()
        try:
            fs.pipe_file("bench/object", b"x" * 1000)
            return True, time.perf_counter() - start
        except Exception:
            return False, time.perf_counter() - start
    finally:
        relay.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", type=float, nargs="+", default=[5, 20, 40])
    args = parser.parse_args()
    from pipelines.spec import StorageOptions

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    keys = {"key": "testing", "secret": "testing"}
    ours = StorageOptions().s3fs_options()["config_kwargs"]
    proc, endpoint = _moto()
    try:
        print(f"{'outage':>8}{'botocore defaults':>24}{'storage options':>24}")
        for seconds in args.outages:
            cells = []
            for options in ({}, {"config_kwargs": ours}):
                ok, took = put_through_outage(endpoint, seconds, {**keys, **options})
                cells.append(f"{'ok' if ok else 'gave up'} after {took:5.1f} s")
            print(f"{seconds:>6.0f} s{cells[0]:>24}{cells[1]:>24}")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
