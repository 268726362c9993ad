"""The key never leaves: every path, run with the session's unique sentinel key, at DEBUG.

Success, every error category, streams, streams that break and callers that leave early, in
process (every log record, every exception text, stdout and stderr) and through the command
line; plus the redaction of each kind of log content and of the servers' own loggers, and the
settings' secret type.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from {{ cookiecutter.package_name }}.chat import ChatService
from {{ cookiecutter.package_name }}.client import create_client
from {{ cookiecutter.package_name }}.errors import Category, GatewayError
from {{ cookiecutter.package_name }}.logs import TRANSPORT_LOGGERS, configure_logging, log_call
from {{ cookiecutter.package_name }}.settings import API_KEY_ENV, ConfigError, load_settings

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway

HELLO = [{"role": "user", "content": "hello"}]
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
STREAM_BREAKS = [
    pytest.param("fake-stream-cut", id="cut"),
    pytest.param("fake-stream-error", id="error-event"),
    pytest.param("fake-stream-no-finish", id="no-finish"),
]


def assert_no_key(*texts: str) -> None:
    for text in texts:
        for piece in KEY_PIECES:
            assert piece not in text


class RecordSink(logging.Handler):
    """Keeps every record as a person or a log shipper could see it: formatted, and raw."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(self.format(record))
        self.seen.append(repr(vars(record)))


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


def _service(**overrides: Any) -> ChatService:
    settings = load_settings().model_copy(update=overrides)
    return ChatService(create_client(settings), settings.model)


def _error_texts(error: GatewayError) -> tuple[str, ...]:
    return (str(error), repr(error), error.hint, error.upstream_message, str(vars(error)))


def _outcome(model: str, *, stream: bool) -> tuple[Category | None, tuple[str, ...]]:
    """(category or None for success, every text the caller got back)."""
    service = _service(timeout_s=0.5)
    try:
        if stream:
            with service.open_stream(HELLO, model=model) as chat_stream:
                return None, ("".join(chat_stream), repr(chat_stream.result()))
        return None, (repr(service.complete(HELLO, model=model)),)
    except GatewayError as error:
        return error.category, _error_texts(error)


@pytest.mark.usefixtures("gateway_env")
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("model", "category"), OUTCOMES)
def test_no_key_in_any_outcome(
    leaks: Callable[..., None], model: str, category: Category | None, stream: bool
) -> None:
    got, texts = _outcome(model, stream=stream)

    assert got is category
    leaks(*texts)


@pytest.mark.usefixtures("gateway_env")
@pytest.mark.parametrize("model", STREAM_BREAKS)
def test_no_key_when_a_stream_breaks(leaks: Callable[..., None], model: str) -> None:
    with pytest.raises(GatewayError) as caught, _service().open_stream(HELLO, model=model) as s:
        list(s)

    assert caught.value.category is Category.STREAM_INTERRUPTED
    leaks(*_error_texts(caught.value))


@pytest.mark.usefixtures("gateway_env")
def test_no_key_when_the_caller_leaves_a_stream(
    leaks: Callable[..., None], gateway: FakeGateway
) -> None:
    with _service().open_stream(HELLO, model="fake-slow") as chat_stream:
        next(iter(chat_stream))

    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=3)
    leaks()


@pytest.mark.usefixtures("gateway_env")
@pytest.mark.parametrize(
    ("overrides", "category"),
    [
        pytest.param(
            {"base_url": "http://127.0.0.1:9/api/v1"}, Category.CONNECTION, id="connection"
        ),
        pytest.param({"api_key": SecretStr("sk-" + "Q7" * 24)}, Category.AUTH, id="wrong-key"),
    ],
)
def test_no_key_when_the_gateway_cannot_be_used(
    leaks: Callable[..., None], gateway: FakeGateway, overrides: dict[str, Any], category: Category
) -> None:
    with pytest.raises(GatewayError) as caught:
        _service(**overrides).complete(HELLO)

    assert caught.value.category is category
    leaks(*_error_texts(caught.value))


@pytest.mark.usefixtures("gateway_env")
def test_no_key_with_a_wrong_base_path(leaks: Callable[..., None], gateway: FakeGateway) -> None:
    wrong = gateway.base_url.replace("/api/v1", "/v2")

    with pytest.raises(GatewayError) as caught:
        _service(base_url=wrong).complete(HELLO)

    assert caught.value.category is Category.BAD_BASE_URL
    leaks(*_error_texts(caught.value))


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


def _cli_env() -> dict[str, str]:
    return {**os.environ, "LOG_LEVEL": "DEBUG", "ALLTKN_TIMEOUT_S": "0.5"}


def _start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_cli_env(),
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


# -- each kind of log content, on every logger that matters ---------------------------------


LOGGERS = [
    "{{ cookiecutter.package_name }}.chat",
    "uvicorn.error",
    "uvicorn.access",
    "gunicorn.error",
    "openai._base_client",
    "httpx2",
    "httpcore2.http11",
    "aiohttp.client",
]


def _log_everything(logger: logging.Logger) -> None:
    logger.warning(f"key in the message {SENTINEL_KEY}")
    logger.warning("key in an argument %s", SENTINEL_KEY)
    logger.warning("key in a mapping %(key)s", {"key": SENTINEL_KEY})
    logger.warning("key in an object %r", {"headers": {"Authorization": f"Bearer {SENTINEL_KEY}"}})
    logger.warning("key in the stack info %s", SENTINEL_KEY[-6:], stack_info=True)
    try:
        raise RuntimeError(f"failed with {SENTINEL_KEY}")
    except RuntimeError:
        logger.exception("key in the exception")


@pytest.mark.parametrize("name", LOGGERS)
def test_every_kind_of_log_content_is_redacted(
    leaks: Callable[..., None], sink: RecordSink, name: str
) -> None:
    _log_everything(logging.getLogger(name))

    # Only the records logged above: an earlier test's abandoned response may be finalized,
    # and logged by its transport (one of these loggers), at any moment.
    logged_here = re.compile(rf"{re.escape(name)} (WARNING|ERROR) key in ")
    assert len([line for line in sink.seen if logged_here.match(line)]) == 6
    assert f"****{SENTINEL_KEY[-4:]}" in "\n".join(sink.seen)
    leaks()


class ServerFormatter(logging.Formatter):
    """Like uvicorn's access formatter: it needs the record's arguments as a tuple."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        client, method, path = record.args  # type: ignore[misc]
        return f"{client} {method} {path}"


@pytest.mark.parametrize("name", ["uvicorn.access", "gunicorn.error"])
def test_handlers_a_server_installed_itself_get_redacted_records(
    name: str, capfd: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ServerFormatter())
    saved = (list(logger.handlers), logger.propagate, logger.level)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    root = logging.getLogger()
    root_handlers = list(root.handlers)
    try:
        configure_logging("INFO", secrets=[SENTINEL_KEY])
        logger.info('%s - "%s %s"', "127.0.0.1:5000", "POST", f"/v1/chat?key={SENTINEL_KEY}")
        logger.info('%s - "%s %s"', "127.0.0.1:5000", "GET", "/healthz")
    finally:
        logger.handlers[:] = saved[0]
        logger.propagate = saved[1]
        logger.setLevel(saved[2])
        root.handlers[:] = root_handlers

    err = capfd.readouterr().err
    assert err.splitlines() == [
        f"127.0.0.1:5000 POST /v1/chat?key=****{SENTINEL_KEY[-4:]}",
        "127.0.0.1:5000 GET /healthz",
    ]
    assert handler.filters  # the filter reached the server's own handler too


def test_call_log_fields_are_redacted(sink: RecordSink, capfd: pytest.CaptureFixture[str]) -> None:
    log_call({"status": "error", "error": f"gateway said {SENTINEL_KEY}", "user": SENTINEL_KEY})

    line = json.loads(capfd.readouterr().err.splitlines()[-1])
    assert line["error"] == f"gateway said ****{SENTINEL_KEY[-4:]}"
    assert_no_key(json.dumps(line), *sink.seen)


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
    monkeypatch.setenv(API_KEY_ENV, value)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert message.startswith(API_KEY_ENV)
    assert reason in message
    assert "\n" not in message
    assert_no_key(message, repr(caught.value))
