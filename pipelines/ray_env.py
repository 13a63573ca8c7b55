"""Connecting a job to Ray: the cluster in ``RAY_ADDRESS`` when set, otherwise a local Ray."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

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
        use_local_ray_defaults()
        ray.init(address="local", include_dashboard=False)
        global _started_local
        _started_local = True


# Ray's settings that suit a cluster but cost a job on one machine seconds it need not wait.
# Ray's processes read them from the environment they inherit (Ray Train's controller from the
# driver's, when a run starts); a value the user exported wins.
LOCAL_RAY_DEFAULTS = {
    # With Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1, the user's choice), a stopping
    # replica keeps serving for this long so that HAProxy on every node stops routing to it
    # first: 30 s by default, which `stf serve` would wait out on Ctrl-C. On one machine the one
    # HAProxy reloads in about 0.5 s.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    # Ray Train's controller looks at its workers every 2 s by default, and a run waits for that
    # look to move on: workers started, each checkpoint report taken, training finished. A
    # 10-step 2-worker run with two checkpoints took 26-28.5 s, and 22-24.5 s at 0.5 s. The
    # controller's CPU while training: 0.40 s in 30 s at 0.5 s, 0.30 s at 2 s.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def use_local_ray_defaults() -> None:
    """Sets :data:`LOCAL_RAY_DEFAULTS` where the environment does not set them already; call it
    before starting a local Ray (the tests' shared Ray does too)."""
    for name, value in LOCAL_RAY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def stop_local_ray() -> None:
    """Stops the local Ray this process started, if it did. Ray's exit hook would do the same,
    but it first sleeps 0.5 s so that late log lines reach the terminal; a finished job has said
    what it says, so the CLI stops Ray itself when the command returns."""
    global _started_local
    if _started_local and ray.is_initialized():
        ray.shutdown()
    _started_local = False


def cluster_cpus() -> int:
    """CPUs the connected cluster has in total (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@dataclass(frozen=True)
class ResourceAsk:
    """What a job asks Ray for: ``count`` ``unit`` (workers, replicas), each holding ``each``
    (Ray's resource names: CPU, GPU, custom ones), all at the same time, as a placement group or
    a fixed actor pool needs them; and how long it may wait for them on a cluster."""

    job: str
    count: int
    unit: str
    each: dict[str, float]
    timeout_s: float

    @property
    def need(self) -> dict[str, float]:
        return {name: amount * self.count for name, amount in self.each.items() if amount > 0}

    def __str__(self) -> str:
        return f"{self.count} {self.unit} of {self.each}"


def require_resources(ask: ResourceAsk) -> None:
    """Checks what ``ask`` needs against the connected Ray before the job starts.

    On a local Ray that this job started, what it lacks it can never get (no autoscaler: Ray
    itself would wait forever, "No available node types can fulfill resource request"), so the
    job stops at once. On a cluster the autoscaler may add nodes: the job says what it waits
    for, and gives up after ``ask.timeout_s`` through :func:`gave_up`.
    """
    have = ray.cluster_resources()
    if all(amount <= have.get(name, 0) + 1e-9 for name, amount in ask.need.items()):
        return
    if _started_local:
        raise Unschedulable(
            f"{ask.job}: {ask} need {_amounts(ask.need)} at once; this machine's Ray has "
            f"{_amounts(_held(ask, have))}. Ask for less, or run on a cluster that has them "
            "(RAY_ADDRESS or stf submit)"
        )
    log.warning(
        "%s: waiting up to %g s for %s (%s at once; the cluster has %s now; its autoscaler may "
        "add nodes)",
        ask.job,
        ask.timeout_s,
        ask,
        _amounts(ask.need),
        _amounts(_held(ask, have)),
    )


def gave_up(ask: ResourceAsk) -> Unschedulable:
    """The error for a job whose resources did not come within ``ask.timeout_s`` on a cluster."""
    return Unschedulable(
        f"{ask.job}: {ask} (needing {_amounts(ask.need)} at once) did not start within "
        f"schedule_timeout_s = {ask.timeout_s:g} s; the cluster has "
        f"{_amounts(_held(ask, ray.cluster_resources()))}. Check the autoscaler's node types "
        "(and their quotas), ask for less, or raise schedule_timeout_s"
    )


def _held(ask: ResourceAsk, have: dict[str, float]) -> dict[str, float]:
    return {name: have.get(name, 0) for name in ask.need}


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in sorted(resources.items()))
