"""Building and running the serve application: for ``stf serve``, for Serve config files and for
KubeRay's RayService (``import_path: pipelines.serve.job:app_builder`` with the spec as ``args``)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from ray import serve

from pipelines.ray_env import ResourceAsk, gave_up, init_ray, require_resources
from pipelines.serve.app import ChatServer
from pipelines.serve.spec import ServeSpec

log = logging.getLogger(__name__)


def build_app(spec: ServeSpec) -> serve.Application:
    """The Serve application for a spec (bind it with ``serve.run`` or return it from a builder)."""
    return ChatServer.options(**spec.deployment.ray_options()).bind(spec)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry for Serve config files and RayService: the serve spec as ``args``."""
    return build_app(ServeSpec.model_validate(args))


def _deploy(spec: ServeSpec, ask: ResourceAsk, stop: threading.Event | None = None) -> None:
    """Deploys and waits for the application to run, at most ``schedule_timeout_s``.

    ``serve.run`` waits for as long as the replicas take to be placed, which on a cluster whose
    autoscaler cannot add the right nodes is forever; so the application is submitted without
    waiting (``serve._run(_blocking=False)``, what ``serve.run`` calls) and its status polled
    here, as ``serve.run`` itself does, with a deadline; ``stop`` (Ctrl-C) ends the wait.
    """
    serve.start(http_options={"host": spec.host, "port": spec.port})
    app = build_app(spec)
    serve._run(app, _blocking=False, name=spec.app_name, route_prefix=spec.route_prefix)
    deadline = time.monotonic() + ask.timeout_s
    while True:
        status = serve.status().applications.get(spec.app_name)
        running = status is not None and status.status == "RUNNING"
        if running or (stop is not None and stop.is_set()):
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"deploying {spec.app_name!r} failed: {status.message}")
        if time.monotonic() > deadline:
            serve.delete(spec.app_name)
            raise gave_up(ask)
        time.sleep(0.2)


def run(spec: ServeSpec, blocking: bool = True) -> str:
    """Starts (or updates) the application on the connected Ray and returns its base URL; with
    ``blocking`` it serves until Ctrl-C (SIGINT) and then shuts Serve down."""
    spec.check_api_key()
    init_ray()
    deployment = spec.deployment
    each = {"CPU": deployment.num_cpus, "GPU": deployment.num_gpus}
    replicas = deployment.initial_replicas()
    ask = ResourceAsk("stf serve", replicas, "replicas", each, deployment.schedule_timeout_s)
    require_resources(ask)
    url = spec.url
    if not blocking:
        _deploy(spec, ask)
        return url
    log.info("serving %s as %r; Ctrl-C stops", spec.model.path, spec.served_model_id)
    stop = threading.Event()

    def on_interrupt(_signum, _frame) -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting for the deployment, shut down now
            raise KeyboardInterrupt
        log.info("stopping: Serve shuts down once the deployment has started (Ctrl-C again: now)")
        stop.set()

    # Ctrl-C only sets a flag: a KeyboardInterrupt raised inside Ray's own calls (while the
    # replicas start) could leave the driver unable to shut Serve down.
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        _deploy(spec, ask, stop)
        if not stop.is_set():
            page = f"; the chat page is at {url}/" if spec.ui else ""
            log.info("serving the API at %s/v1%s", url, page)
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        log.info("stopping now")
    finally:
        signal.signal(signal.SIGINT, previous)
        serve.shutdown()
    return url


def summary_line(spec: ServeSpec, url: str) -> str:
    return f"serve: stopped; {spec.served_model_id!r} was served at {url}/v1"
