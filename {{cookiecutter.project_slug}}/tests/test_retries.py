"""The retry policy, observed where it matters: how many requests reach the gateway.

Retry budgets are small and the fake's timeouts short, so the suite stays fast; the SDK's
backoff (0.5 s doubling, jittered) is what the retried cases wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import httpx2
import openai
import pytest

from {{ cookiecutter.package_name }}.chat import AsyncChatService, ChatService
from {{ cookiecutter.package_name }}.client import create_async_client, create_client
from {{ cookiecutter.package_name }}.errors import Category, GatewayError, classify
from {{ cookiecutter.package_name }}.retry import retry_after_s, should_retry
from {{ cookiecutter.package_name }}.settings import load_settings

from .fake_gateway import FakeGateway

HELLO = [{"role": "user", "content": "hello"}]

pytestmark = pytest.mark.usefixtures("gateway_env")


def _service(**overrides: Any) -> ChatService:
    settings = load_settings().model_copy(update={"timeout_s": 0.3, **overrides})
    return ChatService(create_client(settings), settings.model)


def _attempt(service: ChatService, model: str, *, stream: bool) -> GatewayError | None:
    try:
        if stream:
            with service.open_stream(HELLO, model=model) as chat_stream:
                list(chat_stream)
        else:
            service.complete(HELLO, model=model)
    except GatewayError as error:
        return error
    return None


NEVER_RETRIED = [
    pytest.param("fake-error-401", Category.AUTH, id="auth-401"),
    pytest.param("fake-error-quota", Category.QUOTA, id="quota-403-insufficient-user-quota"),
    pytest.param("fake-error-402", Category.QUOTA, id="quota-402"),
    pytest.param("fake-error-403", Category.PERMISSION, id="permission-403"),
    pytest.param("fake-error-404-model", Category.MODEL_NOT_FOUND, id="model-not-found-404"),
    pytest.param("fake-error-503-model", Category.MODEL_NOT_FOUND, id="model-not-found-503"),
    pytest.param("fake-error-400", Category.INVALID_REQUEST, id="invalid-request-400"),
    # Retry-After: 7 is above the cap of 5 s: fail fast, the caller gets the 429 and the delay.
    pytest.param("fake-error-429", Category.RATE_LIMITED, id="rate-limited-retry-after-over-cap"),
]
RETRIED = [
    pytest.param("fake-error-500", Category.UPSTREAM_UNAVAILABLE, id="upstream-500"),
    pytest.param("fake-error-502", Category.UPSTREAM_UNAVAILABLE, id="upstream-502-html"),
    pytest.param("fake-timeout", Category.TIMEOUT, id="timeout"),
    pytest.param("fake-drop", Category.CONNECTION, id="connection-dropped"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("model", "category"), NEVER_RETRIED)
def test_final_categories_reach_the_gateway_once(
    gateway: FakeGateway, model: str, category: Category, stream: bool
) -> None:
    error = _attempt(_service(max_retries=2), model, stream=stream)

    assert error is not None
    assert error.category is category
    assert len(gateway.requests_for(model)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("model", "category"), RETRIED)
def test_transient_categories_are_retried_max_retries_times(
    gateway: FakeGateway, model: str, category: Category, stream: bool
) -> None:
    error = _attempt(_service(max_retries=1), model, stream=stream)

    assert error is not None
    assert error.category is category
    assert len(gateway.requests_for(model)) == 2


def test_the_retry_budget_is_alltkn_max_retries(gateway: FakeGateway) -> None:
    _attempt(_service(max_retries=2), "fake-error-500", stream=False)
    _attempt(_service(max_retries=0), "fake-error-502", stream=False)

    assert len(gateway.requests_for("fake-error-500")) == 3
    assert len(gateway.requests_for("fake-error-502")) == 1


def test_the_wrong_base_path_is_not_retried(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_BASE_URL", gateway.base_url.removesuffix("/api/v1") + "/v1")
    error = _attempt(_service(max_retries=2), "gpt-4o-mini", stream=False)

    assert error is not None
    assert error.category is Category.BAD_BASE_URL
    assert len(gateway.requests_for("gpt-4o-mini")) == 1


@pytest.mark.parametrize(
    "model", ["fake-stream-cut", "fake-stream-error", "fake-stream-stall"], ids=str
)
def test_a_stream_that_started_is_never_retried(gateway: FakeGateway, model: str) -> None:
    received: list[str] = []
    service = _service(max_retries=2)
    with pytest.raises(GatewayError) as caught, service.open_stream(HELLO, model=model) as stream:
        received.extend(stream)

    assert caught.value.category is Category.STREAM_INTERRUPTED
    assert received, "the stream had started"
    assert len(gateway.requests_for(model)) == 1


# A stream whose headers arrived but whose content did not has given the caller nothing yet, so it
# is retried like a failed open (the SDK itself retries only the request that opens it).
BEFORE_THE_FIRST_DELTA = [
    pytest.param("fake-stream-slow-start", Category.TIMEOUT, id="first-token-too-late"),
    pytest.param("fake-html-200", Category.UPSTREAM_UNAVAILABLE, id="200-with-an-html-page"),
]


@pytest.mark.parametrize(("model", "category"), BEFORE_THE_FIRST_DELTA)
def test_a_stream_failing_before_its_first_delta_is_retried(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    upstream_calls: Callable[[], list[dict[str, Any]]],
    model: str,
    category: Category,
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 0.6)  # past the 0.3 s read timeout
    error = _attempt(_service(max_retries=2), model, stream=True)

    assert error is not None
    assert error.category is category
    assert len(gateway.requests_for(model)) == 3
    calls = upstream_calls()
    assert [call["category"] for call in calls] == [category.value] * 3
    assert [call["ttft_ms"] for call in calls] == [None] * 3  # no content ever arrived


def test_a_stream_timing_out_before_its_first_delta_is_closed_upstream(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 0.6)
    _attempt(_service(max_retries=1), "fake-stream-slow-start", stream=True)

    # Each timed-out attempt was closed: the fake's late first token finds nobody listening.
    assert gateway.wait_for(lambda: gateway.aborted_streams == 2, timeout=5)
    assert gateway.completed_streams == 0


def test_the_async_service_retries_a_stream_before_its_first_delta(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 0.6)
    settings = load_settings().model_copy(update={"timeout_s": 0.3, "max_retries": 1})

    async def attempt() -> GatewayError | None:
        client = create_async_client(settings)
        service = AsyncChatService(client, settings.model)
        try:
            async with (
                client,
                await service.open_stream(HELLO, model="fake-stream-slow-start") as stream,
            ):
                async for _ in stream:
                    pass
        except GatewayError as error:
            return error
        return None

    error = asyncio.run(attempt())
    assert error is not None
    assert error.category is Category.TIMEOUT
    assert len(gateway.requests_for("fake-stream-slow-start")) == 2


def test_retry_after_within_the_cap_is_waited_then_retried(gateway: FakeGateway) -> None:
    started = time.monotonic()
    result = _service(max_retries=1, retry_after_cap_s=2.0).complete(HELLO, model="fake-429-once")
    waited = time.monotonic() - started

    assert result.content
    assert len(gateway.requests_for("fake-429-once")) == 2
    assert waited >= 0.9, "Retry-After: 1 was honoured"


def test_retry_after_above_the_cap_fails_fast_and_keeps_the_delay(gateway: FakeGateway) -> None:
    started = time.monotonic()
    error = _attempt(_service(max_retries=3, retry_after_cap_s=0.5), "fake-429-once", stream=False)
    waited = time.monotonic() - started

    assert error is not None
    assert error.category is Category.RATE_LIMITED
    assert error.retry_after == "1"
    assert len(gateway.requests_for("fake-429-once")) == 1
    assert waited < 0.5, "no wait beyond the cap"


def test_the_async_client_follows_the_same_policy(gateway: FakeGateway) -> None:
    settings = load_settings().model_copy(update={"max_retries": 1})

    async def fail(model: str) -> Category:
        async with create_async_client(settings) as client:
            with pytest.raises(GatewayError) as caught:
                await AsyncChatService(client, settings.model).complete(HELLO, model=model)
        return caught.value.category

    assert asyncio.run(fail("fake-error-503-model")) is Category.MODEL_NOT_FOUND
    assert asyncio.run(fail("fake-error-500")) is Category.UPSTREAM_UNAVAILABLE
    assert len(gateway.requests_for("fake-error-503-model")) == 1
    assert len(gateway.requests_for("fake-error-500")) == 2


# -- the policy as a function ------------------------------------------------------------


def _response(status: int, body: Any = None, **headers: str) -> httpx2.Response:
    request = httpx2.Request("POST", "http://gateway.test/api/v1/chat/completions")
    if isinstance(body, dict):
        return httpx2.Response(status, json=body, headers=headers, request=request)
    return httpx2.Response(status, text=body or "", headers=headers, request=request)


@pytest.mark.parametrize(
    ("response", "retried"),
    [
        pytest.param(_response(500, {"error": {"message": "boom"}}), True, id="500"),
        pytest.param(_response(502, "<html>Bad Gateway</html>"), True, id="502-html"),
        pytest.param(_response(408, {"error": {"message": "timeout"}}), True, id="408"),
        pytest.param(_response(429, {"error": {"message": "slow down"}}), True, id="429-no-delay"),
        pytest.param(_response(429, {}, **{"Retry-After": "2"}), True, id="429-at-cap"),
        pytest.param(_response(429, {}, **{"Retry-After": "2.5"}), False, id="429-over-cap"),
        pytest.param(_response(429, {}, **{"retry-after-ms": "3000"}), False, id="429-ms-over-cap"),
        pytest.param(_response(429, {}, **{"Retry-After": "inf"}), False, id="429-infinite"),
        pytest.param(
            # An hour ahead: made at collection, it must still be ahead when a long suite runs it.
            _response(429, {}, **{"Retry-After": formatdate(time.time() + 3600, usegmt=True)}),
            False,
            id="429-http-date-over-cap",
        ),
        pytest.param(
            _response(429, {"error": {"message": "quota", "code": "insufficient_quota"}}),
            False,
            id="429-insufficient-quota",
        ),
        pytest.param(
            _response(503, {"error": {"message": "无可用渠道", "code": "model_not_found"}}),
            False,
            id="503-model-not-found",
        ),
        pytest.param(_response(409, {"error": {"message": "conflict"}}), False, id="409"),
    ],
)
def test_should_retry(response: httpx2.Response, retried: bool) -> None:
    assert should_retry(response, retry_after_cap_s=2.0) is retried


def test_retry_after_parsing() -> None:
    assert retry_after_s(httpx2.Headers({"retry-after": "7"})) == 7.0
    assert retry_after_s(httpx2.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    in_a_minute = formatdate(time.time() + 60, usegmt=True)
    assert 55 < (retry_after_s(httpx2.Headers({"retry-after": in_a_minute})) or 0) <= 60
    assert retry_after_s(httpx2.Headers({"retry-after": "soon"})) is None
    assert retry_after_s(httpx2.Headers()) is None


# -- the gateway's request id and words ----------------------------------------------------


def _status_error(message: str, **headers: str) -> openai.APIStatusError:
    body = {"message": message, "type": "new_api_error", "code": "server_error"}
    response = _response(500, {"error": body}, **headers)
    return openai.APIStatusError(message, response=response, body=body)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(
            _status_error("boom", **{"x-request-id": "abc-1"}), "abc-1", id="x-request-id"
        ),
        pytest.param(
            _status_error("boom", **{"X-Oneapi-Request-Id": "2026112811"}),
            "2026112811",
            id="x-oneapi-request-id",
        ),
        pytest.param(
            _status_error("上游服务出错 (request id: 20261128abcXYZ)"),
            "20261128abcXYZ",
            id="message-suffix",
        ),
        pytest.param(
            openai.APIError(
                "流中断 (request id: in-stream-7)",
                httpx2.Request("POST", "http://gateway.test/api/v1/chat/completions"),
                body={"message": "流中断 (request id: in-stream-7)"},
            ),
            "in-stream-7",
            id="in-stream-error-suffix",
        ),
        pytest.param(_status_error("boom"), None, id="none"),
    ],
)
def test_the_upstream_request_id_is_found_in_each_place(
    exc: openai.APIError, expected: str | None
) -> None:
    assert classify(exc).upstream_request_id == expected


def test_the_fake_gateways_request_id_header_and_suffix_agree(gateway: FakeGateway) -> None:
    error = _attempt(_service(), "fake-error-quota", stream=False)
    assert error is not None
    assert error.upstream_request_id
    assert f"(request id: {error.upstream_request_id})" in error.upstream_message


def test_chinese_gateway_text_stays_in_logs_while_clients_get_the_category(
    gateway: FakeGateway,
) -> None:
    error = _attempt(_service(), "fake-error-503-model", stream=False)

    assert error is not None
    assert "无可用渠道" in error.upstream_message
    assert str(error) == error.message == "The requested model is not available on the gateway."
    assert "ALLTKN_MODEL" in error.hint
    assert "无可用渠道" not in error.message + error.hint
