"""Building and running the serve application: for ``stf serve``, for Serve config files and for
KubeRay's RayService (``import_path: pipelines.serve:app_builder`` with the spec as ``args``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import serve

from pipelines.ray_env import init_ray
from pipelines.serve.app import ChatServer
from pipelines.serve.spec import ServeSpec

log = logging.getLogger(__name__)


def build_app(spec: ServeSpec) -> serve.Application:
    """The Serve application for a spec (bind it with ``serve.run`` or return it from a builder)."""
    return ChatServer.options(**spec.deployment.ray_options()).bind(spec)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry for Serve config files and RayService: the serve spec as ``args``."""
    return build_app(ServeSpec.model_validate(args))


def _deploy(spec: ServeSpec) -> None:
    serve.start(http_options={"host": spec.host, "port": spec.port})
    serve.run(build_app(spec), name=spec.app_name, route_prefix=spec.route_prefix)


def run(spec: ServeSpec, blocking: bool = True) -> str:
    """Starts (or updates) the application on the connected Ray and returns its base URL; with
    ``blocking`` it serves until interrupted and then shuts Serve down."""
    init_ray()
    url = f"http://{spec.host}:{spec.port}{spec.route_prefix.rstrip('/')}"
    if not blocking:
        _deploy(spec)
        return url
    log.info("serving %s as %r; Ctrl-C stops", spec.model.path, spec.served_model_id)
    try:  # Ctrl-C at any point, even while the replicas start, shuts Serve down
        _deploy(spec)
        log.info("serving at %s/v1", url)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping: shutting Serve down")
    finally:
        serve.shutdown()
    return url


def summary_line(spec: ServeSpec, url: str) -> str:
    return f"serve: stopped; {spec.served_model_id!r} was served at {url}/v1"
