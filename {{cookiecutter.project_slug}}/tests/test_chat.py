"""The chat service against a real (fake) gateway: answers, streams, headers, logs, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from openai.types.chat.chat_completion_message import FunctionCall

from {{ cookiecutter.package_name }}.chat import (
    AsyncChatService,
    CallInfo,
    ChatService,
    Rollback,
    Usage,
)
from {{ cookiecutter.package_name }}.client import create_async_client, create_client
from {{ cookiecutter.package_name }}.settings import load_settings

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway

HELLO = [{"role": "user", "content": "say hello please"}]
ANSWER = "Hello from the fake gateway."

pytestmark = pytest.mark.usefixtures("gateway_env")


def _service() -> ChatService:
    settings = load_settings()
    return ChatService(create_client(settings), settings.model)


def test_complete_returns_answer_model_usage_and_ids(gateway: FakeGateway) -> None:
    result = _service().complete(HELLO, call=CallInfo(request_id="req-123"))

    assert result.content == ANSWER
    assert result.model == "gpt-4o-mini"
    assert result.usage == Usage(prompt_tokens=3, completion_tokens=6, total_tokens=9)
    assert result.request_id == "req-123"
    assert result.upstream_request_id


def _call_sync(stream: bool, call: CallInfo) -> None:
    if not stream:
        _service().complete(HELLO, call=call)
        return
    with _service().open_stream(HELLO, call=call) as deltas:
        assert "".join(deltas) == ANSWER


def _call_async(stream: bool, call: CallInfo) -> None:
    async def run() -> None:
        async with _async_service() as service:
            if not stream:
                await service.complete(HELLO, call=call)
                return
            async with await service.open_stream(HELLO, call=call) as deltas:
                assert "".join([delta async for delta in deltas]) == ANSWER

    asyncio.run(run())


# Streams are opened with the client's `post()`, answers with `chat.completions.create()`:
# the gateway must see the same request either way.
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("call", [_call_sync, _call_async], ids=["sync", "async"])
def test_upstream_request_carries_key_request_id_client_name_and_body(
    gateway: FakeGateway, call: Callable[[bool, CallInfo], None], stream: bool
) -> None:
    call(stream, CallInfo(request_id="req-abc"))

    (sent,) = gateway.requests_for("gpt-4o-mini")
    assert sent.method == "POST"
    assert sent.path == "/api/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {SENTINEL_KEY}"
    assert sent.headers["x-request-id"] == "req-abc"
    assert sent.headers["x-client-name"].startswith("{{ cookiecutter.project_slug }}/")
    assert sent.headers["content-type"] == "application/json"
    sdk = "AsyncOpenAI/Python" if call is _call_async else "OpenAI/Python"
    assert sent.headers["user-agent"].startswith(sdk)
    expected: dict[str, Any] = {"model": "gpt-4o-mini", "messages": HELLO}
    if stream:
        expected |= {"stream": True, "stream_options": {"include_usage": True}}
    assert sent.body == expected


def test_sync_calls_reuse_one_connection_to_the_gateway(gateway: FakeGateway) -> None:
    service = _service()
    for _ in range(3):
        assert service.complete(HELLO).content == ANSWER
        with service.open_stream(HELLO) as stream:
            assert "".join(stream) == ANSWER

    assert gateway.connections_opened == 1


def test_async_calls_reuse_one_connection_to_the_gateway(gateway: FakeGateway) -> None:
    async def run() -> None:
        async with _async_service() as service:
            for _ in range(3):
                assert (await service.complete(HELLO)).content == ANSWER
                async with await service.open_stream(HELLO) as stream:
                    assert "".join([delta async for delta in stream]) == ANSWER

    asyncio.run(run())
    assert gateway.connections_opened == 1


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_message_parts_given_as_a_generator_reach_every_model_tried(
    gateway: FakeGateway, stream: bool
) -> None:
    parts = ({"type": "text", "text": word} for word in ("say", "hello"))
    messages: list[Any] = [{"role": "user", "content": parts}]
    settings = load_settings()
    service = ChatService(
        create_client(settings), settings.model, Rollback(fallback_models=("gpt-4o-mini",))
    )

    if stream:
        with service.open_stream(messages, model="fake-error-503-model") as deltas:
            assert "".join(deltas) == ANSWER
    else:
        assert service.complete(messages, model="fake-error-503-model").content == ANSWER

    sent = [*gateway.requests_for("fake-error-503-model"), *gateway.requests_for("gpt-4o-mini")]
    assert len(sent) >= 2
    for request in sent:
        assert request.body["messages"][0]["content"] == [
            {"type": "text", "text": "say"},
            {"type": "text", "text": "hello"},
        ]


def test_a_pydantic_model_in_a_message_is_sent_as_its_json_object(gateway: FakeGateway) -> None:
    call = FunctionCall(name="lookup", arguments="{}")
    messages: list[Any] = [
        *HELLO,
        {"role": "assistant", "content": "looking it up", "function_call": call},
        {"role": "user", "content": "and?"},
    ]

    with _service().open_stream(messages) as deltas:
        assert "".join(deltas) == ANSWER

    (sent,) = gateway.requests_for("gpt-4o-mini")
    assert sent.body["messages"][1]["function_call"] == {"name": "lookup", "arguments": "{}"}


def test_a_body_left_open_after_done_holds_neither_stream(
    gateway: FakeGateway, upstream_calls: Callable[[], list[dict[str, Any]]]
) -> None:
    # fake-stream-linger keeps the body open, silent, for 2 s after [DONE]; the leftovers are
    # read for at most 0.1 s, after the call was logged.
    async def stream_async() -> str:
        async with (
            _async_service() as service,
            await service.open_stream(HELLO, model="fake-stream-linger") as stream,
        ):
            return "".join([delta async for delta in stream])

    started = time.monotonic()
    with _service().open_stream(HELLO, model="fake-stream-linger") as stream:
        assert "".join(stream) == ANSWER
    assert asyncio.run(stream_async()) == ANSWER

    assert time.monotonic() - started < 1.0
    assert [call["status"] for call in upstream_calls()] == ["ok", "ok"]
    assert all(call["duration_ms"] < 500 for call in upstream_calls())


def test_closing_a_stream_wakes_its_drain_in_another_thread(gateway: FakeGateway) -> None:
    # As in the Flask relay: a helper thread reads, the client leaves while it drains.
    stream = _service().open_stream(HELLO, model="fake-stream-linger")
    deltas: list[str] = []
    reader = threading.Thread(target=lambda: deltas.extend(stream), daemon=True)
    reader.start()
    while "".join(deltas) != ANSWER:
        time.sleep(0.001)
    time.sleep(0.02)  # the reader is past [DONE], waiting on the silent gateway

    closed = time.monotonic()
    stream.close()
    reader.join(timeout=5)

    assert not reader.is_alive()
    assert time.monotonic() - closed < 1.0  # not the gateway's 2 s


def test_stream_yields_deltas_and_usage_from_the_final_chunk(gateway: FakeGateway) -> None:
    with _service().open_stream(HELLO) as stream:
        deltas = list(stream)
        result = stream.result()

    assert "".join(deltas) == ANSWER
    assert len(deltas) == 6
    assert result.usage == Usage(prompt_tokens=3, completion_tokens=6, total_tokens=9)
    (sent,) = gateway.requests_for("gpt-4o-mini")
    assert sent.body["stream_options"] == {"include_usage": True}


def test_stream_deltas_arrive_before_the_gateway_finishes(gateway: FakeGateway) -> None:
    started = time.monotonic()
    with _service().open_stream(HELLO, model="fake-slow") as stream:
        first = next(iter(stream))
        first_after = time.monotonic() - started
    assert first == "tok0 "
    # fake-slow needs 2 s for all ten deltas; the first must not wait for the rest.
    assert first_after < 1.0
    # Leaving early aborts the rest; wait for it so no late abort is counted in the next test.
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)


def test_leaving_a_stream_early_closes_it_upstream(
    gateway: FakeGateway, upstream_calls: Callable[[], list[dict[str, Any]]]
) -> None:
    with _service().open_stream(HELLO, model="fake-slow") as stream:
        for _ in stream:
            break

    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)
    assert upstream_calls()[-1]["status"] == "client_disconnect"


def test_each_call_is_logged_once_with_support_fields(
    gateway: FakeGateway, upstream_calls: Callable[[], list[dict[str, Any]]]
) -> None:
    service = _service()
    with service.open_stream(HELLO, call=CallInfo(request_id="r-1", user="u-7", task="greet")) as s:
        list(s)

    (entry,) = upstream_calls()
    assert entry["event"] == "upstream_call"
    assert entry["status"] == "ok"
    assert entry["stream"] is True
    assert (entry["model"], entry["user"], entry["task"]) == ("gpt-4o-mini", "u-7", "greet")
    assert entry["request_id"] == "r-1"
    assert entry["upstream_request_id"]
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (3, 6)
    assert entry["ttft_ms"] is not None
    assert entry["duration_ms"] >= entry["ttft_ms"]
    assert entry["category"] is None
    assert entry["error"] is None


def test_a_failed_call_logs_category_and_gateway_text(
    gateway: FakeGateway, upstream_calls: Callable[[], list[dict[str, Any]]]
) -> None:
    with pytest.raises(Exception, match="insufficient balance"):
        _service().complete(HELLO, model="fake-error-quota")

    (entry,) = upstream_calls()
    assert entry["status"] == "error"
    assert entry["category"] == "quota"
    assert "用户额度不足" in entry["error"]
    assert entry["upstream_request_id"]


@contextlib.asynccontextmanager
async def _async_service() -> AsyncIterator[AsyncChatService]:
    settings = load_settings()
    async with create_async_client(settings) as client:  # closes its connections
        yield AsyncChatService(client, settings.model)


def test_async_complete_and_stream(gateway: FakeGateway) -> None:
    async def run() -> tuple[str, list[str]]:
        async with _async_service() as service:
            answer = (await service.complete(HELLO)).content
            async with await service.open_stream(HELLO) as stream:
                deltas = [delta async for delta in stream]
        return answer, deltas

    answer, deltas = asyncio.run(run())
    assert answer == ANSWER
    assert "".join(deltas) == ANSWER


def test_async_stream_closed_on_cancellation_aborts_upstream(
    gateway: FakeGateway, upstream_calls: Callable[[], list[dict[str, Any]]]
) -> None:
    async def consume(service: AsyncChatService, got_first: asyncio.Event) -> None:
        async with await service.open_stream(HELLO, model="fake-slow") as stream:
            async for _ in stream:
                got_first.set()

    async def run() -> None:
        got_first = asyncio.Event()
        async with _async_service() as service:
            task = asyncio.create_task(consume(service, got_first))
            await asyncio.wait_for(got_first.wait(), timeout=2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)
    assert upstream_calls()[-1]["status"] == "client_disconnect"
