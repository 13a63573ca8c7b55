"""`stf serve`: a Ray Serve application with the OpenAI chat-completions API over a model directory.

One deployment (:class:`ChatServer`, a FastAPI ingress) holds a model replica; concurrent requests
are batched by ``@serve.batch`` into one ``generate`` call, each with its own sampling settings, and
stream back token by token when asked. Requests are checked at the edge (auth, size, schema, images)
and every refusal is an OpenAI-style JSON error with a 4xx status; Serve's own queue limit turns
overload into 503s.

FastAPI reads the route signatures at run time, so this module keeps real (not postponed)
annotations. RayService and ``serve run`` use :func:`app_builder` (``pipelines.serve:app_builder`` with the spec
as ``args``); ``stf serve SPEC.yaml`` runs the same application on the connected Ray.
"""

import asyncio
import base64
import binascii
import hmac
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from ray import serve

from pipelines.model_loader import InferenceModel, load_generator
from pipelines.spec import JobSpec, StorageOptions
from stf_model.generation import ChatPrompt, SamplingParams
from stf_model.records import RecordError

log = logging.getLogger(__name__)

MiB = 1024 * 1024


# ---- the spec ----------------------------------------------------------------------------------


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

    @field_validator("autoscaling_config")
    @classmethod
    def _ray_autoscaling(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from ray.serve.config import AutoscalingConfig

        return AutoscalingConfig(**value).model_dump(exclude_unset=True)

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
        0.02, ge=0, description="how long a batch waits to fill before it runs"
    )


class RequestLimits(JobSpec):
    """What a request may ask for; anything over is refused with 413 (sizes) or 400."""

    max_body_bytes: PositiveInt = Field(20 * MiB, description="request body size")
    max_image_bytes: PositiveInt = Field(10 * MiB, description="one encoded image")
    max_image_pixels: PositiveInt = Field(40_000_000, description="one image's width*height")
    max_images: PositiveInt = Field(4, description="images per request")
    max_tokens: PositiveInt = Field(1024, description="largest max_tokens a request may ask for")
    default_max_tokens: PositiveInt = Field(256, description="max_tokens when a request has none")
    image_fetch_timeout_s: float = Field(10.0, gt=0, description="for allow-listed http(s) images")


class ServeSpec(JobSpec):
    """Serve a model directory with an OpenAI-compatible chat API on Ray Serve."""

    model: InferenceModel = Field(description="the model directory and where it runs")
    model_id: str | None = Field(
        None, description="the name clients pass as 'model' (default: the directory's name)"
    )
    app_name: str = Field("stf", description="Ray Serve application name")
    host: str = Field("127.0.0.1", description="HTTP host Serve's proxy binds (0.0.0.0 to expose)")
    port: PositiveInt = Field(8000, description="HTTP port")
    route_prefix: str = Field("/", description="URL prefix of the API")
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
    storage: StorageOptions = Field(default_factory=StorageOptions)

    @model_validator(mode="after")
    def _batch_fits(self) -> "ServeSpec":
        if self.deployment.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"deployment.max_ongoing_requests ({self.deployment.max_ongoing_requests}) is below "
                f"batching.max_batch_size ({self.batching.max_batch_size}): batches could never fill"
            )
        return self

    @property
    def served_model_id(self) -> str:
        return self.model_id or os.path.basename(self.model.path.rstrip("/")) or "stf"

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get(self.api_key_env) or None


# ---- the request schema (OpenAI chat completions) ---------------------------------------------


class _Body(BaseModel):
    # Clients send fields we do not use (user, metadata, ...); unknown keys are ignored, as
    # OpenAI-compatible servers do, but fields we cannot honour are refused below.
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImageURL(_Body):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Body):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    logprobs: Literal[False] = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return [s for s in stops if s]


class APIError(Exception):
    """A refused request: HTTP status + OpenAI error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code
        )  # fmt: skip

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


def _validation_message(err: ValidationError) -> tuple[str, str | None]:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"], where or None


# ---- images ------------------------------------------------------------------------------------


def _decode(data: bytes, limits: RequestLimits):
    from stf_model.processing import decode_image

    if len(data) > limits.max_image_bytes:
        raise APIError(413, f"image is {len(data)} bytes; the limit is {limits.max_image_bytes}",
                       code="image_too_large")  # fmt: skip
    try:
        return decode_image(data, limits.max_image_pixels)
    except RecordError as err:
        status = 413 if err.reason == "image_too_large" else 400
        raise APIError(
            status, f"image rejected ({err.reason}): {err.detail}", code=err.reason
        ) from err


def _host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern.startswith("*.") and (host.endswith(pattern[1:]) or host == pattern[2:]):
            return True
        if host == pattern:
            return True
    return False


async def _load_image(url: str, spec: ServeSpec):
    limits = spec.limits
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header or not header[5:].startswith("image/"):
            raise APIError(400, "image_url data URLs must be data:image/...;base64,...",
                           param="image_url")  # fmt: skip
        if len(payload) * 3 // 4 > limits.max_image_bytes:
            raise APIError(413, f"image is over the {limits.max_image_bytes}-byte limit",
                           code="image_too_large")  # fmt: skip
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as err:
            raise APIError(400, f"image_url is not valid base64: {err}", param="image_url") from err
        return await asyncio.to_thread(_decode, data, limits)  # off the event loop
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise APIError(400, "image_url must be a data: URL or an allowed http(s) URL",
                       param="image_url")  # fmt: skip
    if not parts.hostname or not _host_allowed(parts.hostname, spec.allowed_image_hosts):
        raise APIError(400, f"fetching images from {parts.hostname!r} is not allowed on this "
                       "server (allowed_image_hosts); send the image as a data: URL",
                       param="image_url", code="image_host_not_allowed")  # fmt: skip
    return await asyncio.to_thread(_decode, await _fetch(url, limits), limits)


async def _fetch(url: str, limits: RequestLimits) -> bytes:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=limits.image_fetch_timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            # No redirects: a redirect could lead off the allow-list.
            session.get(url, allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise APIError(400, f"fetching the image returned HTTP {response.status}",
                               param="image_url")  # fmt: skip
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > limits.max_image_bytes:
                    raise APIError(413, f"image is over the {limits.max_image_bytes}-byte limit",
                                   code="image_too_large")  # fmt: skip
            return bytes(data)
    except (aiohttp.ClientError, TimeoutError) as err:
        raise APIError(400, f"could not fetch the image: {type(err).__name__}: {err}",
                       param="image_url") from err  # fmt: skip


# ---- the deployment ----------------------------------------------------------------------------


# Defined before the deployment: @serve.ingress captures the class (and what it names) when the
# class statement runs.
def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


api = FastAPI(title="LLaVA-STF", docs_url=None, redoc_url=None)


@api.exception_handler(APIError)
async def _api_error(_request: Request, err: APIError) -> JSONResponse:
    return err.response()


@api.exception_handler(Exception)
async def _server_error(_request: Request, err: Exception) -> JSONResponse:
    log.exception("request failed")
    return APIError(500, f"{type(err).__name__}: {err}", type_="server_error").response()


@api.exception_handler(404)
async def _not_found(request: Request, _err) -> JSONResponse:
    return APIError(
        404, f"no route {request.method} {request.url.path}", code="not_found"
    ).response()


@api.exception_handler(405)
async def _bad_method(request: Request, _err) -> JSONResponse:
    return APIError(405, f"{request.method} is not allowed on {request.url.path}").response()


@serve.deployment(name="ChatServer")
@serve.ingress(api)
class ChatServer:
    """One model replica behind the OpenAI chat API."""

    def __init__(self, spec: ServeSpec):
        self.spec = spec
        self.model_id = spec.served_model_id
        self.api_key = spec.resolved_api_key()
        self.generator = load_generator(spec.model, spec.storage)
        self.max_context = self.generator.model.config.text_config.max_position_embeddings
        self._generate_batch.set_max_batch_size(spec.batching.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(spec.batching.batch_wait_timeout_s)
        self.batch_sizes: Counter[int] = Counter()
        self.requests = 0
        self.created = int(time.time())

    # -- routes --
    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "model": self.model_id}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        card = {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "stf"}
        return {"object": "list", "data": [card]}

    @api.get("/stats")
    async def stats(self, request: Request) -> dict:
        """This replica's counters: requests served and how many batches had each size."""
        self._authorize(request)
        return {"requests": self.requests, "batch_sizes": dict(sorted(self.batch_sizes.items()))}

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        self._authorize(request)
        body = await self._read_body(request)
        prompt, prompt_tokens = await self._prompt(body)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                self._sse(prompt, prompt_tokens, completion_id, include_usage),
                media_type="text/event-stream",
            )
        text, finish, completion_tokens = "", "stop", 0
        async for delta, reason, tokens in self._run(prompt):
            text += delta
            finish, completion_tokens = reason or finish, tokens
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],  # fmt: skip
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    # -- request checks --
    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # Constant-time comparison: the time taken must not reveal how much of a guess matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer ...)",
                           type_="authentication_error", code="invalid_api_key")  # fmt: skip

    async def _read_body(self, request: Request) -> ChatCompletionRequest:
        limit = self.spec.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body is {declared} bytes; the limit is {limit}",
                           code="request_too_large")  # fmt: skip
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise APIError(413, f"request body is over the {limit}-byte limit",
                               code="request_too_large")  # fmt: skip
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise APIError(400, f"request body is not valid JSON: {err}") from err
        try:
            body = ChatCompletionRequest.model_validate(data)
        except ValidationError as err:
            message, param = _validation_message(err)
            raise APIError(400, message, param=param) from err
        if body.model is not None and body.model != self.model_id:
            raise APIError(404, f"model {body.model!r} is not served here; use {self.model_id!r}",
                           param="model", code="model_not_found")  # fmt: skip
        return body

    async def _prompt(self, body: ChatCompletionRequest) -> tuple[ChatPrompt, int]:
        """The request as a prompt for the generator, and its length in tokens (images included)."""
        limits = self.spec.limits
        max_tokens = body.max_completion_tokens or body.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens {max_tokens} is over this server's limit "
                           f"{limits.max_tokens}", param="max_tokens")  # fmt: skip
        urls = [
            part.image_url.url
            for message in body.messages
            if not isinstance(message.content, str)
            for part in message.content
            if isinstance(part, ImagePart)
        ]
        if len(urls) > limits.max_images:
            raise APIError(400, f"{len(urls)} images; this server takes at most "
                           f"{limits.max_images} per request", param="messages")  # fmt: skip
        images = [await _load_image(url, self.spec) for url in urls]
        messages = [m.model_dump() for m in body.messages]
        try:
            text = self.generator.render(messages)
        except Exception as err:  # the model's own template refused the conversation
            raise APIError(400, f"the model's chat template rejected the messages: {err}",
                           param="messages") from err  # fmt: skip
        params = SamplingParams(max_new_tokens=max_tokens, temperature=body.temperature,
                                top_p=body.top_p, stop=tuple(body.stop or ()))  # fmt: skip
        prompt = ChatPrompt(text=text, images=images, params=params, stream=body.stream)
        prompt_tokens = self.generator.count_prompt_tokens(prompt)
        needed = prompt_tokens + max_tokens
        if needed > self.max_context:
            raise APIError(400, f"prompt plus max_tokens is {needed} tokens; the model's context "
                           f"is {self.max_context}", param="messages",
                           code="context_length_exceeded")  # fmt: skip
        return prompt, prompt_tokens

    # -- generation --
    async def _run(self, prompt: ChatPrompt) -> AsyncIterator[tuple[str, str | None, int]]:
        """(new text, finish reason or None, tokens so far) for one request, from its batch."""
        self.requests += 1
        try:
            async for event in self._generate_batch(prompt):
                if event is not None:
                    yield event
        finally:
            prompt.cancelled.set()  # a client that went away stops its row at the next token

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _generate_batch(self, prompts: list[ChatPrompt]):
        """Runs one ``generate`` for the batch in a thread and yields, per step, one entry per
        request: its news, ``None`` (nothing new) or ``StopIteration`` once it has finished."""
        self.batch_sizes[len(prompts)] += 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_delta(row: int, text: str, reason, tokens: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (row, text, reason, tokens))

        work = loop.run_in_executor(None, self.generator.generate, prompts, on_delta)
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(events.put_nowait, None))
        done = [False] * len(prompts)
        finished_thread = False
        while not finished_thread:
            step: list[Any] = [StopIteration if d else None for d in done]
            item = await events.get()
            while True:
                if item is None:
                    finished_thread = True
                else:
                    row, text, reason, tokens = item
                    previous = step[row][0] if isinstance(step[row], tuple) else ""
                    step[row] = (previous + text, reason, tokens)
                if events.empty():
                    break
                item = events.get_nowait()
            if finished_thread:
                await work  # raises the generation error, if any, to every request in the batch
            for row, entry in enumerate(step):
                if isinstance(entry, tuple) and entry[1] is not None:
                    done[row] = True
            if any(isinstance(entry, tuple) for entry in step):
                yield step
        # Serve ends the streams of requests still open when this generator returns.

    async def _sse(
        self, prompt: ChatPrompt, prompt_tokens: int, completion_id: str, include_usage: bool
    ):
        created = int(time.time())

        def chunk(delta: dict, finish: str | None, usage: dict | None = None) -> str:
            choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
            data = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                    "model": self.model_id, "choices": choices}  # fmt: skip
            if usage:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        yield chunk({"role": "assistant", "content": ""}, None)
        completion_tokens = 0
        try:
            async for delta, reason, tokens in self._run(prompt):
                completion_tokens = tokens
                if delta:
                    yield chunk({"content": delta}, None)
                if reason is not None:
                    yield chunk({}, reason)
        except Exception as err:  # headers are gone: report in-band, as OpenAI's API does
            log.exception("generation failed")
            yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'server_error'}})}\n\n"
        if include_usage:
            usage = _usage(prompt_tokens, completion_tokens)
            yield chunk({}, None, usage)
        yield "data: [DONE]\n\n"


# ---- building and running ----------------------------------------------------------------------


def build_app(spec: ServeSpec):
    """The Serve application for a spec (bind it with ``serve.run`` or return it from a builder)."""
    return ChatServer.options(**spec.deployment.ray_options()).bind(spec)


def app_builder(args: dict[str, Any]):
    """Entry for Serve config files and KubeRay's RayService: ``import_path:
    pipelines.serve:app_builder`` with the serve spec as ``args``."""
    return build_app(ServeSpec.model_validate(args))


def _deploy(spec: ServeSpec) -> None:
    serve.start(http_options={"host": spec.host, "port": spec.port})
    serve.run(build_app(spec), name=spec.app_name, route_prefix=spec.route_prefix)


def run(spec: ServeSpec, blocking: bool = True) -> str:
    """Starts (or updates) the application on the connected Ray and returns its base URL; with
    ``blocking`` it serves until interrupted and then shuts Serve down."""
    from pipelines.ray_env import init_ray

    init_ray()
    url = f"http://{spec.host}:{spec.port}{spec.route_prefix.rstrip('/')}"
    if not blocking:
        _deploy(spec)
        return url
    try:  # Ctrl-C at any point, even while the replicas start, shuts Serve down
        _deploy(spec)
        log.info("serving %s at %s/v1 (model id %r)", spec.model.path, url, spec.served_model_id)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping: shutting Serve down")
    finally:
        serve.shutdown()
    return url
