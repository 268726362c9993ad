"""The rollback switches (docs/RUNBOOK.md), each set through the environment as operators do."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.chat import (
    AsyncChatService,
    ChatService,
    Rollback,
    input_chars,
)
from {{ cookiecutter.package_name }}.client import create_async_client, create_client
from {{ cookiecutter.package_name }}.errors import Category, GatewayError
from {{ cookiecutter.package_name }}.settings import ConfigError, load_settings

from .fake_gateway import FakeGateway

HELLO = [{"role": "user", "content": "say hello please"}]
ANSWER = "Hello from the fake gateway."

pytestmark = pytest.mark.usefixtures("gateway_env")


def _service() -> ChatService:
    settings = load_settings()
    return ChatService(create_client(settings), settings.model, Rollback.from_settings(settings))


@contextlib.asynccontextmanager
async def _async_service() -> AsyncIterator[AsyncChatService]:
    settings = load_settings()
    async with create_async_client(settings) as client:  # closes its connections
        yield AsyncChatService(client, settings.model, Rollback.from_settings(settings))


def _ask(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "ask", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# -- ALLTKN_FALLBACK_MODELS ----------------------------------------------------------------


def test_fallbacks_are_tried_in_order_and_the_model_used_is_returned_and_logged(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    upstream_calls: Callable[[], list[dict[str, Any]]],
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "fake-error-500, gpt-4o, gpt-4o-mini")
    result = _service().complete(HELLO, model="fake-error-503-model")

    assert (result.content, result.model) == (ANSWER, "gpt-4o")
    tried = [entry["model"] for entry in upstream_calls()]
    assert tried == ["fake-error-503-model", "fake-error-500", "gpt-4o"]
    assert [entry["fallback_from"] for entry in upstream_calls()] == [
        None,
        "fake-error-503-model",
        "fake-error-503-model",
    ]
    assert [entry["status"] for entry in upstream_calls()] == ["error", "error", "ok"]
    assert gateway.requests_for("gpt-4o-mini") == []


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
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_which_failures_fall_back(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    primary: str,
    falls_back: bool,
    stream: bool,
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    monkeypatch.setenv("ALLTKN_TIMEOUT_S", "0.3")
    service = _service()
    try:
        if stream:
            with service.open_stream(HELLO, model=primary) as chat_stream:
                content = "".join(chat_stream)
                model = chat_stream.result().model
        else:
            result = service.complete(HELLO, model=primary)
            content, model = result.content, result.model
    except GatewayError:
        assert not falls_back
    else:
        assert falls_back
        assert (content, model) == (ANSWER, "gpt-4o")
    assert len(gateway.requests_for("gpt-4o")) == (1 if falls_back else 0)
    assert len(gateway.requests_for(primary)) == 1


def test_when_every_model_fails_the_last_failure_is_raised(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "fake-error-500,fake-error-404-model")
    with pytest.raises(GatewayError) as caught:
        _service().complete(HELLO, model="fake-error-503-model")

    assert caught.value.category is Category.MODEL_NOT_FOUND
    assert "fake-error-404-model" in caught.value.upstream_message
    for model in ("fake-error-503-model", "fake-error-500", "fake-error-404-model"):
        assert len(gateway.requests_for(model)) == 1


def test_a_stream_that_started_does_not_fall_back(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    received: list[str] = []
    with (
        pytest.raises(GatewayError) as caught,
        _service().open_stream(HELLO, model="fake-stream-cut") as stream,
    ):
        received.extend(stream)

    assert caught.value.category is Category.STREAM_INTERRUPTED
    assert received
    assert gateway.requests_for("gpt-4o") == []


def test_the_async_service_falls_back_too(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")

    async def run() -> tuple[str, str]:
        async with _async_service() as service:
            answer = await service.complete(HELLO, model="fake-error-503-model")
            async with await service.open_stream(HELLO, model="fake-error-404-model") as stream:
                streamed = "".join([delta async for delta in stream])
        assert streamed == ANSWER
        return answer.model, stream.result().model

    assert asyncio.run(run()) == ("gpt-4o", "gpt-4o")
    assert len(gateway.requests_for("gpt-4o")) == 2


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
    upstream_calls: Callable[[], list[dict[str, Any]]],
    primary: str,
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    monkeypatch.setenv("ALLTKN_TIMEOUT_S", "0.3")
    monkeypatch.setattr(gateway, "hang_seconds", 0.6)
    with _service().open_stream(HELLO, model=primary) as stream:
        received = list(stream)

    assert "".join(received) == ANSWER
    assert stream.result().model == "gpt-4o"
    assert len(gateway.requests_for(primary)) == 1
    failed, used = upstream_calls()
    assert (failed["model"], failed["status"]) == (primary, "error")
    assert failed["category"] in ("timeout", "upstream_unavailable")
    assert (used["model"], used["status"], used["fallback_from"]) == ("gpt-4o", "ok", primary)
    assert used["ttft_ms"] is not None


def test_the_async_service_falls_back_before_the_first_delta(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    monkeypatch.setenv("ALLTKN_TIMEOUT_S", "0.3")
    monkeypatch.setattr(gateway, "hang_seconds", 0.6)

    async def run() -> tuple[str, str]:
        async with (
            _async_service() as service,
            await service.open_stream(HELLO, model="fake-stream-slow-start") as stream,
        ):
            streamed = "".join([delta async for delta in stream])
        return streamed, stream.result().model

    assert asyncio.run(run()) == (ANSWER, "gpt-4o")
    assert len(gateway.requests_for("fake-stream-slow-start")) == 1


def test_the_cli_retries_then_falls_back_before_the_first_delta(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_TIMEOUT_S", "0.3")
    monkeypatch.setenv("ALLTKN_MAX_RETRIES", "1")
    monkeypatch.setattr(gateway, "hang_seconds", 0.6)
    alone = _ask("--model", "fake-stream-slow-start", "hi")
    assert alone.returncode == 1
    assert "error[timeout]: " in alone.stderr
    assert len(gateway.requests_for("fake-stream-slow-start")) == 2

    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    rescued = _ask("--model", "fake-stream-slow-start", "hi")
    assert rescued.returncode == 0, rescued.stderr
    assert rescued.stdout == ANSWER + "\n"
    assert len(gateway.requests_for("fake-stream-slow-start")) == 4  # tried and retried again
    assert len(gateway.requests_for("gpt-4o")) == 1


def test_the_primary_is_not_tried_twice(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "fake-error-500,gpt-4o")
    _service().complete(HELLO, model="fake-error-500")
    assert len(gateway.requests_for("fake-error-500")) == 1


# -- ALLTKN_STREAMING=off ------------------------------------------------------------------


def test_streaming_off_answers_a_stream_with_one_delta_from_one_plain_call(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    upstream_calls: Callable[[], list[dict[str, Any]]],
) -> None:
    monkeypatch.setenv("ALLTKN_STREAMING", "off")
    with _service().open_stream(HELLO) as stream:
        deltas = list(stream)
        result = stream.result()

    assert deltas == [ANSWER]
    assert (result.model, result.usage is not None) == ("gpt-4o-mini", True)
    (sent,) = gateway.requests_for("gpt-4o-mini")
    assert "stream" not in sent.body
    (entry,) = upstream_calls()
    assert (entry["stream"], entry["status"]) == (False, "ok")


def test_streaming_off_in_the_async_service(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_STREAMING", "OFF")

    async def run() -> list[str]:
        async with _async_service() as service, await service.open_stream(HELLO) as stream:
            return [delta async for delta in stream]

    assert asyncio.run(run()) == [ANSWER]
    assert "stream" not in gateway.requests_for("gpt-4o-mini")[0].body


def test_streaming_off_keeps_failures_before_the_answer_as_errors(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_STREAMING", "off")
    with pytest.raises(GatewayError) as caught:
        _service().open_stream(HELLO, model="fake-error-quota")
    assert caught.value.category is Category.QUOTA


def test_streaming_off_through_the_cli(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_STREAMING", "off")
    done = _ask("say hello")

    assert done.returncode == 0, done.stderr
    assert done.stdout == ANSWER + "\n"
    assert "stream" not in gateway.requests_for("gpt-4o-mini")[0].body


# -- ALLTKN_MAX_INPUT_CHARS ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_over_long_input_is_refused_before_any_upstream_call(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    upstream_calls: Callable[[], list[dict[str, Any]]],
    stream: bool,
) -> None:
    monkeypatch.setenv("ALLTKN_MAX_INPUT_CHARS", "20")
    messages = [
        {"role": "system", "content": "be brief"},  # 8
        {"role": "user", "content": [{"type": "text", "text": "thirteen char"}]},  # 13
    ]
    service = _service()
    call: Callable[[Any], object] = service.open_stream if stream else service.complete
    with pytest.raises(GatewayError) as caught:
        call(messages)

    assert caught.value.category is Category.INVALID_REQUEST
    assert "21 characters" in caught.value.message
    assert "limit is 20" in caught.value.message
    assert gateway.requests == []
    assert upstream_calls() == []


def test_input_at_the_limit_is_sent(gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLTKN_MAX_INPUT_CHARS", str(len("say hello please")))
    assert _service().complete(HELLO).content == ANSWER


def test_input_chars_counts_text_of_every_message() -> None:
    messages: Any = [
        {"role": "system", "content": "abc"},
        {"role": "user", "content": [{"type": "text", "text": "de"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None},
    ]
    assert input_chars(messages) == 5


def test_over_long_input_through_the_cli(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_MAX_INPUT_CHARS", "5")
    done = _ask("far more than five characters")

    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error[invalid_request]: ")
    assert "the limit is 5 characters" in line
    assert gateway.requests == []


# -- invalid values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        pytest.param("ALLTKN_STREAMING", "maybe", "must be on or off", id="streaming-maybe"),
        pytest.param("ALLTKN_MAX_INPUT_CHARS", "-5", "greater than 0", id="max-chars-negative"),
        pytest.param("ALLTKN_MAX_INPUT_CHARS", "0", "greater than 0", id="max-chars-zero"),
        pytest.param("ALLTKN_MAX_INPUT_CHARS", "lots", "integer", id="max-chars-not-a-number"),
        pytest.param("ALLTKN_FALLBACK_MODELS", "gpt-4o,,gpt-4o-mini", "empty entry", id="fb-gap"),
        pytest.param("ALLTKN_FALLBACK_MODELS", "gpt-4o,", "empty entry", id="fallback-trailing"),
        pytest.param("ALLTKN_FALLBACK_MODELS", "gpt-4o,gpt-4o", "twice", id="fallback-twice"),
        pytest.param(
            "ALLTKN_FALLBACK_MODELS",
            "gpt-4o gpt-4o-mini",
            "has a space inside 'gpt-4o gpt-4o-mini'; separate model names with commas",
            id="fallback-space-separated",
        ),
        pytest.param("ALLTKN_RETRY_AFTER_CAP_S", "-1", "greater than or equal", id="cap-negative"),
        pytest.param("ALLTKN_RETRY_AFTER_CAP_S", "600", "less than or equal", id="cap-too-long"),
    ],
)
def test_invalid_switch_values_fail_in_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(name + " ")
    assert problem in message


def test_an_invalid_switch_stops_the_cli_with_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLTKN_STREAMING", "maybe")
    done = _ask("hello")

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "config error: ALLTKN_STREAMING must be on or off. "
        "Set it in the environment or in .env (see .env.example)."
    ]


def test_switch_defaults_and_accepted_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Rollback.from_settings(load_settings()) == Rollback()
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", " gpt-4o , gpt-4o-mini ")
    monkeypatch.setenv("ALLTKN_STREAMING", "Off")
    monkeypatch.setenv("ALLTKN_MAX_INPUT_CHARS", "12000")
    assert Rollback.from_settings(load_settings()) == Rollback(
        fallback_models=("gpt-4o", "gpt-4o-mini"), streaming=False, max_input_chars=12000
    )
    monkeypatch.setenv("ALLTKN_MAX_INPUT_CHARS", "")
    assert load_settings().max_input_chars is None
