"""The rollback switches (docs/RUNBOOK.md) and the server's limits, each set through the
environment as operators do, on every chat service the bake ships."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.errors import Category, GatewayError
from {{ cookiecutter.package_name }}.request import ChatRequest, Message
from {{ cookiecutter.package_name }}.settings import ConfigError, load_settings

from .conftest import ANSWER, HELLO, Chat, Driver, ask, failure
from .fake_gateway import FakeGateway

Calls = Callable[[], list[dict[str, Any]]]
STREAM = [pytest.param(False, id="complete"), pytest.param(True, id="stream")]


def call(chat: Chat, request: ChatRequest, *, stream: bool) -> Any:
    return chat.stream(request) if stream else chat.complete(request)


# -- ALLTKN_FALLBACK_MODELS ----------------------------------------------------------------


@pytest.mark.parametrize("stream", STREAM)
def test_fallbacks_are_tried_in_order_with_the_same_request_and_the_model_used_is_logged(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    driver: Driver,
    upstream_calls: Calls,
    stream: bool,
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "fake-error-500, gpt-4o, gpt-4o-mini")
    request = ask(model="fake-error-503-model", max_tokens=50, temperature=0.5)
    result = call(driver.chat(), request, stream=stream)

    assert (result.content, result.model) == (ANSWER, "gpt-4o")
    assert [(e["model"], e["status"], e["fallback_from"]) for e in upstream_calls()] == [
        ("fake-error-503-model", "error", None),
        ("fake-error-500", "error", "fake-error-503-model"),
        ("gpt-4o", "ok", "fake-error-503-model"),
    ]
    assert [r.body["model"] for r in gateway.requests] == [
        "fake-error-503-model",
        "fake-error-500",
        "gpt-4o",
    ]
    for sent in gateway.requests:
        assert sent.body["messages"] == [{"role": "user", "content": HELLO}]
        assert (sent.body["max_tokens"], sent.body["temperature"]) == (50, 0.5)
        assert sent.headers["x-request-id"] == result.request_id  # one call, one id


@pytest.mark.parametrize(
    ("primary", "falls_back"),
    [
        pytest.param("fake-error-404-model", True, id="model-not-found-404"),
        pytest.param("fake-error-503-model", True, id="model-not-found-503"),
        pytest.param("fake-error-500", True, id="upstream-unavailable"),
        pytest.param("fake-timeout", True, id="timeout"),
        pytest.param("fake-error-401", False, id="never-on-auth"),
        pytest.param("fake-error-quota", False, id="never-on-quota"),
        pytest.param("fake-error-402", False, id="never-on-quota-402"),
        pytest.param("fake-error-403", False, id="never-on-permission"),
        pytest.param("fake-error-400", False, id="never-on-invalid-request"),
        pytest.param("fake-error-429", False, id="never-on-rate-limited"),
        pytest.param("fake-drop", False, id="never-on-connection"),
    ],
)
@pytest.mark.parametrize("stream", STREAM)
def test_which_failures_fall_back(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    driver: Driver,
    primary: str,
    falls_back: bool,
    stream: bool,
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    monkeypatch.setenv("ALLTKN_TIMEOUT_S", "0.2")
    monkeypatch.setattr(gateway, "hang_seconds", 0.4)
    chat = driver.chat()
    if falls_back:
        result = call(chat, ask(model=primary), stream=stream)
        assert (result.content, result.model) == (ANSWER, "gpt-4o")
    else:
        failure(chat, primary, stream=stream)
    assert len(gateway.requests_for("gpt-4o")) == (1 if falls_back else 0)
    assert len(gateway.requests_for(primary)) == 1


def test_when_every_model_fails_the_last_failure_is_raised(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, driver: Driver
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "fake-error-500,fake-error-404-model")
    error = failure(driver.chat(), "fake-error-503-model", stream=False)

    assert error.category is Category.MODEL_NOT_FOUND
    assert "fake-error-404-model" in error.upstream_message
    assert len(gateway.requests) == 3


def test_the_requested_model_is_not_tried_again_as_a_fallback(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, driver: Driver
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "fake-error-500,gpt-4o")
    assert driver.chat().complete(ask(model="fake-error-500")).model == "gpt-4o"
    assert len(gateway.requests_for("fake-error-500")) == 1


def test_a_stream_that_started_does_not_fall_back(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, driver: Driver, upstream_calls: Calls
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    received: list[str] = []
    error = failure(driver.chat(), "fake-stream-cut", stream=True, received=received)

    assert error.category is Category.STREAM_INTERRUPTED
    assert received
    assert gateway.requests_for("gpt-4o") == []
    assert [e["category"] for e in upstream_calls()] == ["stream_interrupted"]


@pytest.mark.parametrize(
    "primary",
    [
        pytest.param("fake-stream-slow-start", id="timeout-before-the-first-token"),
        pytest.param("fake-html-200", id="200-with-an-html-page"),
    ],
)
def test_a_stream_failing_before_its_first_delta_falls_back(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    driver: Driver,
    upstream_calls: Calls,
    primary: str,
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    monkeypatch.setenv("ALLTKN_TIMEOUT_S", "0.2")
    monkeypatch.setattr(gateway, "hang_seconds", 0.4)
    received: list[str] = []
    result = driver.chat().stream(ask(model=primary), received=received)

    assert "".join(received) == ANSWER
    assert result.model == "gpt-4o"
    assert len(gateway.requests_for(primary)) == 1
    failed, used = upstream_calls()
    assert (failed["model"], failed["status"]) == (primary, "error")
    assert failed["category"] in ("timeout", "upstream_unavailable")
    assert (used["model"], used["status"], used["fallback_from"]) == ("gpt-4o", "ok", primary)
    assert used["ttft_ms"] is not None
    if primary == "fake-stream-slow-start":  # the attempt that timed out was closed upstream
        assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)


# -- ALLTKN_STREAMING=off ------------------------------------------------------------------


def test_streaming_off_answers_a_stream_with_one_delta_from_one_plain_call(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, driver: Driver, upstream_calls: Calls
) -> None:
    monkeypatch.setenv("ALLTKN_STREAMING", "off")
    received: list[str] = []
    result = driver.chat().stream(ask(), received=received)

    assert received == [ANSWER]
    assert (result.model, result.usage is not None) == ("gpt-4o-mini", True)
    (sent,) = gateway.requests
    assert "stream" not in sent.body
    (entry,) = upstream_calls()
    assert (entry["stream"], entry["status"]) == (False, "ok")


def test_streaming_off_keeps_a_failure_an_error(
    monkeypatch: pytest.MonkeyPatch, driver: Driver
) -> None:
    monkeypatch.setenv("ALLTKN_STREAMING", "off")
    assert failure(driver.chat(), "fake-error-quota", stream=True).category is Category.QUOTA


# -- ALLTKN_MAX_INPUT_CHARS and ALLTKN_MAX_OUTPUT_TOKENS ---------------------------------------


@pytest.mark.parametrize("stream", STREAM)
def test_over_long_input_is_refused_before_any_upstream_call(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    driver: Driver,
    upstream_calls: Calls,
    stream: bool,
) -> None:
    monkeypatch.setenv("ALLTKN_MAX_INPUT_CHARS", "20")
    request = ChatRequest(
        messages=[
            Message(role="system", content="be brief"),  # 8
            Message(role="user", content="thirteen char"),  # 13
        ]
    )
    with pytest.raises(GatewayError) as caught:
        call(driver.chat(), request, stream=stream)

    assert caught.value.category is Category.INVALID_REQUEST
    assert "21 characters" in caught.value.message
    assert "limit is 20" in caught.value.message
    assert caught.value.status is None  # the category's 400
    assert gateway.requests == []
    assert upstream_calls() == []


def test_input_at_the_limit_is_sent(monkeypatch: pytest.MonkeyPatch, driver: Driver) -> None:
    monkeypatch.setenv("ALLTKN_MAX_INPUT_CHARS", str(len(HELLO)))
    assert driver.chat().complete(ask()).content == ANSWER


@pytest.mark.parametrize("stream", STREAM)
def test_max_tokens_above_the_cap_is_refused_with_422_before_any_upstream_call(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    driver: Driver,
    upstream_calls: Calls,
    stream: bool,
) -> None:
    monkeypatch.setenv("ALLTKN_MAX_OUTPUT_TOKENS", "100")
    with pytest.raises(GatewayError) as caught:
        call(driver.chat(), ask(max_tokens=101), stream=stream)

    assert (caught.value.category, caught.value.status) == (Category.INVALID_REQUEST, 422)
    assert "max_tokens" in caught.value.message
    assert "ALLTKN_MAX_OUTPUT_TOKENS" in caught.value.message
    assert gateway.requests == []
    assert upstream_calls() == []


@pytest.mark.parametrize("stream", STREAM)
def test_the_output_cap_is_sent_when_the_request_names_none(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, driver: Driver, stream: bool
) -> None:
    monkeypatch.setenv("ALLTKN_MAX_OUTPUT_TOKENS", "100")
    chat = driver.chat()
    call(chat, ask(), stream=stream)
    call(chat, ask(max_tokens=100), stream=stream)

    assert [sent.body["max_tokens"] for sent in gateway.requests] == [100, 100]


def test_input_chars_counts_the_text_of_every_message() -> None:
    assert ask("twelve chars").input_chars() == 12
    request = ChatRequest(
        messages=[Message(role="system", content="abc"), Message(role="user", content="de")]
    )
    assert request.input_chars() == 5


# -- accepted forms ----------------------------------------------------------------------------


@pytest.mark.usefixtures("gateway_env")
def test_switch_defaults_and_accepted_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    assert defaults.fallback_model_list == ()
    assert (defaults.streaming, defaults.max_input_chars) == ("on", 200_000)
    assert defaults.max_output_tokens == 4096

    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", " gpt-4o , gpt-4o-mini ")
    monkeypatch.setenv("ALLTKN_STREAMING", " Off ")
    monkeypatch.setenv("ALLTKN_MAX_INPUT_CHARS", "12000")
    monkeypatch.setenv("ALLTKN_MAX_OUTPUT_TOKENS", "512")
    switched = load_settings()
    assert switched.fallback_model_list == ("gpt-4o", "gpt-4o-mini")
    assert (switched.streaming, switched.max_input_chars) == ("off", 12000)
    assert switched.max_output_tokens == 512

    monkeypatch.setenv("ALLTKN_MAX_INPUT_CHARS", "")  # no longer "no limit": a finite default
    with pytest.raises(ConfigError, match="ALLTKN_MAX_INPUT_CHARS"):
        load_settings()
