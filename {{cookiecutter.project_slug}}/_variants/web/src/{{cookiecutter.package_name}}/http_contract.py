"""The HTTP contract of both web variants: request ids, statuses, answer and error bodies
(`errors.error_body`), what a bad request body gets (`BadBody`), SSE (a `data:` event per
delta, then `event: done` or `event: error`). Every request the service refuses before any
upstream call is counted here (`refused`)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from http import HTTPStatus
from importlib import resources
from typing import Any

from pydantic_core import to_json

from . import metrics
from .chat import ChatResult, new_request_id
from .errors import Category, GatewayError, error_body
from .request import ChatRequest

Reply = tuple[dict[str, Any], int, dict[str, str]]  # body, status, headers
REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_OPTIONAL = [name for name in ChatRequest.model_fields if name not in ("messages", "prompt")]
BAD_BODY_HINT = (
    'Send JSON like {"prompt": "Hello"} or {"messages": [{"role": "user", "content": "Hello"}]}'
    f", optionally with {', '.join(_OPTIONAL)}."
)
TOO_LARGE_HINT = "Send a shorter prompt or fewer messages."
# The deepest a body's JSON may nest; the schema needs 3 levels: {"messages": [{...}]}.
MAX_JSON_DEPTH = 32
ENDPOINTS_HINT = (
{%- if cookiecutter.worker == "celery" %}
    "The API is POST /v1/chat, POST /v1/chat/stream, POST /v1/jobs and GET /v1/jobs/{id}; "
    "GET /healthz is the health check, "
{%- else %}
    "The API is POST /v1/chat and POST /v1/chat/stream; GET /healthz is the health check, "
{%- endif %}
    "GET /metrics the Prometheus metrics and GET / the demo page (with ALLTKN_DEV_UI=on)."
)
_STATUSES = {
    Category.INVALID_REQUEST: 400,
    Category.RATE_LIMITED: 429,
    Category.TIMEOUT: 504,
    Category.MODEL_NOT_ALLOWED: 403,
    Category.SERVER_BUSY: 503,
    Category.HOST_NOT_ALLOWED: 400,
{%- if cookiecutter.caller_auth == "keys" %}
    Category.CALLER_AUTH: 401,
    Category.CALLER_RATE_LIMITED: 429,
    Category.CALLER_BUDGET_EXHAUSTED: 429,
    Category.LIMITER_UNAVAILABLE: 503,
{%- endif %}
{%- if cookiecutter.worker == "celery" %}
    Category.JOB_NOT_FOUND: 404,
    Category.QUEUE_UNAVAILABLE: 503,
{%- endif %}
}
DEMO_PAGE = (resources.files(__package__) / "static" / "index.html").read_bytes()


def _inline_hash(tag: str) -> str:
    """The CSP source allowing the page's one inline `<tag>` element, by its hash."""
    found = re.search(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), DEMO_PAGE, re.DOTALL)
    digest = hashlib.sha256(found.group(1) if found else b"").digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# The demo page may only run its own script and talk to this service, in no frame; it holds
# no key and no setting.
DEMO_PAGE_HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; script-src {_inline_hash('script')}; "
    f"style-src {_inline_hash('style')}; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}
# On every response: a browser takes each for the type it says, never sniffs another.
NOSNIFF = ("X-Content-Type-Options", "nosniff")
# Proxies (nginx, CDNs) buffer unless told not to: a buffered stream looks like a hang.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"
# What takes a slot (`Slots`): a chat request, however it ends.
CHAT_PATHS = frozenset({"/v1/chat", "/v1/chat/stream"})
# Health checks and scrapes get no span (telemetry.py): every few seconds, they drown the rest;
# they answer any Host (`check_host`): kubelets and Prometheus come by pod IP.
UNTRACED_PATHS = frozenset({"/healthz", "/metrics"})
KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: keeps proxies from timing a silence out


def request_id_from(header_value: str | None) -> str:
    """Reuse a well-formed inbound X-Request-ID (so traces join up); otherwise make one."""
    if header_value and _VALID_REQUEST_ID.fullmatch(header_value):
        return header_value
    return new_request_id()


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line naming the first bad field and what it takes (the field's description)."""
    loc = [str(part) for part in errors[0]["loc"] if part != "body"]
    message = str(errors[0]["msg"]).removeprefix("Value error, ")
    field = ChatRequest.model_fields.get(loc[0]) if len(loc) == 1 else None
    about = f" - {field.description}" if field and field.description else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{'.'.join(loc) or 'body'}: {message}{more}{about}"


class BadBody(GatewayError):
    """A request body refused before any upstream call, `detail` naming what is wrong: 415
    (not declared JSON), 413 (over ALLTKN_MAX_BODY_BYTES), 400 (not JSON this service reads),
    422 (JSON that is not an object, or breaks the schema)."""

    def __init__(self, status: int, detail: str, hint: str = BAD_BODY_HINT) -> None:
        super().__init__(Category.INVALID_REQUEST, detail=detail, status=status)
        self.advice = hint

    @property
    def hint(self) -> str:
        return self.advice


def check_body_headers(content_type: str | None, content_length: int | None, limit: int) -> None:
    """415 for a body not declared JSON (`application/json` or `application/*+json`, any
    parameters), 413 for one declared over `limit` bytes: decided before the body is read."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    json_subtype = subtype == "json" or (subtype.endswith("+json") and "/" not in subtype)
    if kind != "application" or not json_subtype:
        sent = f"Content-Type {media_type[:100]}" if media_type else "no Content-Type"
        raise BadBody(415, f"the request has {sent}; send Content-Type: application/json")
    if content_length is not None and content_length > limit:
        raise too_large(limit)


def check_host(host_header: str | None, path: str, allowed: frozenset[str] | None) -> None:
    """400 `host_not_allowed` for a Host outside ALLTKN_ALLOWED_HOSTS (`allowed`; None: any),
    but on /healthz and /metrics: a page on another site that resolves its own name to this
    service (DNS rebinding) cannot spend the key."""
    if allowed is None or path in UNTRACED_PATHS:
        return
    host = (host_header or "").strip().lower()
    name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name not in allowed:
        why = f"the Host {host[:100] or '(none)'} is not in ALLTKN_ALLOWED_HOSTS"
        raise GatewayError(Category.HOST_NOT_ALLOWED, detail=why)


class Slots:
    """The chat requests one worker serves at once (ALLTKN_MAX_STREAMS): past it, 503
    `server_busy` with Retry-After, so that `/healthz` and scrapes always find capacity."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()  # Flask serves from threads

    def take(self) -> None:
        """Take a slot, or raise the 503; `give_back` once the answer is out, however."""
        with self._lock:
            if self.used >= self.limit:
                why = f"this worker is serving {self.limit} chat requests (ALLTKN_MAX_STREAMS)"
                raise GatewayError(Category.SERVER_BUSY, detail=why, retry_after="1")
            self.used += 1

    def give_back(self) -> None:
        with self._lock:
            self.used -= 1


def too_slow(seconds: float, what: str = "body") -> BadBody:
    """408 for a client that did not send the request's `what` within ALLTKN_CLIENT_TIMEOUT_S."""
    message = f"the request's {what} did not arrive within {seconds:g} s (ALLTKN_CLIENT_TIMEOUT_S)"
    return BadBody(408, message, "Send the whole request at once.")


def too_large(limit: int) -> BadBody:
    message = f"the body is over {limit} bytes, the server's limit (ALLTKN_MAX_BODY_BYTES)"
    return BadBody(413, message, TOO_LARGE_HINT)
{%- if cookiecutter.framework == "flask" %}


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object `raw` holds, or 400 / 422 (`not_json`, `json_object`)."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise not_json(raw, error) from None
    return json_object(raw, payload)
{%- endif %}


def not_json(raw: bytes, error: ValueError | RecursionError) -> BadBody:
    """400 naming why `raw` did not parse (`error`: what `json.loads` raised)."""
    if not raw.strip():
        return BadBody(400, "the body is empty")
    if isinstance(error, RecursionError):
        return BadBody(400, f"the body's JSON nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(error, json.JSONDecodeError):
        where = f"{error.msg}: line {error.lineno} column {error.colno}"
        return BadBody(400, f"the body is not valid JSON ({where})")
    return BadBody(400, "the body is not UTF-8 text")  # a UnicodeDecodeError


def json_object(raw: bytes, payload: object) -> dict[str, Any]:
    """`payload` (parsed from `raw`), or 400 when it nests deeper than MAX_JSON_DEPTH levels,
    422 when it is not an object."""
    # Fewer brackets than levels cannot nest too deep: most bodies skip the walk.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        level = [payload] if isinstance(payload, (dict, list)) else []
        for _ in range(MAX_JSON_DEPTH):  # one level down per pass
            level = [
                child
                for node in level
                for child in (node.values() if isinstance(node, dict) else node)
                if isinstance(child, (dict, list))
            ]
        if level:
            raise BadBody(400, f"the body's JSON nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(payload, dict):
        kinds = {type(None): "null", bool: "true or false", str: "a string", list: "an array"}
        raise BadBody(422, f"the body is {kinds.get(type(payload), 'a number')}, not an object")
    return payload


{% if cookiecutter.caller_auth == "keys" -%}
def refused(category: Category, caller: str | None) -> None:
    """Count a request refused before any upstream call (`caller`: once its key was checked)."""
    metrics.add(metrics.REFUSED, error_type=category.value, alltkn_caller=caller or "")


def gateway_error(error: GatewayError, request_id: str, caller: str | None = None) -> Reply:
    """A failed call or a refusal (counted): 502 unless its category or `status` says otherwise;
    Retry-After passed on."""
    if not error.from_gateway:
        refused(error.category, caller)
{%- else -%}
def refused(category: Category) -> None:
    """Count a request refused before any upstream call."""
    metrics.add(metrics.REFUSED, error_type=category.value)


def gateway_error(error: GatewayError, request_id: str) -> Reply:
    """A failed call or a refusal (counted): 502 unless its category or `status` says otherwise;
    Retry-After passed on."""
    if not error.from_gateway:
        refused(error.category)
{%- endif %}
    body = error_body(error.category, error.message, error.hint, request_id)
    headers = {"Retry-After": error.retry_after} if error.retry_after else {}
    headers.update(error.headers)
    return body, error.status or _STATUSES.get(error.category, 502), headers


def metrics_denied(request_id: str) -> Reply:
    """401 for a scrape without the metrics token (no chat request: not counted as refused)."""
    denied = GatewayError(Category.METRICS_AUTH)
    body = error_body(denied.category, denied.message, denied.hint, request_id)
    return body, 401, {"WWW-Authenticate": "Bearer"}


def no_route_body(status: int, method: str, path: str, request_id: str) -> dict[str, Any]:
    missing = f"there is no endpoint at {path}"
    if path == "/metrics":  # not served: the switch is off
        missing += " (ALLTKN_METRICS=off; set it to on to serve the Prometheus metrics)"
    known = {404: missing, 405: f"{method} is not allowed on {path}"}
    message = known.get(status, HTTPStatus(status).phrase)[:300]
    return error_body(Category.INVALID_REQUEST, message, ENDPOINTS_HINT, request_id)


def result_body(result: ChatResult) -> dict[str, Any]:
    return {
        "content": result.content,
        "model": result.model,
        "usage": asdict(result.usage) if result.usage else None,
        "request_id": result.request_id,
    }


def delta_event(text: str) -> bytes:
    # pydantic-core's encoder: compact UTF-8 JSON, several times faster than `json.dumps`.
    return b"data: " + to_json({"delta": text}) + b"\n\n"


def done_event(result: ChatResult) -> bytes:
    body = result_body(result)
    del body["content"]  # the client has it, delta by delta
    return b"event: done\ndata: " + to_json(body) + b"\n\n"


def error_event(error: GatewayError, request_id: str) -> bytes:
    return b"event: error\ndata: " + to_json(gateway_error(error, request_id)[0]) + b"\n\n"
