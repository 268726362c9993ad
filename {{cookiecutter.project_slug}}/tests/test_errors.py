"""Every gateway failure maps to one category, with the gateway's own words and request id kept
for logs while clients get the category's fixed message and hint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from {{ cookiecutter.package_name }}.errors import Category, GatewayError, classify, error_body
from {{ cookiecutter.package_name }}.settings import KEY_ENV_VAR

from .conftest import SENTINEL_KEY, Driver, failure
from .fake_gateway import FakeGateway

Calls = Callable[[], list[dict[str, Any]]]
STREAM = [pytest.param(False, id="complete"), pytest.param(True, id="stream")]


@pytest.mark.parametrize("stream", STREAM)
@pytest.mark.parametrize(
    ("model", "category", "gateway_words"),
    [
        pytest.param("fake-error-401", Category.AUTH, "无效的令牌", id="auth-401"),
        pytest.param("fake-error-quota", Category.QUOTA, "用户额度不足", id="quota-403"),
        pytest.param(
            "fake-error-402", Category.QUOTA, "exceeded your current quota", id="quota-402"
        ),
        pytest.param("fake-error-403", Category.PERMISSION, "无权", id="permission-403"),
        pytest.param(
            "fake-error-404-model", Category.MODEL_NOT_FOUND, "does not exist", id="model-404"
        ),
        pytest.param(
            "fake-error-503-model", Category.MODEL_NOT_FOUND, "无可用渠道", id="model-503"
        ),
        pytest.param(
            "fake-error-400", Category.INVALID_REQUEST, "context length", id="invalid-request-400"
        ),
        pytest.param("fake-error-429", Category.RATE_LIMITED, "Rate limit", id="rate-limited-429"),
        pytest.param(
            "fake-error-500",
            Category.UPSTREAM_UNAVAILABLE,
            "server had an error",
            id="upstream-500",
        ),
        pytest.param(
            "fake-error-502", Category.UPSTREAM_UNAVAILABLE, "502", id="upstream-502-html"
        ),
        pytest.param("fake-html-200", Category.UPSTREAM_UNAVAILABLE, "200", id="upstream-200-html"),
        pytest.param("fake-timeout", Category.TIMEOUT, "timed out", id="timeout"),
        pytest.param("fake-drop", Category.CONNECTION, "disconnect", id="connection-dropped"),
    ],
)
def test_each_failure_before_any_output_maps_to_its_category(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    driver: Driver,
    upstream_calls: Calls,
    model: str,
    category: Category,
    gateway_words: str,
    stream: bool,
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 0.5)
    error = failure(driver.chat(timeout_s=0.2), model, stream=stream)

    assert error.category is category
    assert gateway_words in error.upstream_message
    assert str(error) == error.message
    assert error.message
    assert error.hint
    client_text = f"{error.message} {error.hint}"
    assert gateway_words not in client_text, "the gateway's words stay in the logs"
    assert SENTINEL_KEY not in f"{client_text} {error.upstream_message}"
    (entry,) = upstream_calls()
    assert (entry["status"], entry["category"]) == ("error", category.value)
    assert gateway_words in entry["error"]


@pytest.mark.parametrize(
    "model", ["fake-error-quota", "fake-error-500", "fake-error-429", "fake-stream-error"], ids=str
)
def test_the_gateways_request_id_is_kept_for_support(
    gateway: FakeGateway, driver: Driver, upstream_calls: Calls, model: str
) -> None:
    error = failure(driver.chat(), model, stream=True)

    assert error.upstream_request_id
    assert f"(request id: {error.upstream_request_id})" in error.upstream_message
    assert upstream_calls()[-1]["upstream_request_id"] == error.upstream_request_id


def test_a_rate_limit_passes_the_gateways_retry_after_on(driver: Driver) -> None:
    # Retry-After: 7 is above ALLTKN_RETRY_AFTER_CAP_S (5): not waited, handed to the caller.
    assert failure(driver.chat(max_retries=2), "fake-error-429", stream=False).retry_after == "7"


@pytest.mark.parametrize("stream", STREAM)
def test_a_wrong_base_path_is_bad_base_url(
    gateway: FakeGateway, driver: Driver, stream: bool
) -> None:
    wrong = gateway.base_url.replace("/api/v1", "/v2")
    error = failure(driver.chat(base_url=wrong), "gpt-4o-mini", stream=stream)

    assert error.category is Category.BAD_BASE_URL
    assert "Invalid URL (POST /v2/chat/completions)" in error.upstream_message
    assert "ALLTKN_BASE_URL" in error.hint


def test_a_wrong_key_is_auth(monkeypatch: pytest.MonkeyPatch, driver: Driver) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, "sk-" + "0" * 48)
    assert failure(driver.chat(), "gpt-4o-mini", stream=False).category is Category.AUTH


@pytest.mark.parametrize("stream", STREAM)
def test_an_unreachable_gateway_is_connection(driver: Driver, stream: bool) -> None:
    # Over aiohttp, a refused connection surfaces as a connect *timeout*; it is still refused.
    error = failure(driver.chat(base_url="http://127.0.0.1:9/api/v1"), "gpt-4o-mini", stream=stream)

    assert error.category is Category.CONNECTION
    assert "connect" in error.upstream_message.lower()


@pytest.mark.parametrize(
    ("model", "words"),
    [
        pytest.param("fake-stream-cut", "", id="connection-cut"),
        pytest.param("fake-stream-error", "上游负载已饱和", id="in-stream-error-event"),
        pytest.param("fake-stream-no-finish", "finish_reason", id="no-finish-reason"),
    ],
)
def test_a_failure_after_streaming_began_is_stream_interrupted(
    driver: Driver, upstream_calls: Calls, model: str, words: str
) -> None:
    received: list[str] = []
    error = failure(driver.chat(), model, stream=True, received=received)

    assert error.category is Category.STREAM_INTERRUPTED
    assert words in error.upstream_message
    assert received, "the deltas sent before the failure reached the caller"
    (entry,) = upstream_calls()
    assert (entry["status"], entry["category"]) == ("error", "stream_interrupted")
    assert entry["ttft_ms"] is not None


# -- classify on answers other servers give -------------------------------------------------


def _status_error(status: int, body: dict[str, Any], **headers: str) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://gateway.test/api/v1/chat/completions")
    response = httpx2.Response(status, json={"error": body}, headers=headers, request=request)
    return openai.APIStatusError(f"Error code: {status}", response=response, body=body)


@pytest.mark.parametrize(
    ("status", "body", "category"),
    [
        pytest.param(404, {"detail": "Not Found"}, Category.BAD_BASE_URL, id="404-other-app"),
        pytest.param(
            404,
            {"message": "Invalid URL (POST /v1/models/chat/completions)"},
            Category.BAD_BASE_URL,
            id="404-invalid-url-naming-models",
        ),
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
        pytest.param(408, {"message": "timeout"}, Category.TIMEOUT, id="408"),
        pytest.param(409, {"message": "conflict"}, Category.INVALID_REQUEST, id="409"),
    ],
)
def test_status_errors_from_other_servers(
    status: int, body: dict[str, Any], category: Category
) -> None:
    assert classify(_status_error(status, body)).category is category


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(
            _status_error(500, {"message": "boom"}, **{"x-request-id": "abc-1"}),
            "abc-1",
            id="x-request-id",
        ),
        pytest.param(
            _status_error(500, {"message": "boom"}, **{"X-Oneapi-Request-Id": "2026112811"}),
            "2026112811",
            id="x-oneapi-request-id",
        ),
        pytest.param(
            _status_error(500, {"message": "上游服务出错 (request id: 20261128abcXYZ)"}),
            "20261128abcXYZ",
            id="message-suffix",
        ),
        pytest.param(_status_error(500, {"message": "boom"}), None, id="none"),
    ],
)
def test_the_upstream_request_id_is_found_in_each_place(
    exc: openai.APIError, expected: str | None
) -> None:
    assert classify(exc).upstream_request_id == expected


def test_the_error_body_every_endpoint_answers_with() -> None:
    error = GatewayError(Category.QUOTA, "用户额度不足", "up-1")
    assert error_body(error.category, error.message, error.hint, "r-1") == {
        "error": {
            "category": "quota",
            "message": "The gateway account has insufficient balance or quota.",
            "hint": error.hint,
            "request_id": "r-1",
        }
    }


def test_a_refusal_of_the_service_says_exactly_why_with_its_status() -> None:
    error = GatewayError(Category.INVALID_REQUEST, detail="max_tokens: at most 10", status=422)
    assert (str(error), error.status) == ("max_tokens: at most 10", 422)
    assert GatewayError(Category.AUTH).status is None  # the category's usual status
