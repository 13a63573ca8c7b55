"""The chat API's request checks without a replica, Ray or HTTP: `Intake` driven directly with a
tiny in-process model. Every refusal is an `APIError` with the status the API returns."""

import asyncio
import base64
import io
import json

import pytest
from PIL import Image

from pipelines.serve.images import host_allowed
from pipelines.serve.intake import Intake
from pipelines.serve.protocol import APIError
from pipelines.serve.spec import ServeSpec

KEY = "k-123"


@pytest.fixture(scope="module")
def generator():
    from stf_model import build_tiny
    from stf_model.generation import ChatGenerator
    from stf_model.processing import build_processor

    model, tokenizer = build_tiny(seed=0)
    return ChatGenerator(model.eval(), build_processor(model.config, tokenizer))


@pytest.fixture(scope="module")
def intake(generator):
    spec = ServeSpec.model_validate(
        {
            "model": {"path": "/models/tiny-chat"},
            "api_key": KEY,
            "limits": {
                "max_body_bytes": 200_000,
                "max_image_bytes": 50_000,
                "max_image_pixels": 10_000,
                "max_images": 1,
                "max_tokens": 64,
                "default_max_tokens": 16,
            },
            "allowed_image_hosts": ["*.images.example"],
        }
    )
    return Intake(spec, generator, max_context=200)


def png(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


def ask(url: str, text: str = "What is it?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


async def chunks(data: bytes, size: int = 1000):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def read(intake, body, declared=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return asyncio.run(intake.read_body(declared, chunks(raw)))


def refusal(call) -> APIError:
    with pytest.raises(APIError) as err:
        call()
    return err.value


def test_the_key_is_checked(intake):
    intake.authorize(f"Bearer {KEY}")
    intake.authorize(f"bearer {KEY}")
    for header in (None, "", f"Bearer {KEY}x", KEY, f"Basic {KEY}"):
        err = refusal(lambda h=header: intake.authorize(h))
        assert err.status == 401 and err.code == "invalid_api_key"


def test_bodies_are_limited_parsed_and_validated(intake):
    ok = {"messages": [{"role": "user", "content": "hi"}]}
    assert read(intake, ok).messages[0].content == "hi"
    assert refusal(lambda: read(intake, ok, declared="999999")).status == 413
    assert refusal(lambda: read(intake, {**ok, "pad": "x" * 300_000})).status == 413
    assert refusal(lambda: read(intake, b"{not json")).status == 400
    assert refusal(lambda: read(intake, b"\xff\xfe")).status == 400
    deep = b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    assert "too deeply" in refusal(lambda: read(intake, deep)).message
    for constant in (b"NaN", b"Infinity", b"-Infinity"):  # Python reads them; JSON has none
        body = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": ' + constant
        err = refusal(lambda b=body: read(intake, b + b"}"))
        assert err.status == 400 and "RFC 8259" in err.message
    schema = refusal(lambda: read(intake, {"messages": []}))
    assert schema.status == 400 and schema.param == "messages"
    assert refusal(lambda: read(intake, {**ok, "n": 2})).param == "n"
    wrong_model = refusal(lambda: read(intake, {**ok, "model": "other"}))
    assert wrong_model.status == 404 and "tiny-chat" in wrong_model.message


def prompt(intake, body):
    return asyncio.run(intake.prompt(read(intake, body)))


def test_a_good_request_becomes_a_prompt_with_its_image(intake, generator):
    text, tokens = "What is it?", {"max_tokens": 5, "temperature": 0, "stop": "."}
    chat, prompt_tokens = prompt(intake, {"messages": ask(data_url(png()), text), **tokens})
    assert len(chat.images) == 1 and chat.images[0].size == (40, 30)
    assert chat.params.max_new_tokens == 5 and chat.params.stop == (".",)
    assert prompt_tokens == generator.count_prompt_tokens(chat)
    assert prompt_tokens > generator.model.config.num_image_tokens  # the image's tokens counted


@pytest.mark.parametrize(
    "name,body,status,code",
    [
        (
            "max_tokens over the limit",
            {"messages": ask(data_url(png())), "max_tokens": 65},
            400,
            None,
        ),
        ("two images", {"messages": ask(data_url(png())) * 2}, 400, None),
        ("not a data or http URL", {"messages": ask("file:///etc/passwd")}, 400, None),
        ("not base64", {"messages": ask("data:image/png;base64,@@@")}, 400, None),
        (
            "a data URL that is not an image",
            {"messages": ask("data:text/plain;base64,aGk=")},
            400,
            None,
        ),
        ("not an image", {"messages": ask(data_url(b"hello"))}, 400, "image_undecodable"),
        ("too many bytes", {"messages": ask(data_url(b"x" * 60_000))}, 413, "image_too_large"),
        ("too many pixels", {"messages": ask(data_url(png((200, 100))))}, 413, "image_too_large"),
        (
            "a 1 x 40,000 strip",
            {"messages": ask(data_url(png((1, 40_000))))},
            413,
            "image_too_large",
        ),
        ("a 33:1 strip", {"messages": ask(data_url(png((99, 3))))}, 400, "image_aspect"),
        (
            "a host not allowed",
            {"messages": ask("http://169.254.169.254/x.png")},
            400,
            "image_host_not_allowed",
        ),
        (
            "over the context",
            {"messages": ask(data_url(png()), "red " * 150)},
            400,
            "context_length_exceeded",
        ),
    ],
)
def test_refused_prompts(intake, name, body, status, code):
    err = refusal(lambda: prompt(intake, body))
    assert err.status == status, (name, err.message)
    assert code is None or err.code == code, (name, err.code)
    assert err.body()["error"]["message"], name


def test_host_allow_list():
    allowed = ["images.example.com", "*.cdn.example"]
    assert host_allowed("images.example.com", allowed) and host_allowed(
        "IMAGES.example.com.", allowed
    )
    assert host_allowed("a.cdn.example", allowed) and host_allowed("cdn.example", allowed)
    assert not host_allowed("evil.com", allowed) and not host_allowed("xcdn.example", allowed)
    assert not host_allowed("images.example.com.evil.com", allowed)


def test_an_unexpected_failure_is_a_generic_500_logged_with_its_traceback(caplog):
    from starlette.requests import Request

    from pipelines.serve.app import api

    handler = api.exception_handlers[Exception]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    try:
        raise RuntimeError("secret /srv/models/key.txt")
    except RuntimeError as err:
        response = asyncio.run(handler(Request(scope), err))
    body = json.loads(response.body)
    assert response.status_code == 500 and body["error"]["type"] == "server_error"
    assert "secret" not in response.body.decode() and "RuntimeError" not in response.body.decode()
    error_id = body["error"]["message"].split("error id ")[1].split(";")[0]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and "secret /srv/models/key.txt" in str(logged[0].exc_info[1])
