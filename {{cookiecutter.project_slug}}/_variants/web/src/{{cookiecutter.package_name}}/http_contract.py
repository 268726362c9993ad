"""The HTTP contract both web variants serve: request ids, statuses, answer and error bodies
(`errors.error_body`), SSE events. The request body is `request.ChatRequest`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from http import HTTPStatus
from importlib import resources
from typing import Any

from pydantic_core import to_json

from .chat import ChatResult, new_request_id
from .errors import Category, GatewayError, error_body
from .request import ChatRequest

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_OPTIONAL = [name for name in ChatRequest.model_fields if name not in ("messages", "prompt")]
BAD_BODY_HINT = (
    'Send JSON like {"prompt": "Hello"} or {"messages": [{"role": "user", "content": "Hello"}]}'
    f", optionally with {', '.join(_OPTIONAL)}."
)
ENDPOINTS_HINT = (
    "The API is POST /v1/chat and POST /v1/chat/stream; GET /healthz is the health check "
    "and GET / the demo page."
)
# Every other gateway failure is a 502.
_STATUSES = {Category.INVALID_REQUEST: 400, Category.RATE_LIMITED: 429, Category.TIMEOUT: 504}
# The demo page may only talk to this service; it holds no key and no setting.
_DEMO_PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)
DEMO_PAGE_HEADERS = {"Content-Security-Policy": _DEMO_PAGE_POLICY, "Cache-Control": "no-cache"}
# Proxies (nginx, many CDNs) buffer responses unless told not to; a buffered stream looks
# like a hang followed by the whole answer at once.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: keeps proxies from timing a silence out


def request_id_from(header_value: str | None) -> str:
    """Reuse a well-formed inbound X-Request-ID (so traces join up); otherwise make one."""
    if header_value and _VALID_REQUEST_ID.fullmatch(header_value):
        return header_value
    return new_request_id()


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line naming the first bad field and what it takes (the field's description)."""
    first = errors[0]
    loc = [str(part) for part in first["loc"] if part != "body"]
    message = str(first["msg"]).removeprefix("Value error, ")
    field = ChatRequest.model_fields.get(loc[0]) if len(loc) == 1 else None
    about = f" - {field.description}" if field and field.description else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{'.'.join(loc) or 'body'}: {message}{more}{about}"


def status_for(error: GatewayError) -> int:
    return error.status or _STATUSES.get(error.category, 502)


def gateway_error_body(error: GatewayError, request_id: str) -> dict[str, Any]:
    return error_body(error.category, error.message, error.hint, request_id)


def bad_body(message: str, request_id: str) -> dict[str, Any]:
    """The error body for a request body refused before any gateway call."""
    return error_body(Category.INVALID_REQUEST, message, BAD_BODY_HINT, request_id)


def no_route_body(status: int, method: str, path: str, request_id: str) -> dict[str, Any]:
    """The error body for an unknown path (404), a method not allowed (405) and the like."""
    path = path[:200]
    known = {404: f"there is no endpoint at {path}", 405: f"{method} is not allowed on {path}"}
    message = known.get(status) or HTTPStatus(status).phrase
    return error_body(Category.INVALID_REQUEST, message, ENDPOINTS_HINT, request_id)


def retry_headers(error: GatewayError) -> dict[str, str]:
    """Pass the gateway's Retry-After on, so clients back off as long as it asked."""
    return {"Retry-After": error.retry_after} if error.retry_after else {}


def result_body(result: ChatResult) -> dict[str, Any]:
    return {
        "content": result.content,
        "model": result.model,
        "usage": asdict(result.usage) if result.usage else None,
        "request_id": result.request_id,
    }


def demo_page() -> bytes:
    """The static demo page served at `GET /` (static/index.html, shipped in the package)."""
    return (resources.files(__package__) / "static" / "index.html").read_bytes()


# Server-sent events: one `data:` event per delta, then `event: done` or `event: error`.


def _event(data: Mapping[str, object], event: str | None = None) -> bytes:
    # pydantic-core's encoder: compact UTF-8 JSON, several times faster than `json.dumps`.
    payload = b"data: " + to_json(data) + b"\n\n"
    return f"event: {event}\n".encode() + payload if event else payload


def delta_event(text: str) -> bytes:
    return _event({"delta": text})


def done_event(result: ChatResult) -> bytes:
    body = result_body(result)
    del body["content"]  # the client has it, delta by delta
    return _event(body, "done")


def error_event(error: GatewayError, request_id: str) -> bytes:
    return _event(gateway_error_body(error, request_id), "error")
