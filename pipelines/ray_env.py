"""Connecting a job to Ray: the cluster in ``RAY_ADDRESS`` when set, otherwise a local Ray that
only this machine can reach, with Ray's token authentication on."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import ray
from ray._private import ray_constants

from pipelines.errors import Unschedulable, UserError
from pipelines.ray_auth import MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV, prepare_local_token

log = logging.getLogger(__name__)
# Set when this process started its own local Ray: no autoscaler can add nodes to it, so a
# request it cannot hold now it can never hold.
_started_local = False

# Ray gives a local Ray the machine's network address (it turns 127.0.0.1 into it), and its gRPC
# servers, agents and metrics endpoints then listen on every interface. With this variable at 0
# (meant for macOS and Windows, where Ray runs one node only) a local Ray advertises 127.0.0.1 and
# every one of its processes listens there alone. A driver that joins such a Ray needs it too.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class ClusterUnreachable(UserError, ConnectionError):
    """The cluster in ``RAY_ADDRESS`` did not accept this driver."""


def init_ray() -> None:
    """Joins an already-initialised Ray, the cluster named by ``RAY_ADDRESS`` (a submitted job or
    a user pointing at a head node), or starts the embedded default: a local Ray on this machine."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        try:
            ray.init(address=address)
        except ConnectionError as err:
            raise ClusterUnreachable(
                f"could not join the Ray cluster at {address} (RAY_ADDRESS): check that it is up "
                f"and reachable; a cluster with token authentication also needs {MODE_ENV}=token "
                f"and its token in {TOKEN_ENV} or {TOKEN_PATH_ENV}"
            ) from err
    else:
        log.info("RAY_ADDRESS is not set: starting a local Ray (loopback only, with a token)")
        start_local_ray(include_dashboard=False)
        global _started_local
        _started_local = True


def start_local_ray(**options) -> None:
    """Starts a Ray on this machine that listens on loopback alone and keeps Ray's token
    authentication on (unless ``RAY_AUTH_MODE=disabled`` says otherwise): ``stf``'s embedded
    default, and the tests' and benchmarks' Ray. ``options`` go to ``ray.init``."""
    use_local_ray_defaults()
    prepare_local_token()
    os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
    # Ray read the variable when it was imported, before this process knew it would start a local
    # Ray; its own processes started below read it from the environment they inherit.
    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(LOOPBACK_ONLY_ENV, True)
    quiet = _DropNotice("Token authentication is enabled for this Ray cluster")
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notices.addFilter(quiet)
    try:
        ray.init(address="local", **options)
    finally:
        notices.removeFilter(quiet)


class _DropNotice(logging.Filter):
    """Drops Ray's notice that a local Ray has token authentication, which advises turning it off;
    token authentication is what ``stf`` wants there."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


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


@contextlib.contextmanager
def ray_data_settings(**settings) -> Iterator[None]:
    """Sets Ray Data's process-wide ``DataContext`` for the block only, and restores it after:
    another job may run in this process next. ``preserve_order`` is the execution option of that
    name; any other keyword is a ``DataContext`` attribute. A dataset copies the context when it
    is created, so create the job's datasets inside the block."""
    context = ray.data.DataContext.get_current()
    owners = {
        name: context.execution_options if name == "preserve_order" else context
        for name in settings
    }
    previous = {name: getattr(owner, name) for name, owner in owners.items()}
    for name, value in settings.items():
        setattr(owners[name], name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            setattr(owners[name], name, value)


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
