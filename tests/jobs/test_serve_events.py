"""The replica's event stream from a batch's ``generate`` to its requests, without Ray or HTTP:
news merged into typed steps, and what a request reads when its row succeeds or fails."""

import asyncio
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from pipelines.serve.app import ChatServer
from pipelines.serve.events import (
    GENERATE_ENDED,
    Delta,
    Failed,
    RowMark,
    RowNews,
    ends_row,
    merge_queued,
)
from stf_model.generation import ChatPrompt, SamplingParams


@pytest.fixture(scope="module")
def generator():
    from stf_model import build_tiny
    from stf_model.generation import ChatGenerator
    from stf_model.processing import build_processor

    model, tokenizer = build_tiny(seed=0)
    return ChatGenerator(model.eval(), build_processor(model.config, tokenizer))


class Replica(ChatServer.func_or_class):
    """The deployment's class with what its generation path uses, and no Serve around it."""

    def __del__(self):  # Serve's ASGI wrapper shuts down an app this replica never started
        pass


def replica(generator) -> Replica:
    server = Replica.__new__(Replica)
    server.generator = generator
    server.active = server.requests = 0
    server.batch_sizes = Counter()
    server.timings = {"generate": deque()}
    server.generate_thread = ThreadPoolExecutor(max_workers=1)
    return server


def read(server, prompt: ChatPrompt) -> list[Delta]:
    async def consume():
        return [delta async for delta in server._run(prompt)]

    return asyncio.run(consume())


def test_queued_news_merges_into_one_step_per_row():
    queue: asyncio.Queue = asyncio.Queue()
    for item in (
        RowNews(0, Delta("b", None, 2)),
        RowNews(0, Delta("c", "stop", 3)),
        GENERATE_ENDED,
    ):
        queue.put_nowait(item)
    step, ended = merge_queued(queue, RowNews(0, Delta("a", None, 1)), [False, False, True])
    assert step == [Delta("abc", "stop", 3), RowMark.QUIET, RowMark.FINISHED] and ended
    assert queue.empty()
    step, ended = merge_queued(queue, RowNews(1, Delta("x", None, 1)), [True, False])
    assert step == [RowMark.FINISHED, Delta("x", None, 1)] and not ended
    assert ends_row(Delta("", "length", 4)) and ends_row(Failed(RuntimeError()))
    assert not ends_row(Delta("x", None, 1)) and not ends_row(RowMark.QUIET)


def test_a_request_reads_its_rows_deltas_up_to_the_finish(generator):
    params = SamplingParams(max_new_tokens=6, temperature=0)
    deltas = read(replica(generator), ChatPrompt("USER: hello ASSISTANT:", params=params))
    expected = generator.generate([ChatPrompt("USER: hello ASSISTANT:", params=params)])[0]
    assert "".join(d.text for d in deltas) == expected.text
    assert deltas[-1].final and deltas[-1].finish_reason == expected.finish_reason
    assert deltas[-1].tokens == expected.completion_tokens
    assert not any(d.final for d in deltas[:-1])


def test_a_generate_that_fails_reaches_its_request_as_its_error(generator, monkeypatch):
    """A failure before any text (here injected into the model's forward) is the request's own
    error, which the route turns into a logged 500; it is never an empty answer."""

    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(generator.model, "forward", broken)
    with pytest.raises(RuntimeError, match="injected fault"):
        read(replica(generator), ChatPrompt("USER: hello ASSISTANT:"))


def test_a_stream_that_fails_mid_way_reports_an_error_id_not_the_exception(caplog):
    async def failing_run(_prompt):
        yield Delta("Hel", None, 1)
        raise RuntimeError("CUDA error at /srv/secret/weights.bin")

    # No replica: the stream reads only these of its server.
    server = SimpleNamespace(model_id="tiny-chat", image_tokens=36, _run=failing_run)
    stream = ChatServer.func_or_class._sse

    async def events() -> list[str]:
        return [event async for event in stream(server, None, 3, "chatcmpl-x", False)]

    sent = "".join(asyncio.run(events()))
    assert '"Hel"' in sent and sent.endswith("data: [DONE]\n\n")
    assert "secret" not in sent and "CUDA" not in sent and "server_error" in sent
    error_id = sent.split("error id ")[1].split(";")[0]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and "/srv/secret/weights.bin" in str(logged[0].exc_info[1])
