"""How long an S3 outage a request rides out: one PUT through a relay in front of moto's S3 server
that refuses every connection for N seconds from the PUT's first byte, with botocore's default
retries and with the retries our storage options set (`storage.max_attempts`, default 10).

    python bench/storage_outage.py [--outages 5 20 40]

Prints, per outage, the seconds until the PUT succeeded or gave up. The relay is the one the fault
tests use (tests/jobs/outage.py), in front of the same moto server (tests/jobs/moto_s3.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.moto_s3 import running_moto  # noqa: E402
from support.outage import S3Outage  # noqa: E402


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
    with running_moto() as endpoint:
        print(f"{'outage':>8}{'botocore defaults':>24}{'storage options':>24}")
        for seconds in args.outages:
            cells = []
            for options in ({}, {"config_kwargs": ours}):
                ok, took = put_through_outage(endpoint, seconds, {**keys, **options})
                cells.append(f"{'ok' if ok else 'gave up'} after {took:5.1f} s")
            print(f"{seconds:>6.0f} s{cells[0]:>24}{cells[1]:>24}")


if __name__ == "__main__":
    main()
