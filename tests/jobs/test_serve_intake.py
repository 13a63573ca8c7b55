"""The chat API's request checks without a replica, Ray or HTTP: `Intake` driven directly with a
tiny in-process model. Every refusal is an `APIError` with the status the API returns."""

import asyncio
import base64
import io
import json
import struct

import pytest
from PIL import Image

from pipelines.serve.images import host_allowed
from pipelines.serve.intake import Intake
from pipelines.serve.protocol import APIError, ChatCompletionRequest
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


def dds_with_no_pixel_format() -> bytes:
    """A DDS whose pixel-format flags are 0: Pillow raises NotImplementedError, not OSError."""
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="DDS")
    data = bytearray(buffer.getvalue())
    struct.pack_into("<I", data, 80, 0)
    return bytes(data)


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
    user = b'{"messages": [{"role": "user", "content": '
    for body, why in (
        (user + b'"hi \\ud800"}]}', "lone UTF-16 surrogate"),  # half an emoji: not text
        (user + b'"ok"}], "temperature": 1e400}', "out of range"),  # Python reads inf
        (user + b'"ok"}], "seed": ' + b"7" * 5000 + b"}", "digits"),  # over int()'s limit
    ):
        err = refusal(lambda b=body: read(intake, b))
        assert err.status == 400 and why in err.message, err.message
    schema = refusal(lambda: read(intake, {"messages": []}))
    assert schema.status == 400 and schema.param == "messages"
    assert refusal(lambda: read(intake, {**ok, "n": 2})).param == "n"
    assert refusal(lambda: read(intake, {**ok, "stop": ["x" * 1001]})).param == "stop"
    for field, value in (
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "json_object"}),
        ("logit_bias", {"42": -100}),
        ("seed", 3),  # sampled: one batch shares one random stream
        ("max_tokens", True),
        ("max_tokens", "5"),
        ("stream", "yes"),
    ):
        err = refusal(lambda f=field, v=value: read(intake, {**ok, f: v}))
        assert err.status == 400 and err.param == field, (field, err.message)
    nulls = dict.fromkeys(("temperature", "top_p", "n", "stream", "stop", "logprobs", "seed"))
    assert read(intake, {**ok, **nulls}).temperature == 1.0  # null is "not given", as OpenAI's
    assert read(intake, {**ok, "seed": 3, "temperature": 0}).seed == 3  # greedy: deterministic
    wrong_model = refusal(lambda: read(intake, {**ok, "model": "other"}))
    assert wrong_model.status == 404 and "tiny-chat" in wrong_model.message


def prompt(intake, body):
    return asyncio.run(intake.prompt(read(intake, body)))


def test_a_mime_wrapped_data_url_is_read(intake):
    encoded = base64.b64encode(png()).decode()
    wrapped = "\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    chat, _ = prompt(intake, {"messages": ask(f"data:image/png;base64,{wrapped}")})
    assert chat.images[0].size == (40, 30)


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
        ("an unclosed IPv6 host", {"messages": ask("http://[::1/x.png")}, 400, None),
        (
            "a host name no URL can hold",
            {"messages": ask(f"http://{'a' * 70}.images.example/x.png")},
            400,
            None,
        ),
        ("a crafted DDS", {"messages": ask(data_url(dds_with_no_pixel_format()))}, 400, None),
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


def test_a_huge_prompt_is_rendered_and_counted_off_the_event_loop(intake, generator):
    import threading

    from pipelines.serve.intake import OFF_LOOP_CHARS

    class Recording:  # the generator, noting on which thread it renders and counts
        def __init__(self):
            self.threads = []

        def render(self, messages):
            self.threads.append(threading.current_thread())
            return generator.render(messages)

        def count_prompt_tokens(self, prompt):
            self.threads.append(threading.current_thread())
            return generator.count_prompt_tokens(prompt)

    recording = Recording()
    checks = Intake(intake.spec.model_copy(update={"api_key": None}), recording, max_context=200)
    body = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "red " * (OFF_LOOP_CHARS // 4 + 1)}]}
    )
    err = refusal(lambda: asyncio.run(checks.prompt(body)))
    assert err.code == "context_length_exceeded"
    assert len(recording.threads) == 2
    assert threading.main_thread() not in recording.threads  # the event loop's thread
    small = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "red"}]})
    asyncio.run(checks.prompt(small))
    assert recording.threads[-1] is threading.main_thread()  # short ones stay where they are


def test_a_server_reachable_beyond_loopback_needs_a_key(generator, monkeypatch):
    """By default a key is required exactly when the host is not loopback; `require_api_key`
    says otherwise either way. A replica checks its own node's environment when it starts."""
    monkeypatch.delenv("STF_API_KEY", raising=False)

    def spec(**fields):
        return ServeSpec.model_validate({"model": {"path": "/models/tiny-chat"}, **fields})

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        spec(host=host).check_api_key()
    for host in ("0.0.0.0", "::", "10.0.0.5", "serve.internal"):
        with pytest.raises(ValueError, match=f"host {host} is reachable beyond this machine"):
            spec(host=host).check_api_key()
        with pytest.raises(ValueError, match="STF_API_KEY"):
            Intake(spec(host=host), generator, max_context=200)
        spec(host=host, api_key=KEY).check_api_key()
        spec(host=host, require_api_key=False).check_api_key()  # behind an authenticating proxy
    with pytest.raises(ValueError, match="require_api_key is true"):
        spec(require_api_key=True).check_api_key()
    monkeypatch.setenv("STF_API_KEY", KEY)
    assert Intake(spec(host="0.0.0.0", require_api_key=True), generator, 200).api_key == KEY


def test_stf_serve_refuses_to_expose_a_keyless_server(monkeypatch, capsys):
    from pipelines import cli

    monkeypatch.delenv("STF_API_KEY", raising=False)
    args = ["serve", "--set", "model.path=/nowhere", "--set", "host=0.0.0.0"]
    assert cli.main(args) == 2
    assert "host 0.0.0.0 is reachable beyond this machine" in capsys.readouterr().err
