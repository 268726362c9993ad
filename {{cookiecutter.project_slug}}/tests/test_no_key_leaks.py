"""The key never leaves: every path, run with the session's unique sentinel key, at DEBUG.

Success, every error category, streams, streams that break and callers that leave early, in
process (every log record, every exception text, stdout and stderr) and through the command
line; plus the settings' secret type. In process with the chat service this project ships:
{{ "sync and async" if cookiecutter.framework == "script" else "async" if cookiecutter.framework == "fastapi" else "sync" }}. What each kind of log content goes through is in test_logs.py.
"""

from __future__ import annotations

{% if cookiecutter.framework != "flask" -%}
import asyncio
{% endif -%}
import json
import logging
import os
import signal
import subprocess
import sys
{%- if cookiecutter.framework != "fastapi" %}
import threading
{%- endif %}
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr
{% if cookiecutter.framework != "flask" %}
from {{ cookiecutter.package_name }}.chat_async import AsyncChatService, create_async_client
{%- endif %}
{%- if cookiecutter.framework != "fastapi" %}
from {{ cookiecutter.package_name }}.chat_sync import ChatService, create_client
{%- endif %}
from {{ cookiecutter.package_name }}.errors import Category, GatewayError
from {{ cookiecutter.package_name }}.logs import TRANSPORT_LOGGERS, configure_logging
from {{ cookiecutter.package_name }}.request import ChatRequest
from {{ cookiecutter.package_name }}.settings import (
    KEY_ENV_VAR,
    ConfigError,
    Settings,
    load_settings,
)

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway
from .test_logs import RecordSink

# The key, and pieces of it long enough that no mask could contain them.
KEY_PIECES = (SENTINEL_KEY, SENTINEL_KEY[:20], SENTINEL_KEY[3:23], SENTINEL_KEY[-12:])

# (model, expected category); None is success. Every category the chat service can produce.
OUTCOMES = [
    pytest.param("gpt-4o-mini", None, id="success"),
    pytest.param("fake-error-400", Category.INVALID_REQUEST, id="invalid-request"),
    pytest.param("fake-error-401", Category.AUTH, id="auth"),
    pytest.param("fake-error-quota", Category.QUOTA, id="quota-403"),
    pytest.param("fake-error-402", Category.QUOTA, id="quota-402"),
    pytest.param("fake-error-403", Category.PERMISSION, id="permission"),
    pytest.param("fake-error-404-model", Category.MODEL_NOT_FOUND, id="model-404"),
    pytest.param("fake-error-503-model", Category.MODEL_NOT_FOUND, id="model-503"),
    pytest.param("fake-error-429", Category.RATE_LIMITED, id="rate-limited"),
    pytest.param("fake-error-500", Category.UPSTREAM_UNAVAILABLE, id="unavailable-500"),
    pytest.param("fake-error-502", Category.UPSTREAM_UNAVAILABLE, id="unavailable-502"),
    pytest.param("fake-timeout", Category.TIMEOUT, id="timeout"),
]
STREAM_BREAKS = ["fake-stream-cut", "fake-stream-error", "fake-stream-no-finish"]
# Settings (given the fake's base URL) under which the gateway cannot be used at all.
UNUSABLE = [
    pytest.param(
        lambda url: {"base_url": "http://127.0.0.1:9/api/v1"}, Category.CONNECTION, id="connection"
    ),
    pytest.param(
        lambda url: {"api_key": SecretStr("sk-" + "Q7" * 24)}, Category.AUTH, id="wrong-key"
    ),
    pytest.param(
        lambda url: {"base_url": url.replace("/api/v1", "/v2")},
        Category.BAD_BASE_URL,
        id="wrong-base-path",
    ),
]

# How a caller uses the service: "complete", "stream" (read to the end) or "leave" (the first
# delta, then close). A driver returns every text the caller got back. Clients are made once
# per settings: making one loads the CA certificates, which takes longer than a whole call.
Driver = Callable[[Settings, str, str], list[str]]
CLIENTS: dict[tuple[str, Settings], Any] = {}
{%- if cookiecutter.framework != "flask" %}
LOOP = asyncio.new_event_loop()  # one loop for the module, as the async clients are bound to it
{%- endif %}


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    for client in CLIENTS.values():
{%- if cookiecutter.framework == "flask" %}
        client.close()
{%- else %}
        closing = client.close()
        if asyncio.iscoroutine(closing):  # an async client
            LOOP.run_until_complete(closing)
    LOOP.close()
{%- endif %}
{%- if cookiecutter.framework != "fastapi" %}


def run_sync(settings: Settings, model: str, mode: str) -> list[str]:
    if ("sync", settings) not in CLIENTS:
        CLIENTS["sync", settings] = create_client(settings)
    service = ChatService(CLIENTS["sync", settings], settings)
    request = ChatRequest(prompt="hello", model=model)
    if mode == "complete":
        return [repr(service.complete(request))]
    with service.open_stream(request) as stream:
        if mode == "leave":
            return [next(iter(stream))]
        return ["".join(stream), repr(stream.result())]
{%- endif %}
{%- if cookiecutter.framework != "flask" %}


def run_async(settings: Settings, model: str, mode: str) -> list[str]:
    async def run() -> list[str]:
        if ("async", settings) not in CLIENTS:
            CLIENTS["async", settings] = create_async_client(settings)
        service = AsyncChatService(CLIENTS["async", settings], settings)
        request = ChatRequest(prompt="hello", model=model)
        if mode == "complete":
            return [repr(await service.complete(request))]
        async with await service.open_stream(request) as stream:
            deltas = []
            async for delta in stream:
                deltas.append(delta)
                if mode == "leave":
                    break
            return ["".join(deltas), repr(stream.result())]

    return LOOP.run_until_complete(run())
{%- endif %}


DRIVERS = [
{%- if cookiecutter.framework != "fastapi" %}
    pytest.param(run_sync, id="sync"),
{%- endif %}
{%- if cookiecutter.framework != "flask" %}
    pytest.param(run_async, id="async"),
{%- endif %}
]


def assert_no_key(*texts: str) -> None:
    for text in texts:
        for piece in KEY_PIECES:
            assert piece not in text


@pytest.fixture
def sink(capfd: pytest.CaptureFixture[str]) -> Iterator[RecordSink]:
    """Logging configured as the service does (at DEBUG, onto the captured stderr), plus a
    sink on the root logger."""
    root = logging.getLogger()
    saved = list(root.handlers)
    levels = {name: logging.getLogger(name).level for name in ("", *TRANSPORT_LOGGERS)}
    configure_logging("DEBUG", secrets=[SENTINEL_KEY])
    catcher = RecordSink()
    root.addHandler(catcher)
    yield catcher
{%- if cookiecutter.framework != "fastapi" %}
    # A finished sync stream's rest is drained in a thread, which logs (at DEBUG) meanwhile.
    for thread in threading.enumerate():
        if thread.name.endswith("(_drain)"):
            thread.join(timeout=2)
{%- endif %}
    root.handlers[:] = saved
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def leaks(sink: RecordSink, capfd: pytest.CaptureFixture[str]) -> Callable[..., None]:
    """Asserts that the key is in no log record, no stdout, no stderr, nor in `extra` texts."""

    def check(*extra: str) -> None:
        out, err = capfd.readouterr()
        assert sink.seen, "nothing was logged"
        assert_no_key(out, err, *sink.seen, *extra)

    return check


def outcome(
    driver: Driver, model: str, mode: str, **overrides: Any
) -> tuple[Category | None, list[str]]:
    """(category, or None for success; every text the caller got back)."""
    settings = load_settings().model_copy(update={"timeout_s": 0.5, **overrides})
    try:
        return None, driver(settings, model, mode)
    except GatewayError as error:
        texts = [str(error), repr(error), error.hint, error.upstream_message, str(vars(error))]
        return error.category, texts


@pytest.mark.usefixtures("gateway_env")
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize(("model", "category"), OUTCOMES)
def test_no_key_in_any_outcome(
    leaks: Callable[..., None], driver: Driver, model: str, category: Category | None, mode: str
) -> None:
    got, texts = outcome(driver, model, mode)

    assert got is category
    leaks(*texts)


@pytest.mark.usefixtures("gateway_env")
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("model", STREAM_BREAKS)
def test_no_key_when_a_stream_breaks(
    leaks: Callable[..., None], driver: Driver, model: str
) -> None:
    got, texts = outcome(driver, model, "stream")

    assert got is Category.STREAM_INTERRUPTED
    leaks(*texts)


@pytest.mark.usefixtures("gateway_env")
@pytest.mark.parametrize("driver", DRIVERS)
def test_no_key_when_the_caller_leaves_a_stream(
    leaks: Callable[..., None], gateway: FakeGateway, driver: Driver
) -> None:
    got, texts = outcome(driver, "fake-slow", "leave")

    assert got is None
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=3)
    leaks(*texts)


@pytest.mark.usefixtures("gateway_env")
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(("overrides", "category"), UNUSABLE)
def test_no_key_when_the_gateway_cannot_be_used(
    leaks: Callable[..., None],
    gateway: FakeGateway,
    driver: Driver,
    overrides: Callable[[str], dict[str, Any]],
    category: Category,
) -> None:
    got, texts = outcome(driver, "gpt-4o-mini", "complete", **overrides(gateway.base_url))

    assert got is category
    leaks(*texts)


# -- the command line -----------------------------------------------------------------------


# Every way the command line ends; each error category is covered in process above, the
# printing of an error is the same for all of them.
CLI_RUNS = [
    ("stream", ["ask", "hi"], 0),
    ("no-stream", ["ask", "hi", "--no-stream"], 0),
    ("auth", ["ask", "hi", "--model", "fake-error-401"], 1),
    ("quota-no-stream", ["ask", "hi", "--no-stream", "--model", "fake-error-quota"], 1),
    ("timeout", ["ask", "hi", "--model", "fake-timeout"], 1),
    ("stream-cut", ["ask", "hi", "--model", "fake-stream-cut"], 1),
]


def _start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", *args],
        stdin=subprocess.DEVNULL,  # not the test runner's: `ask` reads piped input
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LOG_LEVEL": "DEBUG", "ALLTKN_TIMEOUT_S": "0.5"},
    )


@pytest.mark.usefixtures("gateway_env")
def test_no_key_in_command_line_output() -> None:
    """Every outcome through the command line, all at once (independent processes)."""
    runs = [(name, expected, _start_cli(*args)) for name, args, expected in CLI_RUNS]
    for name, expected, process in runs:
        out, err = process.communicate(timeout=60)
        assert process.returncode == expected, f"{name}: {err}"
        assert "Traceback" not in err, name
        assert '"event": "upstream_call"' in err, name
        assert_no_key(out, err)


@pytest.mark.usefixtures("gateway_env")
def test_no_key_when_the_command_line_is_interrupted(gateway: FakeGateway) -> None:
    process = _start_cli("ask", "hi", "--model", "fake-slow")
    assert process.stdout is not None
    process.stdout.read(4)  # the first delta arrived: the stream is open
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)

    assert process.returncode == 130, err
    assert '"status": "client_disconnect"' in err
    assert_no_key(out, err)


# -- settings -------------------------------------------------------------------------------


@pytest.mark.usefixtures("gateway_env")
def test_the_settings_never_show_the_key() -> None:
    settings = load_settings()

    assert_no_key(
        repr(settings),
        str(settings),
        repr(settings.api_key),
        str(settings.api_key),
        settings.model_dump_json(),
        str(settings.model_dump()),
        json.dumps(settings.model_dump(mode="json")),
    )
    assert settings.api_key.get_secret_value() == SENTINEL_KEY


@pytest.mark.usefixtures("gateway_env")
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(f'"{SENTINEL_KEY}"', "quotes", id="quoted"),
        pytest.param(f"Bearer {SENTINEL_KEY}", "spaces", id="bearer-prefix"),
        pytest.param(f"{SENTINEL_KEY}\n", "spaces", id="trailing-newline"),
        pytest.param("${ALLTKN_API_KEY}", "placeholder", id="unexpanded-reference"),
        pytest.param("sk-...", "placeholder", id="docs-placeholder"),
    ],
)
def test_a_mis_pasted_key_stops_the_start_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, value)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert message.startswith(KEY_ENV_VAR)
    assert reason in message
    assert "\n" not in message
    assert_no_key(message, repr(caught.value))
