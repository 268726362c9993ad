"""Logging helper: one JSON line per record on stderr, with every secret redacted.

Each upstream call is logged once, by the chat service, as an `upstream_call` event carrying
what a support ticket needs (model, user, task, status, category, the gateway's own error text,
timings, both request ids, token counts) and nothing that is secret.

Redaction: once `configure_logging` has run, the live key and everything the secret scanner
recognises (any `sk-` token, bearer tokens, JWTs, GitHub and cloud tokens, ...) are masked to
their last four characters in the message, its arguments, exception text, tracebacks, stack
info and call-log fields of every record the process creates: the project's loggers and those
of uvicorn, gunicorn, openai, httpx2 and anything else. It happens when a record is created (a
log-record factory), so the handlers uvicorn and gunicorn install on their own loggers, and any
handler added later, only ever see redacted records; the same filter is also attached to the
handlers those servers already have (`redact_server_handlers`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .redaction import redact

CALL_LOGGER = logging.getLogger(f"{__package__}.calls")
CALL_EVENT = "upstream_call"
# Loggers that servers give handlers of their own (so records may never reach the root's).
SERVER_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "gunicorn",
    "gunicorn.error",
    "gunicorn.access",
)
# The SDK and its transport log every request; the call log already covers them.
TRANSPORT_LOGGERS = ("openai", "httpx2", "httpcore2", "aiohttp")
_PLAIN = (int, float, bool, type(None))

RecordFactory = Callable[..., logging.LogRecord]


class Redactor:
    """Masks secrets in text and in log records; `secrets` are exact values (the live key)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = tuple(secret for secret in secrets if secret)

    def text(self, text: str) -> str:
        return redact(text, self.secrets)

    def value(self, value: object) -> object:
        """A string redacted; any other object replaced by its redacted text if that shows a
        secret, else left as it is (so `%d` and friends keep working)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, _PLAIN):
            return value
        shown = str(value)
        clean = self.text(shown)
        return value if clean == shown else clean

    def record(self, record: logging.LogRecord) -> None:
        """Redact `record` in place (idempotent)."""
        self._message(record)
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.text(record.stack_info)
        call = getattr(record, "call", None)
        if isinstance(call, dict):
            record.call = {key: self.value(value) for key, value in call.items()}

    def _message(self, record: logging.LogRecord) -> None:
        """Keep `msg` and `args` apart when possible (uvicorn's access formatter needs them)."""
        try:
            original = record.getMessage()
        except Exception:  # a bad format string: keep it readable, and clean
            record.msg, record.args = self.text(f"{record.msg} {record.args!r}"), None
            return
        clean = self.text(original)
        if clean == original:
            return
        if isinstance(record.args, tuple):
            record.args = tuple(self.value(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: self.value(arg) for key, arg in record.args.items()}
        record.msg = self.value(record.msg)
        if not self._is_clean(record):
            record.msg, record.args = clean, None

    def _is_clean(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return False
        return self.text(message) == message


class RedactingFilter(logging.Filter):
    """A handler filter applying a `Redactor` (records are redacted at creation as well)."""

    def __init__(self, secrets: Iterable[str] = (), redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor if redactor is not None else Redactor(secrets)

    def redact(self, text: str) -> str:
        return self.redactor.text(text)

    def filter(self, record: logging.LogRecord) -> bool:
        self.redactor.record(record)
        return True


_ACTIVE = Redactor()
_FILTER = RedactingFilter(redactor=_ACTIVE)
_base_factory: RecordFactory | None = None


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = (_base_factory or logging.LogRecord)(*args, **kwargs)
    _ACTIVE.record(record)
    return record


def install_record_redaction(secrets: Iterable[str] = ()) -> None:
    """Redact every log record of the process as it is created (installed once; later calls
    only add secrets)."""
    global _base_factory
    _ACTIVE.secrets = tuple(dict.fromkeys((*_ACTIVE.secrets, *(s for s in secrets if s))))
    if _base_factory is None:
        _base_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_redacting_factory)


def redact_server_handlers() -> None:
    """Attach the redacting filter to every handler uvicorn or gunicorn installed on its own
    loggers. `configure_logging` calls it; call it again after a server replaces handlers."""
    for name in SERVER_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record arrives (servers and tests swap it),
    and reports its own failures in one redacted line instead of a raw traceback."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr

    def handleError(self, record: logging.LogRecord) -> None:
        if logging.raiseExceptions:
            failure = sys.exc_info()[1]
            detail = _ACTIVE.text(f"{type(failure).__name__}: {failure}")
            sys.stderr.write(f"--- logging error in {record.name}: {detail}\n")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        call = getattr(record, "call", None)
        if isinstance(call, dict):
            entry.update(call)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Send every log record through one redacting JSON handler on stderr, and redact the
    records of every logger, the servers' included (see the module docstring)."""
    install_record_redaction(secrets)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_FILTER)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    redact_server_handlers()
    transport_level = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for noisy in TRANSPORT_LOGGERS:
        logging.getLogger(noisy).setLevel(transport_level)


def log_call(fields: Mapping[str, object]) -> None:
    """Emit the one `upstream_call` line for a finished call (its fields already redacted)."""
    level = logging.INFO if fields.get("status") == "ok" else logging.WARNING
    call = {key: _ACTIVE.value(value) for key, value in {"event": CALL_EVENT, **fields}.items()}
    CALL_LOGGER.log(level, CALL_EVENT, extra={"call": call})
