"""One log format: a JSON line per record on stderr (the servers' own too), secrets redacted.
`logging_config(level)` is THE `dictConfig` (`configure_logging`, `serve`, gunicorn.conf.py).
A line: `ts`, `level`, `logger`, `request_id` when known, then a call's fields, an access line's
(`event: access`) or `message`; `exc`, `stack`. Records are redacted as they are made."""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any

from .redaction import redact

CALL_LOGGER = logging.getLogger(f"{__package__}.calls")
CALL_EVENT = "upstream_call"
# The request being served (set by the web layer), for lines without its id: uvicorn's access.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# Loggers the servers configure themselves: sent to the one handler on the root logger.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error", "gunicorn.access")
TRANSPORT_LOGGERS = ("openai", "httpx2", "httpcore2", "aiohttp")  # the call log covers them

# What JSON leaves as it is but breaks or disguises a line in a terminal or a log viewer: C1
# controls (U+0085 is a newline to some), the line and paragraph separators, bidi controls
# (U+202E writes the rest backwards), invisible format characters.
_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")

_secrets: tuple[str, ...] = ()  # exact values to mask (the live key)
_base_factory: Callable[..., logging.LogRecord] | None = None


def _clean(value: object) -> object:
    """A string redacted; another object only if its text shows a secret (`%d` keeps working)."""
    if value is None or isinstance(value, (int, float)):
        return value
    clean = redact(shown := str(value), _secrets)
    return clean if isinstance(value, str) or clean != shown else value


def redact_record(record: logging.LogRecord) -> None:
    """Redact `record` in place, once per set of secrets. Arguments stay apart from the message
    where possible: the access-line fields are read from them."""
    if record.__dict__.get("_redacted") == len(_secrets):
        return
    record._redacted = len(_secrets)  # secrets are only ever added
    record.msg = _clean(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_clean(arg) for arg in record.args)
    elif isinstance(args := record.args, Mapping) and _clean(seen := (*args.values(),)) is not seen:
        record.args = {key: _clean(arg) for key, arg in args.items()}  # gunicorn's: 50 and more
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: keep what was logged, readable
        message = f"{record.msg} {record.args!r}"
        record.msg, record.args = message, None
    if (clean := redact(message, _secrets)) != message:  # a secret split across arguments
        record.msg, record.args = clean, None
    if record.exc_info:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
    record.exc_text = redact(record.exc_text, _secrets) if record.exc_text else None
    record.stack_info = redact(record.stack_info, _secrets) if record.stack_info else None


def _access_fields(record: logging.LogRecord) -> dict[str, Any] | None:
    """The fields of an access line, from the arguments uvicorn and gunicorn log it with."""
    args = record.args
    if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
        client, method, path, _, status = args
        fields = {"method": method, "path": path, "status": status, "client": client}
    elif record.name == "gunicorn.access" and isinstance(args, Mapping):
        status, query, micros = str(args.get("s")), args.get("q"), args.get("D")
        path = f"{args.get('U')}?{query}" if query else args.get("U")
        fields = {"method": args.get("m"), "path": path}
        fields["status"] = int(status) if status.isdigit() else status
        fields["duration_ms"] = round(micros / 1000, 1) if isinstance(micros, int) else None
        fields |= {"client": args.get("h"), "request_id": args.get("{x-request-id}o")}  # echoed
    else:
        return None
    return {"event": "access", **{key: v for key, v in fields.items() if v is not None}}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        redact_record(record)
        call = getattr(record, "call", None)
        fields = dict(call) if isinstance(call, dict) else _access_fields(record)
        fields = fields or {"message": record.getMessage()}
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {"ts": f"{ts}.{int(record.msecs):03d}Z", "level": record.levelname}
        entry["logger"] = record.name
        if request_id := fields.pop("request_id", None) or REQUEST_ID.get():
            entry["request_id"] = request_id
        extra = {"exc": record.exc_text, "stack": record.stack_info}
        entry |= fields | {key: value for key, value in extra.items() if value}
        return escape_unsafe(json.dumps(entry, ensure_ascii=False, default=str))


def escape_unsafe(line: str) -> str:
    """A JSON `line` with the `_UNSAFE` characters as \\u escapes: the same JSON to a parser,
    one plain line to a person."""
    return _UNSAFE.sub(lambda found: f"\\u{ord(found.group()):04x}", line)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record arrives (tests swap it)."""

    stream = property(lambda self: sys.stderr, lambda self, _: None)


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """THE `dictConfig`: one JSON handler on stderr at the root, the servers' loggers feeding it."""
    transport = "DEBUG" if level == "DEBUG" else "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"()": StderrHandler, "formatter": "json"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            **{name: {"level": "NOTSET", "propagate": True} for name in SERVER_LOGGERS},
            **{name: {"level": transport} for name in TRANSPORT_LOGGERS},
        },
    }


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = (_base_factory or logging.LogRecord)(*args, **kwargs)
    redact_record(record)
    return record


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Apply `logging_config(level)`, and redact every record of the process from now on,
    masking `secrets` (exact values) too; later calls add to them."""
    global _secrets, _base_factory
    _secrets = tuple(dict.fromkeys((*_secrets, *(secret for secret in secrets if secret))))
    if _base_factory is None:
        _base_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_redacting_factory)
    logging.config.dictConfig(logging_config(level))


def log_call(fields: Mapping[str, object]) -> None:
    """Emit the one `upstream_call` line for a finished call."""
    level = logging.INFO if fields.get("status") == "ok" else logging.WARNING
    call = {key: _clean(value) for key, value in {"event": CALL_EVENT, **fields}.items()}
    CALL_LOGGER.log(level, CALL_EVENT, extra={"call": call})
