"""Request checks of the chat API, testable without a replica: a request is fully checked here
(key, body size, JSON, schema, model name, token and image limits, images, the chat template,
the context length) before it may join a batch.

:class:`Intake` needs only the spec and something that renders and counts prompts (the
replica's :class:`~stf_model.generation.ChatGenerator`); it reads no FastAPI object, so tests
drive it directly.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from collections.abc import AsyncIterable
from typing import Protocol

from pydantic import ValidationError

from pipelines import strict_json
from pipelines.serve.images import load_image
from pipelines.serve.protocol import APIError, ChatCompletionRequest, validation_error
from pipelines.serve.spec import ServeSpec
from stf_model.errors import ModelInputError
from stf_model.generation import ChatPrompt, SamplingParams
from stf_model.user_text import Rendered

# Requests with more message text than this are rendered and counted on a worker thread.
OFF_LOOP_CHARS = 64 * 1024


class PromptRenderer(Protocol):
    """What intake needs of the model: its chat template and its token count of a prompt."""

    def render(self, messages: list[dict]) -> Rendered: ...

    def count_prompt_tokens(self, prompt: ChatPrompt) -> int: ...


class Intake:
    """The checks of one replica, configured once from the spec."""

    def __init__(self, spec: ServeSpec, renderer: PromptRenderer, max_context: int):
        self.spec = spec
        self.renderer = renderer
        self.max_context = max_context
        self.model_id = spec.served_model_id
        spec.check_api_key()  # here too: a replica reads the key from its own node's environment
        self.api_key = spec.resolved_api_key()

    def authorize(self, authorization: str | None) -> None:
        """Checks the ``Authorization: Bearer KEY`` header when the server has a key (401)."""
        if self.api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        # Constant-time comparison: the time taken must not reveal how much of a guess matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise APIError(
                401,
                "missing or wrong API key (Authorization: Bearer ...)",
                type_="authentication_error",
                code="invalid_api_key",
            )

    async def read_body(
        self, declared_length: str | None, chunks: AsyncIterable[bytes]
    ) -> ChatCompletionRequest:
        """The body, read up to the size limit (413), parsed (400) and validated (400), naming a
        model this server has (404)."""
        limit = self.spec.limits.max_body_bytes
        if declared_length and declared_length.isdigit() and int(declared_length) > limit:
            raise APIError(
                413,
                f"request body is {declared_length} bytes; the limit is {limit}",
                code="request_too_large",
            )
        raw = bytearray()
        async for chunk in chunks:
            raw += chunk
            if len(raw) > limit:
                raise APIError(
                    413, f"request body is over the {limit}-byte limit", code="request_too_large"
                )
        try:
            data = strict_json.loads(raw)
        except strict_json.NotJSON as err:
            raise APIError(400, f"request body is not valid JSON: {err}") from err
        try:
            body = ChatCompletionRequest.model_validate(data)
        except ValidationError as err:
            raise validation_error(err) from err
        if body.model is not None and body.model != self.model_id:
            raise APIError(
                404,
                f"model {body.model!r} is not served here; use {self.model_id!r}",
                param="model",
                code="model_not_found",
            )
        return body

    async def prompt(self, body: ChatCompletionRequest) -> tuple[ChatPrompt, int]:
        """The request as a prompt for the generator, and its length in tokens (images included)."""
        limits = self.spec.limits
        max_tokens = body.max_completion_tokens or body.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(
                400,
                f"max_tokens {max_tokens} is over this server's limit {limits.max_tokens}",
                param="max_tokens",
            )
        urls = body.image_urls
        if len(urls) > limits.max_images:
            raise APIError(
                400,
                f"{len(urls)} images; this server takes at most {limits.max_images} per request",
                param="messages",
            )
        images = [await load_image(url, limits, self.spec.allowed_image_hosts) for url in urls]
        params = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(body.stop or ()),
        )
        messages = [m.model_dump() for m in body.messages]
        render = functools.partial(self._render, messages, images, params, body.stream)
        # Megabytes of text take seconds to render and count: not on the event loop, where
        # every other stream of the replica would wait.
        if body.text_length > OFF_LOOP_CHARS:
            prompt, prompt_tokens = await asyncio.to_thread(render)
        else:
            prompt, prompt_tokens = render()
        needed = prompt_tokens + max_tokens
        if needed > self.max_context:
            raise APIError(
                400,
                f"prompt plus max_tokens is {needed} tokens; the model's context is "
                f"{self.max_context}",
                param="messages",
                code="context_length_exceeded",
            )
        return prompt, prompt_tokens

    def _render(
        self, messages: list[dict], images: list, params: SamplingParams, stream: bool
    ) -> tuple[ChatPrompt, int]:
        """The prompt in the model's chat template, and its length in tokens."""
        try:
            text = self.renderer.render(messages)
        except Exception as err:  # the model's own template refused the conversation
            raise APIError(
                400, f"the model's chat template rejected the messages: {err}", param="messages"
            ) from err
        prompt = ChatPrompt(text=text, images=images, params=params, stream=stream)
        try:  # checked here, at the edge: a request that would fail its batch never joins one
            return prompt, self.renderer.count_prompt_tokens(prompt)
        except ModelInputError as err:
            raise APIError(400, str(err), param="messages") from err
