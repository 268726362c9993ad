"""The chat service against a real (fake) gateway: answers, streams, the request sent, logs,
connections, cleanup. Each test runs on every chat service the bake ships (`driver`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.chat import CallInfo, StreamProtocol, Usage
from {{ cookiecutter.package_name }}.errors import Category, InStreamError
from {{ cookiecutter.package_name }}.request import ChatRequest, Message

from .conftest import ANSWER, HELLO, SENTINEL_KEY, Driver, ask, failure
from .fake_gateway import FakeGateway

Calls = Callable[[], list[dict[str, Any]]]
STREAM = [pytest.param(False, id="complete"), pytest.param(True, id="stream")]
HELLO_MESSAGES = [{"role": "user", "content": HELLO}]


def test_complete_returns_answer_model_usage_and_ids(driver: Driver) -> None:
    result = driver.chat().complete(ask(), CallInfo(request_id="req-123"))

    assert result.content == ANSWER
    assert result.model == "gpt-4o-mini"
    assert result.usage == Usage(prompt_tokens=3, completion_tokens=6, total_tokens=9)
    assert result.request_id == "req-123"
    assert result.upstream_request_id
    assert result.finish_reason == "stop"


def test_stream_yields_each_delta_then_usage_from_the_final_chunk(driver: Driver) -> None:
    received: list[str] = []
    result = driver.chat().stream(ask(), CallInfo(request_id="req-9"), received=received)

    assert received == ["Hello", " from", " the", " fake", " gateway", "."]
    assert (result.content, result.model, result.request_id) == (ANSWER, "gpt-4o-mini", "req-9")
    assert result.usage == Usage(prompt_tokens=3, completion_tokens=6, total_tokens=9)
    assert result.upstream_request_id
    assert result.finish_reason == "stop"


@pytest.mark.parametrize(
    ("request_fields", "body_fields"),
    [
        pytest.param(
            {"prompt": HELLO}, {"messages": HELLO_MESSAGES, "max_tokens": 4096}, id="defaults"
        ),
        pytest.param(
            {"prompt": HELLO, "max_tokens": 50, "temperature": 0.3},
            {"messages": HELLO_MESSAGES, "max_tokens": 50, "temperature": 0.3},
            id="max_tokens-and-temperature",
        ),
        pytest.param(
            {"messages": [Message(role="system", content="be brief"), *HELLO_MESSAGES]},
            {
                "messages": [{"role": "system", "content": "be brief"}, *HELLO_MESSAGES],
                "max_tokens": 4096,
            },
            id="messages",
        ),
        pytest.param(
            {"prompt": HELLO, "model": "gpt-4o", "temperature": 0},
            {"model": "gpt-4o", "messages": HELLO_MESSAGES, "max_tokens": 4096, "temperature": 0},
            id="model-and-temperature-0",
        ),
    ],
)
@pytest.mark.parametrize("stream", STREAM)
def test_the_gateway_gets_the_key_ids_and_exactly_the_body_built(
    gateway: FakeGateway,
    driver: Driver,
    stream: bool,
    request_fields: dict[str, Any],
    body_fields: dict[str, Any],
) -> None:
    # OPENAI_API_KEY / OPENAI_BASE_URL are set to decoys (gateway_env): the request reaching
    # the fake with the sentinel key shows that neither was used.
    chat = driver.chat()
    call = CallInfo(request_id="req-abc")
    request = ChatRequest(**request_fields)
    result = chat.stream(request, call) if stream else chat.complete(request, call)

    assert result.content == ANSWER
    (sent,) = gateway.requests
    assert (sent.method, sent.path) == ("POST", "/api/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {SENTINEL_KEY}"
    assert sent.headers["x-request-id"] == "req-abc"
    assert sent.headers["x-client-name"].startswith("{{ cookiecutter.project_slug }}/")
    assert sent.headers["user-agent"].startswith(chat.sdk_name)
    expected = {"model": "gpt-4o-mini", **body_fields}
    if stream:
        expected |= {"stream": True, "stream_options": {"include_usage": True}}
    assert sent.body == expected


def test_calls_reuse_one_connection_to_the_gateway(gateway: FakeGateway, driver: Driver) -> None:
    chat = driver.chat(fresh=True)
    for _ in range(3):
        assert chat.complete(ask()).content == ANSWER
        assert chat.stream(ask()).content == ANSWER

    assert len(gateway.requests) == 6
    assert gateway.connections_opened == 1


@pytest.mark.parametrize("stream", STREAM)
def test_each_call_is_logged_once_with_support_fields(
    driver: Driver, upstream_calls: Calls, stream: bool
) -> None:
    chat = driver.chat()
    call = CallInfo(request_id="r-1", user="u-7", task="greet")
    chat.stream(ask(), call) if stream else chat.complete(ask(), call)

    (entry,) = upstream_calls()
    assert entry["event"] == "upstream_call"
    assert (entry["status"], entry["stream"]) == ("ok", stream)
    assert (entry["model"], entry["user"], entry["task"]) == ("gpt-4o-mini", "u-7", "greet")
    assert entry["request_id"] == "r-1"
    assert entry["upstream_request_id"]
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (3, 6)
    assert (entry["category"], entry["error"], entry["fallback_from"]) == (None, None, None)
    assert entry["duration_ms"] >= 0
    if stream:
        assert 0 <= entry["ttft_ms"] <= entry["duration_ms"]
    else:
        assert entry["ttft_ms"] is None


def test_a_body_left_open_after_done_holds_no_stream(driver: Driver, upstream_calls: Calls) -> None:
    # fake-stream-linger keeps the body open, silent, for 2 s after [DONE].
    chat = driver.chat()
    started = time.monotonic()
    for _ in range(2):
        assert chat.stream(ask(model="fake-stream-linger")).content == ANSWER

    assert time.monotonic() - started < 1.0
    assert [call["status"] for call in upstream_calls()] == ["ok", "ok"]
    assert all(call["duration_ms"] < 500 for call in upstream_calls())


def test_leaving_a_stream_early_closes_it_upstream_and_logs_it_once(
    gateway: FakeGateway, driver: Driver, upstream_calls: Calls
) -> None:
    # fake-slow: ten deltas 0.2 s apart.
    received: list[str] = []
    started = time.monotonic()
    driver.chat().stream(ask(model="fake-slow"), received=received, stop_after=1)

    assert received == ["tok0 "]
    assert time.monotonic() - started < 1.0, "the first delta did not wait for the rest"
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)
    (entry,) = upstream_calls()
    assert (entry["status"], entry["category"]) == ("client_disconnect", None)
    assert entry["ttft_ms"] is not None


def test_a_trickling_stream_is_cut_at_the_deadline_and_closed_upstream(
    gateway: FakeGateway, driver: Driver, upstream_calls: Calls
) -> None:
    """ALLTKN_MAX_STREAM_S bounds the whole stream: fake-stream-trickle sends a delta every
    0.1 s for minutes, each read well within ALLTKN_TIMEOUT_S."""
    received: list[str] = []
    started = time.monotonic()
    chat = driver.chat(max_stream_s=0.5)
    error = failure(chat, "fake-stream-trickle", stream=True, received=received)

    assert 0.5 <= time.monotonic() - started < 1.5
    assert error.category is Category.TIMEOUT
    assert "ALLTKN_MAX_STREAM_S" in error.message
    assert 3 <= len(received) <= 7  # it had been streaming all along
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)
    (entry,) = upstream_calls()
    assert (entry["status"], entry["category"]) == ("error", "timeout")


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"prompt": "x" * 200_001}, id="prompt"),
        pytest.param(
            {"messages": [{"role": "user", "content": "x" * 40_001}] * 5}, id="messages-together"
        ),
    ],
)
def test_a_request_holds_at_most_200000_characters_in_all(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="200000"):
        ChatRequest.model_validate(fields)


# -- the request, alone --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        pytest.param({}, "either 'messages' or 'prompt'", id="neither-messages-nor-prompt"),
        pytest.param(
            {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]},
            "either 'messages' or 'prompt'",
            id="both",
        ),
        pytest.param({"prompt": "   "}, "'prompt' is blank", id="blank-prompt"),
        pytest.param({"messages": []}, "messages", id="no-messages"),
        pytest.param({"messages": [{"role": "tool", "content": "x"}]}, "role", id="unknown-role"),
        pytest.param({"prompt": "hi", "max_tokens": 0}, "max_tokens", id="max_tokens-0"),
        pytest.param({"prompt": "hi", "temperature": 2.5}, "temperature", id="temperature-2.5"),
        pytest.param({"prompt": "hi", "model": "gpt 4o"}, "model", id="model-with-a-space"),
        pytest.param({"prompt": "hi", "top_k": 3}, "top_k", id="unknown-field"),
    ],
)
def test_a_bad_request_is_refused_naming_what_is_wrong(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ChatRequest.model_validate(fields)
    assert words in str(caught.value)


# -- the stream protocol, alone: lines in, deltas out -----------------------------------------


def chunk(content: str | None = None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return "data: " + json.dumps({"model": "m-1", "choices": [choice]}, ensure_ascii=False)


USAGE = 'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
KEEP_ALIVES = [": keep-alive", "", "event: message", "id: 7", "retry: 500"]
ROLE = 'data: {"choices": [{"delta": {"role": "assistant"}}]}'
DONE = "data: [DONE]"


def feed(protocol: StreamProtocol, lines: list[str]) -> list[str]:
    return [delta for line in lines if (delta := protocol.feed(line)) is not None]


@pytest.mark.parametrize(
    ("lines", "deltas", "finish_reason", "usage", "done"),
    [
        pytest.param(
            [chunk("Hel"), chunk("lo"), chunk(finish="stop"), USAGE, DONE],
            ["Hel", "lo"],
            "stop",
            Usage(prompt_tokens=3, completion_tokens=2, total_tokens=0),  # 0: not sent
            True,
            id="deltas-finish-usage-done",
        ),
        pytest.param(
            [*KEEP_ALIVES, chunk("a"), ": ping", chunk(finish="length"), DONE],
            ["a"],
            "length",
            None,
            True,
            id="comments-keep-alives-and-event-fields-skipped",
        ),
        pytest.param(
            ['data:{"choices": [{"delta": {"content": "tight"}, "finish_reason": "stop"}]}'],
            ["tight"],
            "stop",
            None,
            False,
            id="data-without-a-space",
        ),
        pytest.param(
            [chunk(""), chunk(None), ROLE, chunk("x", finish="stop")],
            ["x"],
            "stop",
            None,
            False,
            id="empty-and-role-deltas-yield-nothing",
        ),
        pytest.param(
            [chunk("你好"), chunk(finish="stop"), DONE],
            ["你好"],
            "stop",
            None,
            True,
            id="unicode",
        ),
    ],
)
def test_stream_protocol_reads(
    lines: list[str],
    deltas: list[str],
    finish_reason: str,
    usage: Usage | None,
    done: bool,
) -> None:
    protocol = StreamProtocol()

    assert feed(protocol, lines) == deltas
    assert (protocol.finish_reason, protocol.usage, protocol.done) == (finish_reason, usage, done)
    assert protocol.parts == deltas
    protocol.end()  # a finish_reason was read: no complaint


def test_stream_protocol_keeps_the_model_the_gateway_names() -> None:
    protocol = StreamProtocol()
    feed(protocol, [chunk("a"), chunk(finish="stop")])
    assert protocol.model == "m-1"


@pytest.mark.parametrize(
    ("lines", "error", "words"),
    [
        pytest.param(
            ["<html><body>Please sign in</body></html>"],
            ValueError,
            "not an event stream: <html>",
            id="html-page-instead-of-a-stream",
        ),
        pytest.param(
            ['{"error": {"message": "bad key"}}'],
            ValueError,
            "not an event stream",
            id="json-body-instead-of-a-stream",
        ),
        pytest.param(["data: {not json"], ValueError, "", id="chunk-not-json"),
        pytest.param(
            [
                chunk("a"),
                'data: {"error": {"message": "上游负载已饱和", "code": "upstream_error"}}',
            ],
            InStreamError,
            "上游负载已饱和",
            id="in-stream-error-event",
        ),
        pytest.param(
            ['data: {"error": "oops"}'],
            InStreamError,
            "An error occurred",
            id="in-stream-error-without-a-message",
        ),
    ],
)
def test_stream_protocol_refuses(lines: list[str], error: type[Exception], words: str) -> None:
    protocol = StreamProtocol()
    with pytest.raises(error) as caught:
        feed(protocol, lines)
    assert words in str(caught.value)


def test_a_stream_that_ends_without_a_finish_reason_is_refused_at_its_end() -> None:
    protocol = StreamProtocol()
    assert feed(protocol, [chunk("a"), chunk("b"), DONE]) == ["a", "b"]
    with pytest.raises(ValueError, match="finish_reason"):
        protocol.end()


@pytest.mark.parametrize(
    ("content_type", "refused"),
    [
        pytest.param("text/event-stream", False, id="event-stream"),
        pytest.param("text/event-stream; charset=utf-8", False, id="event-stream-charset"),
        pytest.param("text/html; charset=utf-8", True, id="html"),
    ],
)
def test_stream_protocol_checks_the_content_type(content_type: str, refused: bool) -> None:
    headers = httpx2.Headers({"content-type": content_type})
    if refused:
        with pytest.raises(ValueError, match="not an event stream"):
            StreamProtocol.check_headers(headers)
    else:
        StreamProtocol.check_headers(headers)

{%- if cookiecutter.framework != "flask" %}


def test_a_cancelled_async_consumer_closes_its_stream_upstream(
    gateway: FakeGateway, async_driver: Driver, upstream_calls: Calls
) -> None:
    # As when an ASGI server cancels the task relaying a stream to a client that left.
    import asyncio

    chat: Any = async_driver.chat()

    async def consume(got_first: asyncio.Event) -> None:
        async with await chat.service.open_stream(ask(model="fake-slow")) as stream:
            async for _ in stream:
                got_first.set()

    async def run() -> None:
        got_first = asyncio.Event()
        task = asyncio.create_task(consume(got_first))
        await asyncio.wait_for(got_first.wait(), timeout=2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    chat.run(run())
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)
    (entry,) = upstream_calls()
    assert entry["status"] == "client_disconnect"
{%- endif %}
