"""`stf serve` on a real Ray Serve (127.0.0.1), driven by the real `openai` client and raw HTTP."""

from __future__ import annotations

import base64
import concurrent.futures
import http.server
import io
import re
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image
from support.browser import ask_on_page, wait_for

API_KEY = "test-key-123"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _png(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _image_message(url: str, text: str = "What is in the image?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": text},
            ],
        }
    ]


@pytest.fixture(scope="module")
def model_dir(model_dir, tmp_path_factory):
    """The shared tiny model in a folder named as clients ask for it (the default model id)."""
    path = tmp_path_factory.mktemp("serve") / "tiny-chat"
    shutil.copytree(model_dir, path)
    return str(path)


@pytest.fixture(scope="module")
def image_host():
    """A plain HTTP server on 127.0.0.1 with one PNG, for the allow-listed remote-image case."""
    payload = _png(color=(20, 200, 20))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/green.png"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(ray_local, model_dir):
    """The application on the session's Ray; Serve is shut down at the end of the module so the
    replica's CPU is free for the tests after it."""
    from ray import serve

    from pipelines.serve import ServeSpec
    from pipelines.serve.job import run

    spec = ServeSpec.model_validate(
        {
            "model": {"path": model_dir},
            "port": _free_port(),
            "route_prefix": "/team/stf",  # every URL below, the chat page's included, is under it
            "api_key": API_KEY,
            "deployment": {"max_ongoing_requests": 8, "max_queued_requests": 8, "num_cpus": 0.5},
            "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.5},
            "limits": {
                "max_body_bytes": 1_000_000,
                "max_image_bytes": 300_000,
                "max_image_pixels": 200_000,
                "max_images": 2,
                "max_tokens": 64,
                "default_max_tokens": 12,
            },
            "allowed_image_hosts": ["127.0.0.1"],
        }
    )
    url = run(spec, blocking=False)
    try:
        yield url, spec
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    url, _ = server
    return OpenAI(base_url=f"{url}/v1", api_key=API_KEY, timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def reference(model_dir):
    """The same model in this process: what the server must answer for greedy requests."""
    from pipelines.models import load_generator
    from pipelines.spec import InferenceModel, StorageOptions

    return load_generator(InferenceModel(path=model_dir), StorageOptions())


def _expected(reference, messages, max_tokens, images=(), stop=()):
    from stf_model.generation import ChatPrompt, SamplingParams

    prompt = ChatPrompt(
        reference.render(messages),
        [Image.open(io.BytesIO(i)).convert("RGB") for i in images],
        SamplingParams(max_new_tokens=max_tokens, temperature=0, stop=tuple(stop)),
    )
    return reference.generate([prompt])[0]


def _post(url, body=None, raw=None, key=API_KEY, headers=None):
    headers = {"Authorization": f"Bearer {key}", **(headers or {})}
    if raw is not None:
        return requests.post(f"{url}/v1/chat/completions", data=raw, headers=headers, timeout=60)
    return requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_models_list(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-chat"]
    assert requests.get(f"{server[0]}/health", timeout=10).json()["status"] == "ok"


def test_chat_with_image_matches_in_process_generation(client, reference):
    image = _png()
    messages = _image_message(_data_url(image))
    reply = client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=10, temperature=0
    )
    expected = _expected(reference, messages, 10, [image])
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == (
        "length" if expected.finish_reason == "length" else "stop"
    )
    assert reply.usage.prompt_tokens == expected.prompt_tokens  # 36 image tokens included
    assert reply.usage.prompt_tokens > 36
    assert reply.usage.prompt_tokens_details.image_tokens == 36  # 6x6 tokens after STF
    assert reply.usage.completion_tokens == expected.completion_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_equals_plain(client, reference):
    image = _png(color=(10, 10, 220))
    messages = _image_message(_data_url(image), "Describe it.")
    stream = client.chat.completions.create(
        model="tiny-chat",
        messages=messages,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    expected = _expected(reference, messages, 16, [image])
    assert text == expected.text
    assert len(finishes) == 1
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed
    assert chunks[-1].usage.completion_tokens == expected.completion_tokens


def test_stop_string_cuts_the_answer(client, reference):
    messages = [{"role": "user", "content": "Tell me a story about shapes."}]
    full = _expected(reference, messages, 24).text
    assert len(full) >= 6
    stop = full[3:5]
    reply = client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=24, temperature=0, stop=[stop]
    )
    assert reply.choices[0].message.content == full[: full.find(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_sampling_parameters_are_used(client):
    """temperature 0 is greedy (the same answer every time); 1.5 samples (answers vary); and
    top_p keeps only the likeliest tokens: near 0 it leaves the greedy token alone."""
    messages = [{"role": "user", "content": "Say something."}]

    def answers(n: int, **sampling) -> list[str]:
        return [
            client.chat.completions.create(
                model="tiny-chat", messages=messages, max_tokens=8, **sampling
            )
            .choices[0]
            .message.content
            for _ in range(n)
        ]

    greedy = answers(3, temperature=0)
    assert len(set(greedy)) == 1
    assert len(set(answers(4, temperature=1.5, top_p=1.0))) > 1  # a random tiny model varies
    assert answers(3, temperature=1.5, top_p=1e-6) == greedy


def test_concurrent_requests_are_batched(client, server):
    url, _ = server
    before = requests.get(
        f"{url}/stats", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    )
    messages = [{"role": "user", "content": "Count the shapes."}]

    def ask(max_tokens):
        return (
            client.chat.completions.create(
                model="tiny-chat", messages=messages, max_tokens=max_tokens, temperature=0
            )
            .choices[0]
            .message.content
        )

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, [4, 6, 8, 10, 12, 14, 16, 18]))
    after = requests.get(f"{url}/stats", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    sizes_before = {int(k): v for k, v in before.json()["batch_sizes"].items()}
    sizes_after = {int(k): v for k, v in after.json()["batch_sizes"].items()}
    new = {k: sizes_after[k] - sizes_before.get(k, 0) for k in sizes_after}
    assert any(size > 1 and count > 0 for size, count in new.items()), new
    # The timing medians over recent requests (non-streaming routes; batches' generate).
    timings = after.json()
    assert 0 < timings["generate_ms_p50"] < 60_000, timings
    assert 0 < timings["body_ms_p50"] < timings["handler_ms_p50"] < 60_000, timings
    # Greedy rows of one batch, each with its own budget: every answer extends the shorter ones.
    for short, long in zip(answers, answers[1:], strict=False):
        assert long.startswith(short)


def test_a_lone_request_does_not_wait_for_the_batch_window(client, server):
    """The server's batch window is 0.5 s; a request that finds the replica idle runs at once
    (the concurrent test above shows that requests in flight together still share batches)."""
    window = server[1].batching.batch_wait_timeout_s
    messages = [{"role": "user", "content": "Count the shapes."}]
    times = []
    for _ in range(3):
        started = time.perf_counter()
        client.chat.completions.create(
            model="tiny-chat", messages=messages, max_tokens=1, temperature=0
        )
        times.append(time.perf_counter() - started)
    assert sorted(times)[1] < window / 2, times


def test_special_tokens_in_user_text_fail_no_one(client, reference):
    """`<image>`, `</s>` and `<s>` typed by users are text: each such request is answered, and the
    plain requests that share its batch get exactly their in-process answers."""
    image = _png()
    injected = "Is this <image> a </s> trick? <s>"
    requests_ = [
        _image_message(_data_url(image)),
        [{"role": "user", "content": injected}],
        _image_message(_data_url(image), text=injected),
        [{"role": "system", "content": "<image>"}, {"role": "user", "content": "<image><image>"}],
    ] * 2

    def ask(messages):
        return client.chat.completions.create(
            model="tiny-chat", messages=messages, max_tokens=6, temperature=0
        )

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, requests_))
    for messages, reply in zip(requests_, replies, strict=True):
        images = [image] if messages is requests_[0] or messages is requests_[2] else []
        expected = _expected(reference, messages, 6, images)
        assert reply.choices[0].message.content == expected.text
        assert reply.usage.prompt_tokens == expected.prompt_tokens


def test_remote_image_from_an_allowed_host(client, image_host):
    reply = client.chat.completions.create(
        model="tiny-chat", messages=_image_message(image_host), max_tokens=4, temperature=0
    )
    assert reply.usage.prompt_tokens > 36
    assert reply.usage.prompt_tokens_details.image_tokens == 36  # 6x6 tokens after STF


def _error_cases(image_host_url: str) -> list[tuple[str, dict | None, bytes | None, int]]:
    big_png = Image.frombytes("RGB", (300, 300), (bytes(range(256)) * 1055)[:270_000])
    buffer = io.BytesIO()
    big_png.save(buffer, format="PNG")  # 300x300 = 90,000 pixels: under the pixel limit
    many_pixels = _png(size=(600, 400))  # 240,000 pixels: over the 200,000-pixel limit
    noisy = Image.effect_noise((400, 400), 100).convert("RGB")
    noisy_buf = io.BytesIO()
    noisy.save(noisy_buf, format="BMP")  # ~480 KB: over the 300 KB image limit
    text = [{"role": "user", "content": "hi"}]
    return [
        ("malformed JSON", None, b'{"messages": [', 400),
        ("no messages", {"model": "tiny-chat"}, None, 400),
        ("empty messages", {"messages": []}, None, 400),
        ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, None, 400),
        ("temperature out of range", {"messages": text, "temperature": 7}, None, 400),
        ("n > 1", {"messages": text, "n": 2}, None, 400),
        ("max_tokens over the limit", {"messages": text, "max_tokens": 5000}, None, 400),
        ("too many stops", {"messages": text, "stop": ["a", "b", "c", "d", "e"]}, None, 400),
        ("unknown model", {"model": "gpt-9", "messages": text}, None, 404),
        (
            "undecodable image",
            {"messages": _image_message(_data_url(b"not an image at all"))},
            None,
            400,
        ),
        ("bad base64", {"messages": _image_message("data:image/png;base64,@@@@")}, None, 400),
        ("not a data URL", {"messages": _image_message("data:text/plain,hello")}, None, 400),
        ("file URL", {"messages": _image_message("file:///etc/passwd")}, None, 400),
        (
            "host not allowed",
            {"messages": _image_message("http://169.254.169.254/latest/meta-data")},
            None,
            400,
        ),
        (
            "too many images",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": _data_url(_png())}}]
                        * 3,
                    }
                ]
            },
            None,
            400,
        ),
        (
            "image over the pixel limit",
            {"messages": _image_message(_data_url(many_pixels))},
            None,
            413,
        ),
        (
            "image over the byte limit",
            {"messages": _image_message(_data_url(noisy_buf.getvalue(), "image/bmp"))},
            None,
            413,
        ),
        ("body over the limit", {"messages": text, "pad": "x" * 1_100_000}, None, 413),
        (
            "truncated image",
            {"messages": _image_message(_data_url(buffer.getvalue()[:2000]))},
            None,
            400,
        ),
    ] + _hostile_cases()


def _hostile_cases() -> list[tuple[str, dict | None, bytes | None, int]]:
    """Bodies that broke servers: too deep to parse, non-JSON numbers, images whose padding or
    resizing would cost far more than their bytes."""
    return [
        (
            "nested 100,000 deep",
            None,
            b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            400,
        ),
        (
            "NaN temperature",
            None,
            b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
            400,
        ),
        (
            "a 1 x 40,000 strip (padding would allocate gigabytes)",
            {"messages": _image_message(_data_url(_png(size=(1, 40_000))))},
            None,
            413,
        ),
        ("a 33:1 banner", {"messages": _image_message(_data_url(_png(size=(330, 10))))}, None, 400),
        ("not JSON at all", None, b"\xff\xfe garbage", 400),
    ]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, image_host):
    url, _ = server
    for name, body, raw, status in _error_cases(image_host):
        response = _post(url, body=body, raw=raw)
        assert response.status_code == status, (name, response.status_code, response.text[:300])
        error = response.json()["error"]
        assert error["message"] and error["type"], name
        assert "Traceback" not in response.text, name
    # Auth: missing and wrong keys; unknown route; wrong method.
    assert (
        _post(url, {"messages": [{"role": "user", "content": "hi"}]}, key="wrong").status_code
        == 401
    )
    assert requests.get(f"{url}/v1/models", timeout=10).status_code == 401
    assert requests.get(f"{url}/v1/nothing", timeout=10).status_code == 404
    assert requests.get(f"{url}/v1/chat/completions", timeout=10).status_code == 405
    # And a normal request still succeeds.
    reply = client.chat.completions.create(
        model="tiny-chat", messages=_image_message(_data_url(_png())), max_tokens=4
    )
    assert reply.choices[0].message.content is not None


def test_bounded_load_without_server_errors(server, client):
    url, _ = server
    body = {"messages": [{"role": "user", "content": "Which colour?"}], "max_tokens": 6}

    def one(_):
        try:
            response = _post(url, body)
            return response.status_code, response.text[:200]
        except requests.RequestException as err:
            return type(err).__name__, str(err)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200), timeout=240))
    counts = {s: sum(1 for r in results if r[0] == s) for s in {r[0] for r in results}}
    # 503 is Serve's deliberate back-pressure (max_queued_requests); nothing else may fail.
    assert set(counts) <= {200, 503}, (counts, [r for r in results if r[0] not in (200, 503)][:3])
    assert counts.get(200, 0) >= 20, counts
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    reply = client.chat.completions.create(
        model="tiny-chat", messages=body["messages"], max_tokens=4
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_the_chat_page_is_one_self_contained_page(server):
    url, _ = server
    page = requests.get(f"{url}/", timeout=10)  # no key needed for the page itself
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    # Everything inline: no file, script, style or font from anywhere, this server included.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert "<script src" not in page.text and "<link" not in page.text
    assert "/*chat.js*/" not in page.text and "/*chat.css*/" not in page.text


def test_the_chat_page_in_chromium(server, client, browser, screenshots, tmp_path):
    """The page as a user drives it: the key field (this server has a key), an uploaded image,
    two turns whose streamed answers equal the API's greedy answers, and a 413 shown as a message."""
    from selenium.webdriver.common.by import By

    url, spec = server
    browser.get(f"{url}/")
    key_row = browser.find_element(By.ID, "key-row")
    wait_for(browser, key_row.is_displayed)  # the page found that the server wants a key
    assert "401" in browser.find_element(By.ID, "notice").text
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.ID, "use-key").click()
    wait_for(browser, lambda: browser.find_element(By.ID, "model").text == "tiny-chat")
    browser.find_element(By.CSS_SELECTOR, ".settings summary").click()  # open "Sampling"
    browser.find_element(By.ID, "max-tokens").send_keys("12")  # temperature is 0 by default

    image = tmp_path / "red.png"
    image.write_bytes(_png(color=(220, 40, 40)))
    first = ask_on_page(browser, "What color is the shape?", image)
    # What the page sends: the image part first, then the text, the image's bytes unchanged.
    messages = _image_message(_data_url(image.read_bytes()), "What color is the shape?")
    api = client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=12, temperature=0
    )
    assert first.get("text") == api.choices[0].message.content, first
    usage = api.usage
    assert f"prompt {usage.prompt_tokens} tokens (36 vision)" in first["meta"]
    assert f"answer {usage.completion_tokens} tokens" in first["meta"]

    second = ask_on_page(browser, "And where is it?")  # the history goes with it
    messages += [
        {"role": "assistant", "content": first["text"]},
        {"role": "user", "content": "And where is it?"},
    ]
    api = client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=12, temperature=0
    )
    assert second.get("text") == api.choices[0].message.content, second
    browser.save_screenshot(str(screenshots / "chat_page.png"))

    noise = tmp_path / "noise.png"  # random pixels: a PNG over the server's 300 kB image limit
    Image.frombytes("RGB", (400, 400), np.random.default_rng(0).bytes(480_000)).save(noise)
    assert noise.stat().st_size > spec.limits.max_image_bytes
    refused = ask_on_page(browser, "And this one?", noise)
    assert refused.get("error", "").startswith("413"), refused
    assert "limit" in refused["error"]
    browser.save_screenshot(str(screenshots / "chat_page_413.png"))
    browser.find_element(By.CSS_SELECTOR, ".attachment button").click()  # the refused image
    assert not browser.find_elements(By.CSS_SELECTOR, ".attachment")
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("65")  # over this server's limits.max_tokens (64)
    refused = ask_on_page(browser, "Once more?")
    assert refused.get("error", "").startswith("400"), refused
    assert "over this server's limit 64" in refused["error"]


def test_the_chat_pages_stop_button_keeps_the_part_shown(server, client, browser, tmp_path):
    """Stop while an answer streams (the browser's download throttled so that it streams for
    seconds): the part shown is a prefix of the whole greedy answer, and it stays in the history
    that the next question sends."""
    from selenium.webdriver.common.by import By

    url, _ = server
    browser.get(f"{url}/")  # a fresh conversation; the key is still in this tab's storage
    wait_for(browser, lambda: browser.find_element(By.ID, "model").text == "tiny-chat")
    browser.find_element(By.CSS_SELECTOR, ".settings summary").click()
    browser.find_element(By.ID, "max-tokens").send_keys("64")
    image = tmp_path / "blue.png"
    image.write_bytes(_png(color=(30, 30, 220)))
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".attachment img"))
    browser.find_element(By.ID, "question").send_keys("Describe the image.")
    browser.set_network_conditions(
        offline=False, latency=20, download_throughput=600, upload_throughput=10_000_000
    )
    try:
        browser.find_element(By.ID, "send").click()
        text = lambda: browser.find_element(By.CSS_SELECTOR, ".turn.assistant .text")  # noqa: E731
        wait_for(browser, lambda: text().get_property("textContent"))
        browser.find_element(By.ID, "stop").click()
        wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".turn.assistant .meta"))
    finally:
        browser.delete_network_conditions()
    partial = text().get_property("textContent")
    assert "stopped" in browser.find_element(By.CSS_SELECTOR, ".turn.assistant .meta").text
    messages = _image_message(_data_url(image.read_bytes()), "Describe the image.")
    full = client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=64, temperature=0
    )
    assert full.choices[0].message.content.startswith(partial)
    assert len(partial) < len(full.choices[0].message.content)
    follow_up = ask_on_page(browser, "Go on.")
    messages += [{"role": "assistant", "content": partial}, {"role": "user", "content": "Go on."}]
    api = client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=64, temperature=0
    )
    assert follow_up.get("text") == api.choices[0].message.content, follow_up


def test_new_chat_during_an_answer_starts_a_clean_conversation(server, client, browser):
    """New chat while an answer streams: the cut answer joins no history, so the next question is
    answered as the first of a conversation."""
    from selenium.webdriver.common.by import By

    url, _ = server
    browser.get(f"{url}/")
    wait_for(browser, lambda: browser.find_element(By.ID, "model").text == "tiny-chat")
    browser.find_element(By.ID, "question").send_keys("Tell me a story about shapes.")
    browser.set_network_conditions(
        offline=False, latency=20, download_throughput=600, upload_throughput=10_000_000
    )
    try:
        browser.find_element(By.ID, "send").click()
        wait_for(browser, lambda: browser.execute_script(_STREAMED_TEXT))
        browser.find_element(By.ID, "new-chat").click()
        wait_for(browser, lambda: not browser.find_element(By.ID, "send").get_property("disabled"))
    finally:
        browser.delete_network_conditions()
    assert not browser.find_elements(By.CSS_SELECTOR, ".turn")
    answer = ask_on_page(browser, "Which colour?")
    api = client.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "Which colour?"}],
        temperature=0,
    )
    assert answer.get("text") == api.choices[0].message.content, answer


_STREAMED_TEXT = (
    "const t = document.querySelector('.turn.assistant .text'); return t && t.textContent"
)


# A file handed to the page the two other ways a user does it: dropped on the page and pasted.
# WebDriver cannot drive the OS's drag and drop or clipboard, so the script dispatches the same
# events the browser would, carrying a real File.
_DROP_AND_PASTE = """
const [dataUrl, how] = arguments;
const bytes = Uint8Array.from(atob(dataUrl.split(',')[1]), c => c.charCodeAt(0));
const transfer = new DataTransfer();  // (fetch of a data: URL is refused by the page's CSP)
transfer.items.add(new File([bytes], how + '.png', {type: 'image/png'}));
const event = how === 'drop'
  ? new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true})
  : new ClipboardEvent('paste', {clipboardData: transfer, bubbles: true, cancelable: true});
document.getElementById('question').dispatchEvent(event);
"""


def test_the_chat_page_takes_dropped_and_pasted_images(server, browser):
    from selenium.webdriver.common.by import By

    url, _ = server
    browser.get(f"{url}/")
    wait_for(browser, lambda: browser.find_element(By.ID, "model").text == "tiny-chat")
    image = _data_url(_png(color=(20, 160, 20)))
    for how in ("drop", "paste"):
        browser.execute_script(_DROP_AND_PASTE, image, how)
    wait_for(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, ".attachment img")) == 2)
    names = [
        e.get_attribute("alt") for e in browser.find_elements(By.CSS_SELECTOR, ".attachment img")
    ]
    assert sorted(names) == ["drop.png", "paste.png"]
    sources = browser.execute_script(
        "return [...document.querySelectorAll('.attachment img')].map(i => i.src)"
    )
    assert sources == [image, image]  # the bytes as given, for the API request


def test_spec_checks():
    from pipelines.serve import ServeSpec

    with pytest.raises(ValueError, match="max_ongoing_requests"):
        ServeSpec.model_validate(
            {
                "model": {"path": "/m"},
                "deployment": {"max_ongoing_requests": 2},
                "batching": {"max_batch_size": 8},
            }
        )
    with pytest.raises(ValueError):
        ServeSpec.model_validate(
            {
                "model": {"path": "/m"},
                "deployment": {"autoscaling_config": {"min_replicas": 5, "max_replicas": 2}},
            }
        )
    with pytest.raises(ValueError, match="default_max_tokens"):
        ServeSpec.model_validate({"model": {"path": "/m"}, "limits": {"max_tokens": 64}})
    spec = ServeSpec.model_validate(
        {
            "model": {"path": "/m/x"},
            "api_key": "sk-hush-123",
            "deployment": {"autoscaling_config": {"min_replicas": 0, "max_replicas": 4}},
        }
    )
    assert "sk-hush-123" not in str(spec.resolved())
    assert spec.deployment.ray_options()["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in spec.deployment.ray_options()
