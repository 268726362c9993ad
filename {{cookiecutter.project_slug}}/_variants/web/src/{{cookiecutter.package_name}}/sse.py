"""Server-sent events for `/v1/chat/stream`: the one place the wire format is written."""

from __future__ import annotations

import json
from collections.abc import Mapping

from .chat import ChatResult
from .errors import GatewayError
from .http_contract import error_body, usage_body

# Proxies (nginx, many CDNs) buffer responses unless told not to; a buffered stream looks
# like a hang followed by the whole answer at once.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"


def _encode(data: Mapping[str, object], event: str | None = None) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


def delta_event(text: str) -> bytes:
    return _encode({"delta": text})


def done_event(result: ChatResult) -> bytes:
    return _encode(
        {"model": result.model, "usage": usage_body(result.usage), "request_id": result.request_id},
        "done",
    )


def error_event(error: GatewayError, request_id: str) -> bytes:
    return _encode(error_body(error, request_id), "error")
