"""JSON log lines with the API key, and any `sk-` token, masked: a logging helper on its own.

When to use: you want the call logs the seed checklist asks for (model, user, task, status,
error text, timings, request ids) without ever writing a key to a log file, a log service or a
support ticket. `configure_logging()` sends every record through one JSON handler on stderr
whose filter masks the live key and any `sk-` token to its last four characters, in the
message, its arguments and exception tracebacks; `log_call()` writes the one `upstream_call`
line per gateway call. Loggers that servers give handlers of their own (uvicorn's access log,
gunicorn's) need the same filter added to those handlers.

Run: `python redacting_logs.py` logs a sample call and a failure; the key does not appear.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

# Any `sk-` token, as broad as possible (gateway keys are `sk-` + 48 letters and digits).
SK_TOKEN = re.compile(r"sk-(?<![A-Za-z0-9_-]sk-)[A-Za-z0-9_-]{20,}")
CALL_LOGGER = logging.getLogger("alltkn.calls")
KEY_ENV_VAR = "ALLTKN_API_KEY"


def mask(value: str) -> str:
    """`****` plus the last four characters; values shorter than 8 show nothing at all."""
    return "****" + value[-4:] if len(value) >= 8 else "****"


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if secret]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, mask(secret))
        return SK_TOKEN.sub(lambda match: mask(match.group()), text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.redact(record.getMessage()), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
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
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
        }
        call = getattr(record, "call", None)
        entry.update(call if isinstance(call, dict) else {"message": record.getMessage()})
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # The SDK and its transport log every request at DEBUG; the call log covers them.
    for noisy in ("openai", "httpx2", "httpcore2", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_call(**fields: object) -> None:
    """One line per gateway call: model, user, task, stream, status, category, error,
    duration_ms, ttft_ms, request_id, upstream_request_id, prompt_tokens, completion_tokens."""
    level = logging.INFO if fields.get("status") == "ok" else logging.WARNING
    CALL_LOGGER.log(level, "upstream_call", extra={"call": {"event": "upstream_call", **fields}})


if __name__ == "__main__":
    key = os.environ.get(KEY_ENV_VAR, "")
    configure_logging("INFO", secrets=[key])
    log_call(model="gpt-4o-mini", status="ok", duration_ms=812.4)
    log_call(model="unknown-model", status="error", category="auth", error=f"bad key {key}")
    try:
        raise RuntimeError(f"request failed with Authorization: Bearer {key}")
    except RuntimeError:
        logging.getLogger("demo").exception("the gateway call failed")
