"""The HTTP endpoints, as a Blueprint. To add one, add a route function here: `chat_service()`
is the process's chat service, `g.request_id` the request's id."""

from __future__ import annotations

from typing import Any, NoReturn, cast

from flask import Blueprint, Response, abort, current_app, g, make_response, request
from pydantic import ValidationError

from . import http_contract as contract
from .chat import CallInfo
from .chat_sync import ChatService
from .request import ChatRequest
from .sse import event_stream

bp = Blueprint("api", __name__)


def chat_service() -> ChatService:
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
    abort(make_response(contract.bad_body(message, g.request_id), status))


def call_info(body: ChatRequest) -> CallInfo:
    return CallInfo(request_id=g.request_id, user=body.user, task=body.task)


@bp.get("/")
def demo() -> Response:
    return Response(contract.DEMO_PAGE, mimetype="text/html", headers=contract.DEMO_PAGE_HEADERS)


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
    # Opened before the response starts, so a refused call still gets its own status.
    stream = service.open_stream(body, call_info(body))
    return event_stream(stream, g.request_id, service.settings)
