"""`stf submit` and `stf jobs`: run a job spec on a Ray cluster through Ray's Jobs API.

The submission ships this project as the job's working directory (Ray uploads it once per content
hash) together with the resolved spec, and the entrypoint is the same `stf` verb a laptop runs, so
`ray job submit --working-dir . -- python -m pipelines.cli train SPEC.yaml` is equivalent.
Secrets in a spec are never shipped: the cluster's own environment (AWS variables, instance roles,
Kubernetes secrets) provides credentials. The cluster's Ray token, found where Ray's own clients
look for it (:mod:`pipelines.ray_auth`), travels in each request's ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import UserError
from pipelines.jobs import JOBS, spec_class
from pipelines.ray_auth import Token, find_token, refusal
from pipelines.spec import JobSpec, SpecError, load_spec

log = logging.getLogger(__name__)

# What never travels to the cluster: environments, outputs, caches, VCS data.
EXCLUDES = [
    ".venv",
    ".git",
    "demo_out",
    "bench_out",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    "tests/data",
]
# Where the resolved spec waits to be uploaded with the working directory. Not in .gitignore on
# purpose: Ray's packaging skips git-ignored files. It is deleted right after the upload.
STAGING = ".stf-submit"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def detect_job(path: str | None, overrides: list[str]) -> str:
    """The one job whose spec schema the file validates against (specs forbid unknown keys, so
    the schemas do not overlap in practice); ambiguity or no match is a :class:`SpecError`."""
    matches, problems = [], {}
    for job in JOBS:
        try:
            load_spec(spec_class(job), path, overrides)
            matches.append(job)
        except SpecError as err:
            problems[job] = str(err).splitlines()[0]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise SpecError(f"{path} is a valid spec for {', '.join(matches)}: pass --job")
    details = "; ".join(f"{job}: {problem}" for job, problem in problems.items())
    raise SpecError(f"{path} is not a valid spec for any job ({details})")


def project_root() -> Path:
    """The directory holding this project's packages (the job's working directory)."""
    return Path(__file__).resolve().parents[1]


@dataclass
class Cluster:
    """The Jobs API of one Ray cluster, reached with its token when one is found."""

    address: str
    token: Token | None
    jobs: Any  # ray.job_submission.JobSubmissionClient

    @classmethod
    def connect(cls, address: str | None, token_file: str | None = None) -> Cluster:
        """Connects to the dashboard at ``address`` (or ``RAY_ADDRESS``), carrying the token from
        ``token_file`` or Ray's places (:func:`~pipelines.ray_auth.find_token`)."""
        from ray.job_submission import JobSubmissionClient

        address = address or os.environ.get("RAY_ADDRESS")
        if not address:
            raise SpecError("no cluster: pass --address http://HEAD:8265 or set RAY_ADDRESS")
        token = find_token(token_file)
        headers = token.http_headers() if token is not None else None
        cluster = cls(address, token, None)
        with cluster.refusals_explained():
            try:
                cluster.jobs = JobSubmissionClient(address, headers=headers)
            except ConnectionError as err:
                raise UserError(
                    f"no Ray dashboard answers at {address}: check the address (http://HEAD:8265; "
                    "docs/security.md shows how to reach a cluster's dashboard) and that the "
                    "cluster is up"
                ) from err
        return cluster

    @contextmanager
    def refusals_explained(self) -> Iterator[None]:
        """Turns the cluster's refusal of this client (no token, or not its token) into a
        :class:`~pipelines.ray_auth.ClusterRefused` that says where the token goes."""
        import aiohttp
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as err:
            raise refusal(self.address, self.token, err.message) from None
        except aiohttp.WSServerHandshakeError as err:  # following logs opens a websocket
            if err.status not in (401, 403):
                raise
            raise refusal(self.address, self.token, err.message) from None


def submit(
    cluster: Cluster,
    job: str,
    spec: JobSpec,
    submission_id: str | None = None,
    entrypoint_num_cpus: float = 0,
) -> str:
    """Submits ``spec`` as ``stf JOB`` and returns the submission id."""
    root = project_root()
    submission_id = submission_id or f"stf-{job}-{uuid.uuid4().hex[:8]}"
    staging = root / STAGING
    staging.mkdir(exist_ok=True)
    spec_file = staging / f"{submission_id}.yaml"
    # resolved(): secrets masked, so they are simply absent on the cluster (env vars apply).
    full = spec.resolved()
    resolved = _without_masked_secrets(full)
    if resolved != full:
        log.warning(
            "the spec's secrets are not shipped: the cluster's environment must provide them "
            "(AWS_* variables, an instance role or a Kubernetes secret)"
        )
    spec_file.write_text(yaml.safe_dump(resolved, sort_keys=False))
    try:
        return cluster.jobs.submit_job(
            entrypoint=f"python -m pipelines.cli {job} {STAGING}/{spec_file.name}",
            submission_id=submission_id,
            runtime_env={"working_dir": str(root), "excludes": EXCLUDES},
            metadata={"stf_job": job},
            # The driver only coordinates; reserving a CPU for it could starve the job's
            # workers on small clusters.
            entrypoint_num_cpus=entrypoint_num_cpus,
        )
    finally:
        spec_file.unlink(missing_ok=True)  # uploaded by now (the package is built on submit)


def _without_masked_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_masked_secrets(v) for k, v in value.items() if v != "**********"}
    if isinstance(value, list):
        return [_without_masked_secrets(v) for v in value]
    return value


def follow(cluster: Cluster, submission_id: str, out=sys.stdout) -> str:
    """Streams the job's logs until it ends; returns its final status."""

    async def tail() -> None:
        async for lines in cluster.jobs.tail_job_logs(submission_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    return wait(cluster, submission_id, timeout_s=60)


def wait(cluster: Cluster, submission_id: str, timeout_s: float = 3600) -> str:
    """Polls until the job reaches a terminal status (or the timeout); returns the status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(cluster.jobs.get_job_status(submission_id).value)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(1)


def list_jobs(cluster: Cluster) -> list[dict[str, Any]]:
    rows = []
    for info in cluster.jobs.list_jobs():
        rows.append(
            {
                "submission_id": info.submission_id,
                "status": str(info.status.value),
                "entrypoint": info.entrypoint,
                "start_time": info.start_time,
                "message": info.message,
            }
        )
    return sorted(rows, key=lambda r: r["start_time"] or 0)
