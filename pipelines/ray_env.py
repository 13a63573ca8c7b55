"""Connecting a job to Ray: the cluster in ``RAY_ADDRESS`` when set, otherwise a local Ray."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


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


def cluster_cpus() -> int:
    """CPUs the connected cluster has in total (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
