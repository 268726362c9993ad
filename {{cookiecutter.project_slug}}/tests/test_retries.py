"""The retry policy (`retry.py`), observed where it matters: how many requests reach the gateway,
and as functions.

The SDK retries the request that opens a call; the clients' hook vetoes what the policy does
not retry. Its backoff (0.5 s, jittered) is waited here only after a timeout or a dropped
connection: error answers are retried after 10 ms (`quick_sdk_retries`). The services retry a
stream that failed before its first delta after `retry.backoff_s`, shortened here too
(`quick_backoff`; its values have a test of their own).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import httpx2
import pytest

from {{ cookiecutter.package_name }} import retry
from {{ cookiecutter.package_name }}.errors import Category, GatewayError
from {{ cookiecutter.package_name }}.retry import Attempts, backoff_s, may_retry, retry_after_s

from .conftest import ANSWER, Driver, ask, failure
from .fake_gateway import FakeGateway

Calls = Callable[[], list[dict[str, Any]]]
STREAM = [pytest.param(False, id="complete"), pytest.param(True, id="stream")]


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services' own retries (of a stream before its first delta) wait 10 ms."""
    monkeypatch.setattr(retry, "backoff_s", lambda attempt: 0.01)


@pytest.fixture
def quick_sdk_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's retries of an error answer wait 10 ms: after the policy has had its say, the
    clients' hook adds the server-directed delay the SDK honours (`retry-after-ms`)."""
    veto = retry.veto

    def veto_then_hurry(response: httpx2.Response, cap_s: float) -> None:
        veto(response, cap_s)
        response.headers.setdefault("retry-after-ms", "10")

    monkeypatch.setattr(retry, "veto", veto_then_hurry)


@pytest.mark.parametrize("stream", STREAM)
@pytest.mark.parametrize(
    "model",
    [
        pytest.param("fake-error-401", id="auth"),
        pytest.param("fake-error-quota", id="quota-403"),
        pytest.param("fake-error-402", id="quota-402"),
        pytest.param("fake-error-403", id="permission"),
        pytest.param("fake-error-400", id="invalid-request"),
        pytest.param("fake-error-404-model", id="model-not-found-404"),
        # The SDK would retry a 503 and a 429: the clients' hook vetoes these two.
        pytest.param("fake-error-503-model", id="model-not-found-503"),
        pytest.param("fake-error-429", id="rate-limited-retry-after-7-over-the-cap-of-5"),
    ],
)
def test_final_failures_reach_the_gateway_once(
    gateway: FakeGateway, driver: Driver, model: str, stream: bool
) -> None:
    started = time.monotonic()
    failure(driver.chat(max_retries=2), model, stream=stream)

    assert len(gateway.requests) == 1
    assert time.monotonic() - started < 2.0, "failed fast, without waiting out a Retry-After"


# Error answers are retried after 10 ms (`quick_sdk_retries`), a dropped connection after the
# SDK's own backoff (0.5 s); a timeout is retried by the same code of the SDK as a connection
# error, so it is not waited out here again.
@pytest.mark.parametrize(
    ("model", "stream"),
    [
        pytest.param("fake-error-500", False, id="upstream-500"),
        pytest.param("fake-error-502", False, id="upstream-502-html"),
        pytest.param("fake-error-500", True, id="upstream-500-opening-a-stream"),
        pytest.param("fake-drop", True, id="connection-dropped-opening-a-stream"),
    ],
)
@pytest.mark.usefixtures("quick_sdk_retries")
def test_transient_failures_are_retried_alltkn_max_retries_times(
    gateway: FakeGateway, driver: Driver, upstream_calls: Calls, model: str, stream: bool
) -> None:
    failure(driver.chat(max_retries=1), model, stream=stream)

    assert len(gateway.requests) == 2
    assert len(upstream_calls()) == 1, "the SDK's retries are one call"


@pytest.mark.usefixtures("quick_sdk_retries")
def test_the_retry_budget_is_alltkn_max_retries(gateway: FakeGateway, driver: Driver) -> None:
    failure(driver.chat(max_retries=3), "fake-error-500", stream=False)
    assert len(gateway.requests) == 4


def test_no_retries_with_alltkn_max_retries_0(gateway: FakeGateway, driver: Driver) -> None:
    failure(driver.chat(max_retries=0), "fake-error-500", stream=False)
    assert len(gateway.requests) == 1


@pytest.mark.parametrize(
    "model", ["fake-stream-cut", "fake-stream-error", "fake-stream-stall"], ids=str
)
def test_a_stream_that_started_is_never_retried(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    driver: Driver,
    quick_backoff: None,
    model: str,
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 0.3)  # fake-stream-stall: past the timeout
    received: list[str] = []
    error = failure(
        driver.chat(max_retries=2, timeout_s=0.2), model, stream=True, received=received
    )

    assert error.category is Category.STREAM_INTERRUPTED
    assert received, "the stream had started"
    assert len(gateway.requests) == 1
    if model == "fake-stream-stall":  # timed out between deltas: closed upstream
        assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)


# A stream whose headers arrived but whose content did not has given the caller nothing yet, so
# it is retried like a failed open.
@pytest.mark.parametrize(
    ("model", "category"),
    [
        pytest.param("fake-stream-slow-start", Category.TIMEOUT, id="first-token-too-late"),
        pytest.param("fake-html-200", Category.UPSTREAM_UNAVAILABLE, id="200-with-an-html-page"),
    ],
)
def test_a_stream_failing_before_its_first_delta_is_retried(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    driver: Driver,
    upstream_calls: Calls,
    quick_backoff: None,
    model: str,
    category: Category,
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 0.4)  # past the 0.2 s read timeout
    error = failure(driver.chat(max_retries=1, timeout_s=0.2), model, stream=True)

    assert error.category is category
    assert len(gateway.requests) == 2
    calls = upstream_calls()
    assert [call["category"] for call in calls] == [category.value] * 2
    assert [call["ttft_ms"] for call in calls] == [None] * 2  # no content ever arrived
    if model == "fake-stream-slow-start":
        # Each timed-out attempt was closed: the late first token found nobody listening.
        assert gateway.wait_for(lambda: gateway.aborted_streams == 2, timeout=2)


def test_a_retry_after_within_the_cap_is_waited_then_retried(
    gateway: FakeGateway, driver: Driver, upstream_calls: Calls
) -> None:
    # fake-429-once: a 429 with Retry-After: 1 (the cap is 5 s), then the answer.
    started = time.monotonic()
    result = driver.chat(max_retries=1).stream(ask(model="fake-429-once"))

    assert result.content == ANSWER
    assert time.monotonic() - started >= 0.9, "Retry-After: 1 was waited"
    assert len(gateway.requests) == 2
    (entry,) = upstream_calls()
    assert entry["status"] == "ok"


def test_a_retry_after_above_the_cap_fails_fast_and_keeps_the_delay(
    gateway: FakeGateway, driver: Driver
) -> None:
    started = time.monotonic()
    error = failure(
        driver.chat(max_retries=3, retry_after_cap_s=0.5), "fake-429-once", stream=False
    )

    assert error.category is Category.RATE_LIMITED
    assert error.retry_after == "1"
    assert len(gateway.requests) == 1
    assert time.monotonic() - started < 0.9, "Retry-After: 1 was not waited"


# -- the policy as functions -------------------------------------------------------------------


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
def test_the_client_hook_vetoes_what_the_policy_does_not_retry(
    response: httpx2.Response, retried: bool
) -> None:
    assert retry.sdk_would_retry(response.status_code)
    retry.veto(response, 2.0)
    assert (response.headers.get("x-should-retry") != "false") is retried


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        pytest.param({"retry-after": "7"}, 7.0, id="seconds"),
        pytest.param({"retry-after": "0.5"}, 0.5, id="fraction"),
        pytest.param({"retry-after-ms": "250", "retry-after": "9"}, 0.25, id="ms-first"),
        pytest.param({"retry-after": "soon"}, None, id="garbage"),
        pytest.param({"retry-after": "nan"}, None, id="nan"),
        pytest.param({}, None, id="absent"),
    ],
)
def test_retry_after_s(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_s(headers) == seconds


def test_retry_after_s_reads_an_http_date() -> None:
    in_a_minute = formatdate(time.time() + 60, usegmt=True)
    assert 55 < (retry_after_s({"retry-after": in_a_minute}) or 0) <= 60
    assert retry_after_s(httpx2.Headers({"Retry-After": in_a_minute})) is not None


def test_may_retry() -> None:
    assert may_retry(Category.RATE_LIMITED, 5.0, 5.0)
    assert not may_retry(Category.RATE_LIMITED, 5.1, 5.0)
    assert may_retry(Category.UPSTREAM_UNAVAILABLE, None, 0.0)
    assert not may_retry(Category.MODEL_NOT_FOUND, None, 5.0)
    assert not may_retry(Category.STREAM_INTERRUPTED, None, 5.0)


def test_backoff_doubles_with_jitter_up_to_8_s() -> None:
    for attempt, full in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (9, 8.0)]:
        assert all(0.75 * full <= backoff_s(attempt) <= full for _ in range(20))


def _error(category: Category, retry_after: str | None = None) -> GatewayError:
    return GatewayError(category, retry_after=retry_after)


# Each step: the failure of the current attempt -> the model of the next one ("" for none),
# "retry" / "fallback" / "final".
UNAVAILABLE, NOT_FOUND = Category.UPSTREAM_UNAVAILABLE, Category.MODEL_NOT_FOUND


@pytest.mark.parametrize(
    ("max_retries", "steps"),
    [
        pytest.param(
            1,
            [
                (UNAVAILABLE, "a", "retry"),
                (UNAVAILABLE, "b", "fallback"),
                (UNAVAILABLE, "b", "retry"),
                (UNAVAILABLE, "c", "fallback"),
                (UNAVAILABLE, "c", "retry"),
                (UNAVAILABLE, "", "final"),
            ],
            id="retried-then-each-fallback",
        ),
        pytest.param(
            2,
            [(NOT_FOUND, "b", "fallback"), (NOT_FOUND, "c", "fallback"), (NOT_FOUND, "", "final")],
            id="model-not-found-falls-back-without-retry",
        ),
        pytest.param(2, [(Category.AUTH, "", "final")], id="auth-is-final"),
        pytest.param(2, [(Category.QUOTA, "", "final")], id="quota-is-final"),
        pytest.param(
            1,
            [(Category.CONNECTION, "a", "retry"), (Category.CONNECTION, "", "final")],
            id="connection-retried-never-falls-back",
        ),
        pytest.param(
            0,
            [(Category.TIMEOUT, "b", "fallback"), (Category.RATE_LIMITED, "", "final")],
            id="no-retries-timeout-falls-back",
        ),
        pytest.param(
            1, [(Category.STREAM_INTERRUPTED, "", "final")], id="interrupted-stream-is-final"
        ),
    ],
)
def test_attempts_order(max_retries: int, steps: list[tuple[Category, str, str]]) -> None:
    attempts = Attempts(["a", "b", "c"], max_retries, retry_after_cap_s=5.0)
    for category, model, move in steps:
        before = attempts.model
        delay = attempts.after(_error(category))
        if move == "final":
            assert delay is None
            continue
        assert delay is not None
        assert attempts.model == model
        if move == "retry":
            assert model == before
            assert delay > 0
        else:
            assert delay == 0.0
            assert attempts.fallback_from == "a"


def test_attempts_wait_out_retry_after_within_the_cap_only() -> None:
    attempts = Attempts(["a"], max_retries=3, retry_after_cap_s=5.0)
    assert attempts.after(_error(Category.RATE_LIMITED, retry_after="2")) == 2.0
    assert attempts.after(_error(Category.RATE_LIMITED, retry_after="7")) is None


def test_attempts_after_an_sdk_retry_only_fall_back() -> None:
    attempts = Attempts(["a", "b"], max_retries=3, retry_after_cap_s=5.0)
    assert attempts.after(_error(UNAVAILABLE), retry=False) == 0.0
    assert (attempts.model, attempts.fallback_from) == ("b", "a")
    assert attempts.after(_error(UNAVAILABLE), retry=False) is None
