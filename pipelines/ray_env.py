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


def require_resources(job: str, asked: str, need: dict[str, float]) -> None:
    """Refuses at once what a local Ray that this job started can never schedule.

    ``need``: the resources (Ray's names: CPU, GPU, custom ones) that ``asked`` (e.g. "2 workers
    of {'GPU': 1}") must hold at the same time, as a placement group or a fixed actor pool needs
    them. Ray itself would wait forever ("No available node types can fulfill resource
    request"). On a cluster reached through ``RAY_ADDRESS`` the autoscaler may add nodes, so
    nothing is refused here.
    """
    if not _started_local:
        return
    have = ray.cluster_resources()
    need = {name: amount for name, amount in need.items() if amount > 0}
    if all(amount <= have.get(name, 0) + 1e-9 for name, amount in need.items()):
        return
    wanted = ", ".join(f"{amount:g} {name}" for name, amount in sorted(need.items()))
    has = ", ".join(f"{have.get(name, 0):g} {name}" for name in sorted(need))
    raise Unschedulable(
        f"{job}: {asked} need {wanted} at once; this machine's Ray has {has}. Ask for less, "
        "or run on a cluster that has them (RAY_ADDRESS or stf submit)"
    )
