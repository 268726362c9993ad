"""Logging helper: one JSON line per record on stderr, with every key redacted.

Each upstream call is logged once, by the chat service, as an `upstream_call` event carrying
what a support ticket needs (model, user, task, status, category, the gateway's own error text,
timings, both request ids, token counts) and nothing that is secret.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .secret_scan import GATEWAY_KEY_RE, mask

CALL_LOGGER = logging.getLogger(f"{__package__}.calls")
CALL_EVENT = "upstream_call"


class RedactingFilter(logging.Filter):
    """Masks the live key and any `sk-` token in the message, its args and exception text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if secret]

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, mask(secret))
        return GATEWAY_KEY_RE.sub(lambda match: mask(match.group(0)), text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        call = getattr(record, "call", None)
        if isinstance(call, dict):
            record.call = {
                key: self.redact(value) if isinstance(value, str) else value
                for key, value in call.items()
            }
        return True


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
    """Send every log record through one redacting JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # The SDK and its transport log every request; the call log already covers them.
    transport_level = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for noisy in ("openai", "httpx2"):
        logging.getLogger(noisy).setLevel(transport_level)


def log_call(fields: Mapping[str, object]) -> None:
    """Emit the one `upstream_call` line for a finished call."""
    level = logging.INFO if fields.get("status") == "ok" else logging.WARNING
    CALL_LOGGER.log(level, CALL_EVENT, extra={"call": {"event": CALL_EVENT, **fields}})
