"""The HTTP endpoints, as a Blueprint. To add one, add a function with a route decorator here:
`chat_service()` is the process's chat service, `g.request_id` the request's id."""

from __future__ import annotations

from typing import Any, NoReturn, cast

from flask import Blueprint, Response, abort, current_app, g, jsonify, request
from pydantic import ValidationError

from . import http_contract as contract
from .chat import CallInfo
from .chat_sync import ChatService
from .request import ChatRequest
from .sse import limit_send_time, relay

bp = Blueprint("api", __name__)
_DEMO_PAGE = contract.demo_page()


def chat_service() -> ChatService:
    """The process's chat service, made by `app.create_app`."""
    return cast(ChatService, current_app.extensions["chat"])


def chat_request() -> ChatRequest:
    """The request's body as a `ChatRequest`, or a 400 / 422 error body naming the problem."""
    payload = request.get_json(silent=True)
    if payload is None:
        refuse("the body is not valid JSON (send Content-Type: application/json)", 400)
    try:
        return ChatRequest.model_validate(payload)
    except ValidationError as exc:
        refuse(contract.describe_errors(exc.errors(include_url=False, include_input=False)), 422)


def refuse(message: str, status: int) -> NoReturn:
    response = jsonify(contract.bad_body(message, g.request_id))
    response.status_code = status
    abort(response)


def call_info(body: ChatRequest) -> CallInfo:
    return CallInfo(request_id=g.request_id, user=body.user, task=body.task)


@bp.get("/")
def demo() -> Response:
    return Response(_DEMO_PAGE, mimetype="text/html", headers=contract.DEMO_PAGE_HEADERS)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@bp.post("/v1/chat")
def chat() -> dict[str, Any]:
    body = chat_request()
    return contract.result_body(chat_service().complete(body, call_info(body)))


@bp.post("/v1/chat/stream")
def chat_stream() -> Response:
    body, service = chat_request(), chat_service()
    call = call_info(body)
    # Opened before the response starts, so a refused call still gets its own status.
    stream = service.open_stream(body, call)
    limit_send_time(service.settings.sse_send_timeout_s)
    events = relay(stream, call.request_id, service.settings.sse_keepalive_s)
    response = Response(events, mimetype=contract.MEDIA_TYPE, headers=contract.STREAM_HEADERS)
    response.call_on_close(stream.close)  # also if the relay never started (closing is idempotent)
    return response
