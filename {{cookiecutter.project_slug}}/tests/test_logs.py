"""The log format: one JSON line per record on stderr, the servers' own lines included, and no
secret in any record, whichever logger made it."""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import re
from collections.abc import Iterator
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.logs import (
    REQUEST_ID,
    SERVER_LOGGERS,
    TRANSPORT_LOGGERS,
    configure_logging,
    log_call,
    logging_config,
)

from .conftest import SENTINEL_KEY

OTHER_KEY = "sk-" + "Zq9" * 16  # not the live key: masked for its shape
MASKED = f"****{SENTINEL_KEY[-4:]}"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
LOGGERS = [
    "{{ cookiecutter.package_name }}.chat",
    *SERVER_LOGGERS,
    "openai._base_client",
    "httpx2",
    "httpcore2.http11",
    "aiohttp.client",
]


class RecordSink(logging.Handler):
    """A handler added later (a log shipper, say): keeps each record formatted, and raw."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(self.format(record))
        self.seen.append(repr(vars(record)))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    names = ["", *SERVER_LOGGERS, *TRANSPORT_LOGGERS]
    saved = {name: logging.getLogger(name) for name in names}
    state = {
        name: (list(logger.handlers), logger.level, logger.propagate)
        for name, logger in saved.items()
    }
    yield
    for name, (handlers, level, propagate) in state.items():
        saved[name].handlers[:] = handlers
        saved[name].setLevel(level)
        saved[name].propagate = propagate


def json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


@pytest.mark.parametrize(("status", "level"), [("ok", "INFO"), ("error", "WARNING")])
def test_a_call_is_one_json_line_with_its_fields(
    capsys: pytest.CaptureFixture[str], status: str, level: str
) -> None:
    configure_logging("INFO", secrets=[SENTINEL_KEY])
    log_call({"model": "m", "status": status, "duration_ms": 12.5, "request_id": "r-1"})

    (line,) = json_lines(capsys)
    assert TIMESTAMP.fullmatch(line["ts"])
    assert (line["level"], line["logger"]) == (level, "{{ cookiecutter.package_name }}.calls")
    assert (line["event"], line["request_id"], line["model"]) == ("upstream_call", "r-1", "m")
    assert (line["status"], line["duration_ms"]) == (status, 12.5)


def test_line_and_format_separators_in_a_field_are_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """U+2028, U+0085 and friends end a line in some viewers; U+202E turns text around: each is
    a \\u escape in the line, and the same text once the JSON is read."""
    sneaky = "a\u2028b\u2029c\u0085d\u202ee\u2066f\u200bg\x7fh"
    configure_logging("INFO")
    log_call({"status": "ok", "user": sneaky, "task": "t\u202a"})

    raw = capsys.readouterr().err
    assert raw.count("\n") == 1
    for char in "\u2028\u2029\u0085\u202e\u2066\u200b\x7f\u202a":
        assert char not in raw
    assert "\\u202e" in raw
    line = json.loads(raw)
    assert (line["user"], line["task"]) == (sneaky, "t\u202a")


def test_other_records_carry_their_message_traceback_and_stack(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO")
    logger = logging.getLogger("{{ cookiecutter.package_name }}.test")
    logger.info("%s of %d", "one", 2, stack_info=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    logger.info("%d apples", "three")  # a bad format string still gives one readable line

    first, second, third = json_lines(capsys)
    assert first["message"] == "one of 2"
    assert "test_other_records_carry" in first["stack"]
    assert second["message"] == "failed"
    assert "RuntimeError: boom" in second["exc"]
    assert third["level"] == "INFO"
    assert "apples" in third["message"]
    assert "three" in third["message"]


@pytest.mark.parametrize("name", LOGGERS)
def test_every_kind_of_log_content_is_redacted_on_every_logger(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    configure_logging("DEBUG", secrets=[SENTINEL_KEY])
    logger, sink = logging.getLogger(name), RecordSink()
    monkeypatch.setattr(logger, "handlers", [sink])  # it sees records before the JSON handler

    logger.warning(f"key in the message {SENTINEL_KEY}")
    logger.warning("key in an argument %s", SENTINEL_KEY)
    logger.warning("key in a mapping %(key)s", {"key": SENTINEL_KEY})
    logger.warning("key in an object %r", {"headers": {"Authorization": f"Bearer {SENTINEL_KEY}"}})
    logger.warning("a token of a known shape %s", OTHER_KEY)
    logger.warning("key in the stack info %s", SENTINEL_KEY[-6:], stack_info=True)
    try:
        raise RuntimeError(f"failed with {SENTINEL_KEY}")
    except RuntimeError:
        logger.exception("key in the exception")
    log_call({"status": "error", "error": f"gateway said {SENTINEL_KEY}", "user": OTHER_KEY})

    lines = json_lines(capsys)
    written = json.dumps(lines) + "\n".join(sink.seen)
    assert len(lines) == 8
    assert SENTINEL_KEY not in written
    assert OTHER_KEY not in written
    assert lines[0]["message"] == f"key in the message {MASKED}"  # still traceable
    assert MASKED in lines[6]["exc"]
    assert lines[7]["error"] == f"gateway said {MASKED}"


@pytest.mark.parametrize("name", SERVER_LOGGERS)
def test_a_servers_own_handler_gives_way_to_the_json_line(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """uvicorn and gunicorn give their loggers handlers and formats of their own."""
    logger = logging.getLogger(name)
    own = logging.StreamHandler()
    own.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
    logger.handlers[:] = [own]
    logger.propagate = False
    config = logging_config("INFO")
    logging.config.dictConfig(config)
    logging.config.dictConfig(config)  # as gunicorn does on reload: the same dict again

    logger.info("Started server process [%d]", 42)

    (line,) = json_lines(capsys)
    assert (line["logger"], line["level"]) == (name, "INFO")
    assert line["message"] == "Started server process [42]"


# How each server logs a request: uvicorn's access record arguments are (client, method, path
# with query, HTTP version, status); gunicorn's are its "atoms" (response headers as "{name}o").
GUNICORN_ATOMS = {
    "h": "10.0.0.7",
    "m": "POST",
    "U": "/v1/chat",
    "q": f"key={SENTINEL_KEY}",
    "s": "502",
    "D": 12_345,
    "r": "POST /v1/chat HTTP/1.1",
    "{x-request-id}o": "req-7",
    "{authorization}i": f"Bearer {SENTINEL_KEY}",
}
ACCESS_RECORDS = [
    pytest.param(
        "uvicorn.access",
        '%s - "%s %s HTTP/%s" %d',
        ("10.0.0.7:5000", "POST", f"/v1/chat?key={SENTINEL_KEY}", "1.1", 502),
        {"client": "10.0.0.7:5000"},
        id="uvicorn",
    ),
    pytest.param(
        "gunicorn.access",
        '%(h)s "%(r)s" %(s)s',
        (GUNICORN_ATOMS,),
        {"client": "10.0.0.7", "duration_ms": 12.3},
        id="gunicorn",
    ),
]


@pytest.mark.parametrize(("name", "message", "args", "expected"), ACCESS_RECORDS)
def test_access_lines_are_json_with_the_requests_fields(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    message: str,
    args: tuple[Any, ...],
    expected: dict[str, Any],
) -> None:
    configure_logging("INFO", secrets=[SENTINEL_KEY])
    sink = RecordSink()
    monkeypatch.setattr(logging.getLogger(name), "handlers", [sink])
    context = contextvars.copy_context()
    if name.startswith("uvicorn"):  # the web layer sets it; gunicorn's access record has it
        context.run(REQUEST_ID.set, "req-7")
    context.run(logging.getLogger(name).info, message, *args)

    (line,) = json_lines(capsys)
    assert line == {
        "ts": line["ts"],
        "level": "INFO",
        "logger": name,
        "request_id": "req-7",
        "event": "access",
        "method": "POST",
        "path": f"/v1/chat?key={MASKED}",
        "status": 502,
        **expected,
    }
    assert SENTINEL_KEY not in "\n".join(sink.seen)


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_the_sdk_and_its_transport_are_quiet_unless_debugging(
    capsys: pytest.CaptureFixture[str], level: str, shown: bool
) -> None:
    configure_logging(level)
    for name in TRANSPORT_LOGGERS:
        logging.getLogger(f"{name}.detail").info("sending request")
        logging.getLogger(f"{name}.detail").warning("connection reset")

    lines = json_lines(capsys)
    assert [line["message"] for line in lines].count("connection reset") == 4
    assert len(lines) == (8 if shown else 4)
