"""The OpenAI chat-completions protocol as we serve it: request models, the error type that
becomes an OpenAI-style error body, and the response bodies (plain and streamed chunks)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# ---- requests ----------------------------------------------------------------------------------


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


MAX_STOP_CHARS = 1000
# Numbers and flags as JSON gives them: "5", true and 5.5 are not a token count.
Count = Annotated[int, Field(strict=True, gt=0)]
Flag = Annotated[bool, Field(strict=True)]


class ChatCompletionRequest(_Body):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2, strict=True)
    top_p: float = Field(1.0, gt=0, le=1, strict=True)
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    stop: str | list[str] | None = None
    stream: Flag = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    logprobs: Literal[False] = False
    # Accepted only in the forms that ask for nothing we lack: refused below, rather than
    # silently ignored and answered wrongly.
    top_logprobs: Literal[0] | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        # OpenAI's API takes null for any optional field (and some clients send every field).
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @field_validator("tools", "functions", "logit_bias")
    @classmethod
    def _none_given(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            raise ValueError(f"this server does not support {info.field_name}")
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_call(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (None, "none", "auto"):
            raise ValueError("function calling is not supported by this server")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and value.get("type") != "text":
            raise ValueError("only {'type': 'text'} is supported by this server")
        return value

    @field_validator("seed")
    @classmethod
    def _seed_if_greedy(cls, value: int | None, info: ValidationInfo) -> int | None:
        # One generate call samples a whole batch from one random stream: no request can have
        # its own seed. Greedy decoding (temperature 0) is deterministic by itself.
        if value is not None and info.data.get("temperature", 1.0) > 0:
            raise ValueError("a seed is only honoured with temperature 0 on this server")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            # Each generated token checks the row's text against every stop string.
            raise ValueError(f"a stop sequence is over {MAX_STOP_CHARS} characters")
        return [s for s in stops if s]

    @property
    def text_length(self) -> int:
        """Characters of message text, over every message and part."""
        return sum(
            len(m.content)
            if isinstance(m.content, str)
            else sum(len(p.text) for p in m.content if isinstance(p, TextPart))
            for m in self.messages
        )

    @property
    def image_urls(self) -> list[str]:
        """The URLs of every image part, in message order."""
        return [
            part.image_url.url
            for message in self.messages
            if not isinstance(message.content, str)
            for part in message.content
            if isinstance(part, ImagePart)
        ]


# ---- errors ------------------------------------------------------------------------------------


class APIError(Exception):
    """A refused request: HTTP status + OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error}


def validation_error(err: ValidationError) -> APIError:
    """A 400 naming the failing field of a request body: of pydantic's errors, the deepest
    (for ``content`` that is neither a string nor valid parts, the part's own error)."""
    first = max(err.errors(), key=lambda e: len(e["loc"]))
    # Without pydantic's names of union branches ("str", "list[tagged-union[...]]").
    where = ".".join(str(p) for p in first["loc"] if p != "str" and "[" not in str(p))
    text = first["msg"].removeprefix("Value error, ")
    message = f"{where}: {text}" if where else text
    return APIError(400, message, param=where or None)


# ---- responses ---------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int, image_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; ``prompt_tokens_details.image_tokens`` says how many of the prompt's
    tokens are vision tokens (OpenAI's details object names its parts ``*_tokens`` likewise)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"image_tokens": image_tokens},
    }


def completion_body(
    completion_id: str,
    model_id: str,
    text: str,
    finish: str,
    prompt_tokens: int,
    tokens: int,
    image_tokens: int = 0,
) -> dict[str, Any]:
    """A whole ``chat.completion`` response."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish,
    }
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [choice],
        "usage": usage(prompt_tokens, tokens, image_tokens),
    }


def sse_chunk(
    completion_id: str,
    model_id: str,
    created: int,
    delta: dict[str, Any],
    finish: str | None,
    usage_row: dict[str, int] | None = None,
) -> str:
    """One server-sent ``chat.completion.chunk`` event (the usage chunk has no choices)."""
    choices = [] if usage_row else [{"index": 0, "delta": delta, "finish_reason": finish}]
    data: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model_id,
        "choices": choices,
    }
    if usage_row:
        data["usage"] = usage_row
    return f"data: {json.dumps(data)}\n\n"


def sse_error(message: str) -> str:
    """An error event, for failures after the stream's headers are sent (as OpenAI's API does)."""
    return f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"


SSE_DONE = "data: [DONE]\n\n"
