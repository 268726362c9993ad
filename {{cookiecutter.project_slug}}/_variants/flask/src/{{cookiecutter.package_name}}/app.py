"""Flask service: where HTTP requests enter.

Run: gunicorn -c gunicorn.conf.py {{ cookiecutter.package_name }}.app:app

A thin layer: validation and the HTTP contract live in `http_contract`, the gateway call in
`chat`, the error taxonomy in `errors`. One `OpenAI` client per process, made in `create_app`.
Streams are served by gunicorn's threaded workers (see gunicorn.conf.py): a sync worker would
kill a long stream at its timeout and serve one stream per process.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, g, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from .chat import CallInfo, ChatService, Rollback
from .client import create_client
from .errors import GatewayError
from .http_contract import (
    DEMO_PAGE_HEADERS,
    REQUEST_ID_HEADER,
    ChatRequest,
    bad_body,
    demo_page,
    describe_errors,
    error_body,
    no_route_body,
    request_id_from,
    result_body,
    retry_headers,
    status_for,
)
from .logs import configure_logging
from .settings import Settings, load_settings_or_exit
from .sse import MEDIA_TYPE, STREAM_HEADERS, relay_sync


def create_app(settings: Settings) -> Flask:
    configure_logging(settings.log_level, secrets=[settings.api_key.get_secret_value()])
    app = Flask(__name__)
    service = ChatService(create_client(settings), settings.model, Rollback.from_settings(settings))

    @app.before_request
    def assign_request_id() -> None:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.request_id
        return response

    @app.errorhandler(GatewayError)
    def gateway_failed(error: GatewayError) -> tuple[Response, int, dict[str, str]]:
        return jsonify(error_body(error, g.request_id)), status_for(error), retry_headers(error)

    @app.errorhandler(HTTPException)
    def no_route(error: HTTPException) -> tuple[Response, int, dict[str, str]]:
        status = error.code or 500
        body = no_route_body(status, request.method, request.path, g.request_id)
        allowed = isinstance(error, MethodNotAllowed) and error.valid_methods
        return jsonify(body), status, {"Allow": ", ".join(allowed)} if allowed else {}

    page = demo_page()

    @app.get("/")
    def demo() -> Response:
        return Response(page, mimetype="text/html", headers=DEMO_PAGE_HEADERS)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat")
    def chat() -> Any:
        body = _parse_body()
        if isinstance(body, Response):
            return body
        result = service.complete(body.to_messages(), model=body.model, call=_call_info(body))
        return result_body(result)

    @app.post("/v1/chat/stream")
    def chat_stream() -> Response:
        body = _parse_body()
        if isinstance(body, Response):
            return body
        call = _call_info(body)
        # Opened before the response starts, so a refused call still gets a proper status.
        stream = service.open_stream(body.to_messages(), model=body.model, call=call)
        _limit_send_time(settings.sse_send_timeout_s)
        events = relay_sync(stream, call.request_id, settings.sse_keepalive_s)
        return Response(events, mimetype=MEDIA_TYPE, headers=STREAM_HEADERS)

    return app


def _limit_send_time(seconds: float) -> None:
    """Give up on a client that stops reading: a write blocked this long fails, gunicorn then
    closes the response generator, and that closes the upstream stream."""
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        sock.settimeout(seconds)


def _parse_body() -> ChatRequest | Response:
    payload = request.get_json(silent=True)
    if payload is None:
        return _refuse("the body is not valid JSON (send Content-Type: application/json)", 400)
    try:
        return ChatRequest.model_validate(payload)
    except ValidationError as exc:
        return _refuse(describe_errors(exc.errors(include_url=False, include_input=False)), 422)


def _refuse(message: str, status: int) -> Response:
    response = jsonify(bad_body(message, g.request_id))
    response.status_code = status
    return response


def _call_info(body: ChatRequest) -> CallInfo:
    return CallInfo(request_id=g.request_id, user=body.user, task=body.task)


app = create_app(load_settings_or_exit())
