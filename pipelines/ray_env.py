"""Connecting a job to Ray: the cluster in ``RAY_ADDRESS`` when set, otherwise a local Ray."""

from __future__ import annotations

import logging
import os

import ray

from pipelines.errors import Unschedulable

log = logging.getLogger(__name__)
# Set when this process started its own local Ray: no autoscaler can add nodes to it, so a
# request it cannot hold now it can never hold.
_started_local = False


def init_ray() -> None:
    """Joins an already-initialised Ray, the cluster named by ``RAY_ADDRESS`` (a submitted job or
    a user pointing at a head node), or starts the embedded default: a local Ray on this machine."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address)
    else:
        log.info("RAY_ADDRESS is not set: starting a local Ray")
        ray.init(address="local", include_dashboard=False)
        global _started_local
        _started_local = True


def cluster_cpus() -> int:
    """CPUs the connected cluster has in total (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def require_resources(job: str, asked: str, need: dict[str, float], timeout_s: float) -> None:
    """Checks ``need`` (the resources, in Ray's names, that ``asked``, e.g. "2 workers of
    {'GPU': 1}", must hold at the same time, as a placement group or a fixed actor pool needs
    them) against the connected Ray before a job starts.

    On a local Ray that this job started, what it lacks it can never get (no autoscaler: Ray
    itself would wait forever, "No available node types can fulfill resource request"), so the
    job stops at once. On a cluster the autoscaler may add nodes: the job says what it waits
    for; the job gives up after ``timeout_s`` through :func:`gave_up`.
    """
    have = ray.cluster_resources()
    need = {name: amount for name, amount in need.items() if amount > 0}
    if all(amount <= have.get(name, 0) + 1e-9 for name, amount in need.items()):
        return
    if _started_local:
        raise Unschedulable(
            f"{job}: {asked} need {_amounts(need)} at once; this machine's Ray has "
            f"{_amounts({name: have.get(name, 0) for name in need})}. Ask for less, or run on a "
            "cluster that has them (RAY_ADDRESS or stf submit)"
        )
    log.warning(
        "%s: waiting up to %g s for %s (%s at once; the cluster has %s now; its autoscaler may "
        "add nodes)",
        job,
        timeout_s,
        asked,
        _amounts(need),
        _amounts({name: have.get(name, 0) for name in need}),
    )


def gave_up(job: str, asked: str, need: dict[str, float], timeout_s: float) -> Unschedulable:
    """The error for a job whose resources did not come within ``timeout_s`` on a cluster."""
    have = ray.cluster_resources()
    need = {name: amount for name, amount in need.items() if amount > 0}
    return Unschedulable(
        f"{job}: {asked} (needing {_amounts(need)} at once) did not start within "
        f"schedule_timeout_s = {timeout_s:g} s; the cluster has "
        f"{_amounts({name: have.get(name, 0) for name in need})}. Check the autoscaler's node "
        "types (and their quotas), ask for less, or raise schedule_timeout_s"
    )


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in sorted(resources.items()))
