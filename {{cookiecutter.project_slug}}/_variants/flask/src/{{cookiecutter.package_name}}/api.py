"""The HTTP endpoints, as a Blueprint. To add one, add a route function here: `chat_service()`
is the process's chat service, `admit()` the request admitted by `admission.py` ({% if cookiecutter.caller_auth == "keys" %}its caller's
key, model, cap and limits checked{% else %}its model and cap
checked{% endif %}), `g.request_id` the request's id."""

from __future__ import annotations

import socket
import time
from contextlib import suppress
from typing import Any, cast

from flask import Blueprint, Response, abort, after_this_request, current_app, g, request
from pydantic import ValidationError
from werkzeug.exceptions import ClientDisconnected

from . import http_contract as contract
from .admission import Admission, Gate
from .chat import CallInfo
from .chat_sync import ChatService
{%- if cookiecutter.caller_auth == "keys" %}
from .errors import GatewayError
from .limiter import Limiter
{%- endif %}
from .request import ChatRequest
from .sse import event_stream

bp = Blueprint("api", __name__)
DISCARD_BYTES = 64 * 1024 * 1024  # of a refused body: discard_after_the_answer()
# The time a request refused as busy gets to send the rest of its body (a body sent at once
# arrives well within it): its thread is one of those kept for /healthz.
BUSY_DISCARD_S = 0.5


def chat_service() -> ChatService:
    return cast(ChatService, current_app.extensions["chat"])
{%- if cookiecutter.caller_auth == "keys" %}


def limiter() -> Limiter:
    return cast(Limiter, current_app.extensions["limiter"])
{%- endif %}


def admit() -> Admission:
    """The request, checked in order{% if cookiecutter.caller_auth == "keys" %}: caller key (401), body (415, 413, 400), model (403),
    body (422), cap (422), the caller's limits (429, 503){% else %}: body (415, 413, 400, 422), model (403), cap (422){% endif %}."""
    gate = cast(Gate, current_app.extensions["gate"])
{%- if cookiecutter.caller_auth == "keys" %}
    try:
        who = gate.authenticate(request.headers.get("Authorization"))
    except GatewayError:
        discard_after_the_answer(gate.settings.client_timeout_s)  # the body was not read
        raise
    g.caller = who[0]  # named when a later check refuses the request
    payload = json_body(gate.settings.max_body_bytes, gate.settings.client_timeout_s)
    gate.check_named_model(payload, who)  # the model before the rest of the body
    g.admission = admission = gate.check(chat_request(payload), who)  # its headers: app.py
    admission.reservation = limiter().reserve(admission.plan)
    return admission
{%- else %}
    settings = gate.settings
    return gate.check(chat_request(json_body(settings.max_body_bytes, settings.client_timeout_s)))
{%- endif %}


def json_body(limit: int, timeout_s: float) -> dict[str, Any]:
    """The body's JSON object, refused as `http_contract` decides: by its headers (415, 413),
    then read no further than `limit` bytes (413) nor longer than `timeout_s` (408), and
    parsed (400, 422)."""
    sock = request.environ.get("gunicorn.socket")
    try:
        contract.check_body_headers(request.content_type, request.content_length, limit)
        if sock is not None:
            sock.settimeout(timeout_s)  # for each read: a trickle of bytes is caught below
        started, body = time.monotonic(), bytearray()
        while piece := read_piece():  # a body sent chunked is counted as it comes
            body += piece
            if len(body) > limit:
                raise contract.too_large(limit)
            if time.monotonic() - started > timeout_s:
                raise TimeoutError
    except TimeoutError:
        stop_reading()
        raise contract.too_slow(timeout_s) from None
    except contract.BadBody:
        discard_after_the_answer(timeout_s)
        raise
    return contract.parse_body(bytes(body))


def stop_reading() -> None:
    """Read nothing more from this client: before the next request on the connection,
    gunicorn would wait for the rest of a body nobody reads, holding a thread."""
    if (sock := request.environ.get("gunicorn.socket")) is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


def read_piece() -> bytes:
    """Up to 64 KiB more of the body; `TimeoutError` when the socket's timeout ran out."""
    try:
        return request.stream.read(65536)
    except ClientDisconnected as exc:  # how Werkzeug reports a failed read, a timeout too
        if isinstance(exc.__context__, TimeoutError):
            raise TimeoutError from None
        raise


def discard_after_the_answer(timeout_s: float) -> None:
    """Once the answer is out, read and drop what is left of the body, up to DISCARD_BYTES
    within `timeout_s` (ALLTKN_CLIENT_TIMEOUT_S), so the client's connection stays usable:
    gunicorn drains at most 64 KiB itself, then closes a connection it announced as kept
    alive. A client past either bound is read no further: its connection closes."""
    stream, sock = request.stream, request.environ.get("gunicorn.socket")

    def discard() -> None:
        deadline = time.monotonic() + timeout_s
        with suppress(Exception):  # the answer is out; whatever the client does now
            for _ in range(DISCARD_BYTES // 65536):
                if sock is not None:
                    sock.settimeout(max(deadline - time.monotonic(), 0.01))
                if not stream.read(65536):
                    return
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RD)

    def after(response: Response) -> Response:
        response.call_on_close(discard)
        return response

    after_this_request(after)


def chat_request(payload: dict[str, Any]) -> ChatRequest:
    """The body as a `ChatRequest`, or a 422 naming the field."""
    try:
        return ChatRequest.model_validate(payload)
    except ValidationError as exc:
        problem = contract.describe_errors(exc.errors(include_url=False, include_input=False))
        raise contract.BadBody(422, problem) from None


def call_info(admission: Admission) -> CallInfo:
    body = admission.request
{%- if cookiecutter.caller_auth == "keys" %}
    who, models = admission.caller, admission.models  # fallbacks only among `models`
    return CallInfo(g.request_id, body.user, body.task, caller=who, models=models)
{%- else %}
    return CallInfo(g.request_id, body.user, body.task)
{%- endif %}


@bp.get("/")
def demo() -> Response:
    """The demo page, with ALLTKN_DEV_UI=on (`make run`); off, 404."""
    if chat_service().settings.dev_ui != "on":
        abort(404)
    return Response(contract.DEMO_PAGE, mimetype="text/html", headers=contract.DEMO_PAGE_HEADERS)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


# Registered by `create_app` only with ALLTKN_METRICS=on (the default).
metrics_bp = Blueprint("metrics", __name__)


@metrics_bp.get("/metrics")
def scrape() -> Response | contract.Reply:
    """Prometheus metrics; no caller key, but ALLTKN_METRICS_TOKEN when it is set."""
    from . import prometheus  # imported by `create_app` already: metrics are on

    token = chat_service().settings.metrics_token
    if not prometheus.authorized(request.headers.get("Authorization"), token):
        return contract.metrics_denied(g.request_id)
    return Response(prometheus.sink().exposition(), content_type=prometheus.CONTENT_TYPE)


@bp.post("/v1/chat")
def chat() -> dict[str, Any]:
    admission = admit()
{%- if cookiecutter.caller_auth == "keys" %}
    try:
        result = chat_service().complete(admission.request, call_info(admission))
    except GatewayError as error:
        limiter().settle(admission.reservation, admission.used(error))
        raise
    limiter().settle(admission.reservation, admission.used(result))
    return contract.result_body(result)
{%- else %}
    return contract.result_body(chat_service().complete(admission.request, call_info(admission)))
{%- endif %}


@bp.post("/v1/chat/stream")
def chat_stream() -> Response:
    admission, service = admit(), chat_service()
    # Opened before the response starts, so a refused call still gets its own status.
{%- if cookiecutter.caller_auth == "keys" %}
    limits = limiter()
    try:
        stream = service.open_stream(admission.request, call_info(admission))
    except GatewayError as error:
        limits.settle(admission.reservation, admission.used(error))
        raise
    response = event_stream(stream, g.request_id, service.settings)

    def settle() -> None:  # registered after the stream's close: runs once it is closed
        limits.settle(admission.reservation, admission.used(stream.result()))

    response.call_on_close(settle)
    return response
{%- else %}
    stream = service.open_stream(admission.request, call_info(admission))
    return event_stream(stream, g.request_id, service.settings)
{%- endif %}
