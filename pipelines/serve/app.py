"""The FastAPI ingress and the Ray Serve deployment: one model replica per :class:`ChatServer`.

A request is checked completely by :class:`~pipelines.serve.intake.Intake` before it joins a
batch; ``@serve.batch`` then runs concurrent requests as one ``generate`` call, each with its own
sampling settings, and streams each row back as it grows. Refusals are OpenAI-style JSON errors.

FastAPI reads the route signatures at run time, so this module keeps real (not postponed)
annotations.
"""

import asyncio
import logging
import statistics
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve

from pipelines.models import load_generator
from pipelines.serve import protocol
from pipelines.serve.events import (
    GENERATE_ENDED,
    Delta,
    Ended,
    Failed,
    RowMark,
    RowNews,
    ends_row,
    merge_queued,
)
from pipelines.serve.intake import Intake
from pipelines.serve.page import chat_page
from pipelines.serve.protocol import APIError
from pipelines.serve.spec import ServeSpec
from stf_model.generation import ChatPrompt

log = logging.getLogger(__name__)
# How many recent requests (and batches) the timing medians in /stats cover.
TIMING_WINDOW = 256

api = FastAPI(title="LLaVA-STF", docs_url=None, redoc_url=None)


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


@api.exception_handler(APIError)
async def _api_error(_request: Request, err: APIError) -> JSONResponse:
    return _error_response(err)


@api.exception_handler(Exception)
async def _server_error(request: Request, err: Exception) -> JSONResponse:
    """A bug, not a bad request: the traceback goes to the server's log under an id, the client
    gets that id and nothing of the exception (its text can hold paths, prompts or secrets)."""
    message = _logged_server_error(f"request {request.method} {request.url.path}", err)
    return _error_response(APIError(500, message, type_="server_error"))


def _logged_server_error(what: str, err: BaseException) -> str:
    """Logs ``err``'s traceback under a new error id; returns the client's message, which
    names that id and nothing of the exception."""
    error_id = uuid.uuid4().hex[:12]
    log.error("%s failed (error id %s)", what, error_id, exc_info=err)
    return f"internal server error (error id {error_id}; the server log has the details)"


@api.exception_handler(404)
async def _not_found(request: Request, _err) -> JSONResponse:
    message = f"no route {request.method} {request.url.path}"
    return _error_response(APIError(404, message, code="not_found"))


@api.exception_handler(405)
async def _bad_method(request: Request, _err) -> JSONResponse:
    message = f"{request.method} is not allowed on {request.url.path}"
    return _error_response(APIError(405, message))


def _median_ms(seconds: deque[float]) -> float | None:
    return round(statistics.median(seconds) * 1e3, 3) if seconds else None


# Defined after everything it names: @serve.ingress captures the class, and what it refers to,
# when the class statement runs.
@serve.deployment(name="ChatServer")
@serve.ingress(api)
class ChatServer:
    """One model replica behind the OpenAI chat API."""

    def __init__(self, spec: ServeSpec):
        self.generator = load_generator(spec.model, spec.storage)
        max_context = self.generator.model.config.text_config.max_position_embeddings
        self.intake = Intake(spec, self.generator, max_context)
        self.model_id = self.intake.model_id
        self.chat_page = chat_page() if spec.ui else None
        self.image_tokens = self.generator.model.config.num_image_tokens
        self._generate_batch.set_max_batch_size(spec.batching.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(spec.batching.batch_wait_timeout_s)
        self.batch_sizes: Counter[int] = Counter()
        self.requests = 0
        self.active = 0  # requests in flight: generating or waiting in the batch queue
        # Recent timings for /stats, where a request's time goes inside the replica: reading the
        # body (Serve fetches it from its proxy), the whole route of a non-streaming request, and
        # each batch's generate.
        self.timings: dict[str, deque[float]] = {
            name: deque(maxlen=TIMING_WINDOW) for name in ("body", "handler", "generate")
        }
        self.created = int(time.time())
        # Every batch's generate runs on this one thread. On the event loop's shared pool, which
        # also decodes every request's image, it waited for a free thread and ran on whichever
        # one that was. bench/serve.py, three runs of each alternately: at concurrency 16 the
        # throughput was 1.93-2.02x one-at-a-time there, 2.28-2.41x here; a lone request's
        # generate took the same time within the noise.
        self.generate_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    # -- routes --
    @api.get("/")
    async def index(self) -> HTMLResponse:
        """The chat page (no key needed to load it: it holds nothing, and its API calls carry
        the key the user types, like any client's)."""
        if self.chat_page is None:
            raise APIError(
                404, "this server has no chat page (ui: false); the API is at /v1", code="not_found"
            )
        return HTMLResponse(self.chat_page.html, headers=self.chat_page.headers)

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "model": self.model_id}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self.intake.authorize(request.headers.get("authorization"))
        card = {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "stf"}
        return {"object": "list", "data": [card]}

    @api.get("/stats")
    async def stats(self, request: Request) -> dict:
        """This replica's counters: requests served, how many batches had each size, and medians
        over recent requests: reading the body, a non-streaming request's whole route, and a
        batch's ``generate`` (route minus body minus generate is our handler's own share)."""
        self.intake.authorize(request.headers.get("authorization"))
        return {
            "requests": self.requests,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            **{f"{name}_ms_p50": _median_ms(values) for name, values in self.timings.items()},
        }

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        started = time.perf_counter()
        self.intake.authorize(request.headers.get("authorization"))
        body = await self.intake.read_body(request.headers.get("content-length"), request.stream())
        self.timings["body"].append(time.perf_counter() - started)
        prompt, prompt_tokens = await self.intake.prompt(body)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = self._sse(prompt, prompt_tokens, completion_id, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        text, finish, completion_tokens = "", "stop", 0
        async for delta in self._run(prompt):
            text += delta.text
            finish, completion_tokens = delta.finish_reason or finish, delta.tokens
        image_tokens = len(prompt.images) * self.image_tokens
        answer = protocol.completion_body(
            completion_id,
            self.model_id,
            text,
            finish,
            prompt_tokens,
            completion_tokens,
            image_tokens,
        )
        self.timings["handler"].append(time.perf_counter() - started)
        return answer

    # -- generation --
    async def _run(self, prompt: ChatPrompt) -> AsyncIterator[Delta]:
        """One request's deltas, from its batch."""
        self.requests += 1
        # The batch window only pays when others are about to arrive. A request that finds the
        # replica idle (nothing queued, nothing generating) runs at once as a batch of one,
        # without Serve's batch queue (its hand-offs cost about 0.3 ms); one that arrives while
        # others are in flight joins the queue and waits up to the window so that the next batch
        # fills. Either way generate runs on the one generate thread, one batch after another.
        alone = not self.active
        self.active += 1
        try:
            steps = self._generate_rows([prompt]) if alone else self._generate_batch(prompt)
            async for step in steps:
                event = step[0] if alone else step  # Serve hands each request its own entry
                if event is RowMark.FINISHED:
                    break
                if isinstance(event, Failed):
                    raise event.error  # this request's own failure: a generic 500, logged
                if isinstance(event, Delta):
                    yield event
        finally:
            self.active -= 1
            prompt.cancelled.set()  # a client that went away stops its row at the next token

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _generate_batch(self, prompts: list[ChatPrompt]):
        """Serve's batching in front of :meth:`_generate_rows`: the prompts of requests that
        arrived together, and each request gets its own entry of every step."""
        async for step in self._generate_rows(prompts):
            yield step

    async def _generate_rows(self, prompts: list[ChatPrompt]):
        """Runs one ``generate`` for the batch on the generate thread and yields, per step, one
        :data:`~pipelines.serve.events.RowEvent` per prompt; a step only when some row has news
        (a delta or its failure)."""
        self.batch_sizes[len(prompts)] += 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[RowNews | Ended] = asyncio.Queue()

        def on_delta(row: int, text: str, reason: str | None, tokens: int) -> None:
            news = RowNews(row, Delta(text, reason, tokens))
            loop.call_soon_threadsafe(events.put_nowait, news)

        def generate() -> list:
            started = time.perf_counter()
            try:
                return self.generator.generate_each(prompts, on_delta)
            finally:
                self.timings["generate"].append(time.perf_counter() - started)

        work = loop.run_in_executor(self.generate_thread, generate)

        def ended(_work) -> None:
            loop.call_soon_threadsafe(events.put_nowait, GENERATE_ENDED)

        work.add_done_callback(ended)
        finished = [False] * len(prompts)
        thread_ended = False
        while not thread_ended:
            step, thread_ended = merge_queued(events, await events.get(), finished)
            if thread_ended:  # a row that failed gets its own error, and only that row
                for row, result in enumerate(await work):
                    if isinstance(result, Exception) and not finished[row]:
                        step[row] = Failed(result)
            for row, event in enumerate(step):
                finished[row] = finished[row] or ends_row(event)
            if any(not isinstance(event, RowMark) for event in step):
                yield step
        # Serve ends the streams of requests still open when this generator returns.

    async def _sse(
        self, prompt: ChatPrompt, prompt_tokens: int, completion_id: str, include_usage: bool
    ):
        created = int(time.time())

        def chunk(delta: dict, finish: str | None, usage: dict | None = None) -> str:
            return protocol.sse_chunk(completion_id, self.model_id, created, delta, finish, usage)

        yield chunk({"role": "assistant", "content": ""}, None)
        completion_tokens = 0
        try:
            async for delta in self._run(prompt):
                completion_tokens = delta.tokens
                if delta.text:
                    yield chunk({"content": delta.text}, None)
                if delta.final:
                    yield chunk({}, delta.finish_reason)
        except Exception as err:  # headers are gone: report in-band, as OpenAI's API does
            yield protocol.sse_error(_logged_server_error(f"stream {completion_id}", err))
        if include_usage:
            image_tokens = len(prompt.images) * self.image_tokens
            yield chunk({}, None, protocol.usage(prompt_tokens, completion_tokens, image_tokens))
        yield protocol.SSE_DONE
