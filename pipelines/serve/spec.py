"""The serving job's spec. Loading it imports neither FastAPI nor Ray Serve (only a spec with an
``autoscaling_config`` is checked against Ray Serve's own schema)."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from pydantic import Field, PositiveFloat, PositiveInt, SecretStr, field_validator, model_validator

from pipelines.errors import SpecError
from pipelines.spec import InferenceModel, JobSpec, StorageOptions

MiB = 1024 * 1024


class DeploymentOptions(JobSpec):
    """Ray Serve deployment options for the model replicas."""

    num_replicas: PositiveInt = Field(
        1, description="fixed replica count (ignored with autoscaling)"
    )
    autoscaling_config: dict[str, Any] | None = Field(
        None,
        description="Ray Serve autoscaling (min_replicas, max_replicas, target_ongoing_requests, "
        "...); checked against Ray's own AutoscalingConfig",
    )
    max_ongoing_requests: PositiveInt = Field(
        16, description="requests a replica works on at once (at least max_batch_size)"
    )
    max_queued_requests: int = Field(
        64,
        ge=-1,
        description="requests waiting for a replica before new ones get 503 (-1: no limit)",
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs each replica reserves")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each replica reserves")
    schedule_timeout_s: PositiveFloat = Field(
        1800, description="on a cluster, seconds to wait for the replicas to start before giving up"
    )

    @field_validator("max_queued_requests")
    @classmethod
    def _ray_queue(cls, value: int) -> int:
        if value == 0:  # Ray Serve refuses 0 when it deploys
            raise ValueError("must be -1 (no limit) or at least 1")
        return value

    @field_validator("autoscaling_config")
    @classmethod
    def _ray_autoscaling(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from ray.serve.config import AutoscalingConfig

        return AutoscalingConfig(**value).model_dump(exclude_unset=True)

    def initial_replicas(self) -> int:
        """Replicas Serve starts with (at least one: a server with none answers nobody)."""
        if self.autoscaling_config is None:
            return self.num_replicas
        config = self.autoscaling_config
        return max(1, config.get("initial_replicas") or config.get("min_replicas") or 1)

    def ray_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config
        else:
            options["num_replicas"] = self.num_replicas
        return options


class BatchingOptions(JobSpec):
    """How concurrent requests are batched into one generate call on a replica."""

    max_batch_size: PositiveInt = Field(8, description="requests per batch")
    batch_wait_timeout_s: float = Field(
        0.02,
        ge=0,
        description="how long a batch waits to fill before it runs, when other requests are in "
        "flight (a request that finds the replica idle runs at once)",
    )


class RequestLimits(JobSpec):
    """What a request may ask for; anything over is refused with 413 (sizes) or 400."""

    max_body_bytes: PositiveInt = Field(20 * MiB, description="request body size")
    max_image_bytes: PositiveInt = Field(10 * MiB, description="one encoded image")
    max_image_pixels: PositiveInt = Field(
        40_000_000, description="one image's pixels, padded to a square"
    )
    max_images: PositiveInt = Field(4, description="images per request")
    max_tokens: PositiveInt = Field(1024, description="largest max_tokens a request may ask for")
    default_max_tokens: PositiveInt = Field(256, description="max_tokens when a request has none")
    image_fetch_timeout_s: float = Field(10.0, gt=0, description="for allow-listed http(s) images")

    @model_validator(mode="after")
    def _default_within_limit(self) -> RequestLimits:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"limits.default_max_tokens ({self.default_max_tokens}) is over limits.max_tokens "
                f"({self.max_tokens}): every request without max_tokens would be refused"
            )
        return self


class ServeSpec(JobSpec):
    """Serve a model directory with an OpenAI-compatible chat API on Ray Serve."""

    model: InferenceModel = Field(description="the model directory and where it runs")
    model_id: str | None = Field(
        None, description="the name clients pass as 'model' (default: the directory's name)"
    )
    app_name: str = Field("stf", description="Ray Serve application name")
    host: str = Field("127.0.0.1", description="HTTP host Serve's proxy binds (0.0.0.0 to expose)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    route_prefix: str = Field("/", description="URL prefix of the API")
    ui: bool = Field(
        True,
        description="serve the chat page at the route prefix (false: the API only, as for a "
        "RayService behind another front end)",
    )
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    batching: BatchingOptions = Field(default_factory=BatchingOptions)
    limits: RequestLimits = Field(default_factory=RequestLimits)
    allowed_image_hosts: list[str] = Field(
        default_factory=list,
        description="hosts whose http(s) image URLs may be fetched ('example.com', "
        "'*.example.com'); empty: only data: URLs (no server-side request forgery)",
    )
    api_key: SecretStr | None = Field(None, description="bearer key clients must send")
    api_key_env: str = Field(
        "STF_API_KEY", description="environment variable read for the key when api_key is unset"
    )
    require_api_key: bool | None = Field(
        None,
        description="refuse to start without a key (default: when host is not a loopback "
        "address; false serves an exposed host without one, e.g. behind an authenticating proxy)",
    )
    storage: StorageOptions = Field(default_factory=StorageOptions)

    @field_validator("route_prefix")
    @classmethod
    def _ray_route(cls, value: str) -> str:
        if not value.startswith("/") or (value != "/" and value.endswith("/")):
            raise ValueError("must start with '/' and not end with one (as '/' or '/v1')")
        return value

    @model_validator(mode="after")
    def _batch_fits(self) -> ServeSpec:
        if self.deployment.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"deployment.max_ongoing_requests ({self.deployment.max_ongoing_requests}) is below "
                f"batching.max_batch_size ({self.batching.max_batch_size}): batches could never fill"
            )
        return self

    @property
    def url(self) -> str:
        """Where the server answers on this machine: the chat page, with ``/v1`` after it the API
        (a server bound to every interface is reached through loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}{self.route_prefix.rstrip('/')}"

    @property
    def served_model_id(self) -> str:
        return self.model_id or os.path.basename(self.model.path.rstrip("/")) or "stf"

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get(self.api_key_env) or None

    def check_api_key(self) -> None:
        """Refuses to serve without a key where one is required: :attr:`require_api_key`, by
        default whenever the server listens beyond loopback (anyone who can reach it could
        otherwise use the model)."""
        required = self.require_api_key
        if required is None:
            required = not _is_loopback(self.host)
        if required and self.resolved_api_key() is None:
            why = (
                "require_api_key is true"
                if self.require_api_key
                else f"host {self.host} is reachable beyond this machine"
            )
            raise SpecError(
                f"serve: {why}, and there is no API key: set api_key_env's variable "
                f"({self.api_key_env}) where the server runs, or api_key; set "
                "require_api_key: false only behind a front end that authenticates"
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface
