"""Every gateway failure maps to one category, with the gateway's own words kept for logs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import openai
import pytest

from {{ cookiecutter.package_name }}.chat import AsyncChatService, ChatService
from {{ cookiecutter.package_name }}.client import create_async_client, create_client
from {{ cookiecutter.package_name }}.errors import Category, GatewayError, classify
from {{ cookiecutter.package_name }}.settings import Settings, load_settings

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway

HELLO = [{"role": "user", "content": "hello"}]


def _service(**overrides: Any) -> ChatService:
    settings = load_settings().model_copy(update=overrides)
    return ChatService(create_client(settings), settings.model)


def _call(service: ChatService, model: str, *, stream: bool) -> None:
    if stream:
        with service.open_stream(HELLO, model=model) as chat_stream:
            list(chat_stream)
    else:
        service.complete(HELLO, model=model)


def _failure(service: ChatService, model: str, *, stream: bool = False) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        _call(service, model, stream=stream)
    return caught.value


@pytest.mark.usefixtures("gateway_env")
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(
    ("model", "category", "gateway_words"),
    [
        pytest.param("fake-error-401", Category.AUTH, "无效的令牌", id="401-auth"),
        pytest.param(
            "fake-error-quota", Category.QUOTA, "用户额度不足", id="403-insufficient-quota"
        ),
        pytest.param(
            "fake-error-402", Category.QUOTA, "exceeded your current quota", id="402-quota"
        ),
        pytest.param("fake-error-403", Category.PERMISSION, "无权", id="403-permission"),
        pytest.param(
            "fake-error-404-model", Category.MODEL_NOT_FOUND, "does not exist", id="404-model"
        ),
        pytest.param(
            "fake-error-503-model", Category.MODEL_NOT_FOUND, "无可用渠道", id="503-no-channel"
        ),
        pytest.param(
            "fake-error-400", Category.INVALID_REQUEST, "context length", id="400-invalid"
        ),
        pytest.param("fake-error-429", Category.RATE_LIMITED, "Rate limit", id="429-rate-limited"),
        pytest.param(
            "fake-error-500",
            Category.UPSTREAM_UNAVAILABLE,
            "server had an error",
            id="500-unavailable",
        ),
        pytest.param("fake-error-502", Category.UPSTREAM_UNAVAILABLE, "502", id="502-html-page"),
        pytest.param("fake-timeout", Category.TIMEOUT, "imed out", id="timeout"),
    ],
)
def test_failure_before_any_output_maps_to_its_category(
    gateway: FakeGateway, model: str, category: Category, gateway_words: str, stream: bool
) -> None:
    service = _service(timeout_s=0.5) if model == "fake-timeout" else _service()

    error = _failure(service, model, stream=stream)

    assert error.category is category
    assert gateway_words in error.upstream_message
    assert error.message
    assert error.hint
    assert SENTINEL_KEY not in f"{error} {error.hint} {error.upstream_message}"


@pytest.mark.usefixtures("gateway_env")
def test_gateway_request_id_is_kept(gateway: FakeGateway) -> None:
    error = _failure(_service(), "fake-error-quota")
    assert error.upstream_request_id
    assert f"(request id: {error.upstream_request_id})" in error.upstream_message


@pytest.mark.usefixtures("gateway_env")
def test_rate_limit_keeps_retry_after(gateway: FakeGateway) -> None:
    assert _failure(_service(), "fake-error-429").retry_after == "7"


@pytest.mark.usefixtures("gateway_env")
def test_wrong_base_path_is_bad_base_url(gateway: FakeGateway) -> None:
    wrong = gateway.base_url.replace("/api/v1", "/v2")
    error = _failure(_service(base_url=wrong), "gpt-4o-mini")
    assert error.category is Category.BAD_BASE_URL
    assert "Invalid URL (POST /v2/chat/completions)" in error.upstream_message


@pytest.mark.usefixtures("gateway_env")
def test_wrong_key_is_auth(gateway: FakeGateway) -> None:
    settings: Settings = load_settings()
    other = settings.model_copy(update={"api_key": type(settings.api_key)("sk-" + "0" * 48)})
    error = _failure(ChatService(create_client(other), other.model), "gpt-4o-mini")
    assert error.category is Category.AUTH


@pytest.mark.usefixtures("gateway_env")
def test_unreachable_gateway_is_connection() -> None:
    error = _failure(_service(base_url="http://127.0.0.1:9/api/v1"), "gpt-4o-mini")
    assert error.category is Category.CONNECTION


async def _async_call(service: AsyncChatService, model: str, *, stream: bool) -> None:
    if stream:
        async with await service.open_stream(HELLO, model=model) as chat_stream:
            async for _ in chat_stream:
                pass
    else:
        await service.complete(HELLO, model=model)


async def _async_failure(settings: Settings, model: str, *, stream: bool) -> GatewayError:
    async with create_async_client(settings) as client:
        service = AsyncChatService(client, settings.model)
        with pytest.raises(GatewayError) as caught:
            await _async_call(service, model, stream=stream)
    return caught.value


@pytest.mark.usefixtures("gateway_env")
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize(
    ("overrides", "model", "category", "words"),
    [
        pytest.param(
            {"base_url": "http://127.0.0.1:9/api/v1"},
            "gpt-4o-mini",
            Category.CONNECTION,
            "connect",
            id="refused",
        ),
        pytest.param({}, "fake-drop", Category.CONNECTION, "disconnect", id="dropped-unanswered"),
        pytest.param({"timeout_s": 0.5}, "fake-timeout", Category.TIMEOUT, "imeout", id="timeout"),
    ],
)
def test_transport_failures_map_alike_for_both_clients(
    gateway: FakeGateway,
    overrides: dict[str, Any],
    model: str,
    category: Category,
    words: str,
    flavour: str,
    stream: bool,
) -> None:
    # The async client talks through aiohttp, whose transport reports a refused or dropped
    # connection as a connect *timeout*; the category must still say what happened.
    settings = load_settings().model_copy(update={"max_retries": 0, **overrides})
    if flavour == "sync":
        service = ChatService(create_client(settings), settings.model)
        error = _failure(service, model, stream=stream)
    else:
        error = asyncio.run(_async_failure(settings, model, stream=stream))

    assert error.category is category
    assert words in error.upstream_message.lower()


@pytest.mark.usefixtures("gateway_env")
@pytest.mark.parametrize(
    ("model", "words"),
    [
        pytest.param("fake-stream-cut", "", id="cut-connection"),
        pytest.param("fake-stream-error", "上游负载已饱和", id="in-stream-error-event"),
        pytest.param("fake-stream-no-finish", "finish_reason", id="no-finish-reason"),
    ],
)
def test_failure_after_streaming_began_is_stream_interrupted(
    gateway: FakeGateway, model: str, words: str
) -> None:
    service = _service()
    received: list[str] = []
    with pytest.raises(GatewayError) as caught, service.open_stream(HELLO, model=model) as stream:
        received.extend(stream)
    assert caught.value.category is Category.STREAM_INTERRUPTED
    assert words in caught.value.upstream_message
    assert received, "deltas sent before the failure still reach the caller"


@pytest.mark.usefixtures("gateway_env")
def test_no_channel_503_is_not_retried(gateway: FakeGateway) -> None:
    _failure(_service(max_retries=2), "fake-error-503-model")
    assert len(gateway.requests_for("fake-error-503-model")) == 1


@pytest.mark.usefixtures("gateway_env")
def test_other_5xx_is_retried_as_configured(gateway: FakeGateway) -> None:
    _failure(_service(max_retries=1), "fake-error-500")
    assert len(gateway.requests_for("fake-error-500")) == 2


@pytest.mark.usefixtures("gateway_env")
def test_a_200_that_is_not_json_is_upstream_unavailable(gateway: FakeGateway) -> None:
    error = _failure(_service(), "fake-html-200")
    assert error.category is Category.UPSTREAM_UNAVAILABLE
    assert "non-JSON" in error.upstream_message


def _status_error(status: int, body: dict[str, Any]) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://gateway.test/api/v1/chat/completions")
    response = httpx2.Response(status, json=body, request=request)
    return openai.APIStatusError(f"Error code: {status}", response=response, body=body)


@pytest.mark.parametrize(
    ("status", "body", "category"),
    [
        pytest.param(404, {"detail": "Not Found"}, Category.BAD_BASE_URL, id="404-other-app"),
        pytest.param(
            404,
            {"message": "The model `x` does not exist", "code": None},
            Category.MODEL_NOT_FOUND,
            id="404-model-without-code",
        ),
        pytest.param(
            429,
            {"message": "You exceeded your current quota", "code": "insufficient_quota"},
            Category.QUOTA,
            id="429-insufficient-quota",
        ),
    ],
)
def test_status_errors_from_other_servers(
    status: int, body: dict[str, Any], category: Category
) -> None:
    assert classify(_status_error(status, body)).category is category
