"""FastAPI service: where HTTP requests enter.

Run: uvicorn {{ cookiecutter.package_name }}.app:app

A thin layer: validation and the HTTP contract live in `http_contract`, the gateway call in
`chat`, the error taxonomy in `errors`. One `AsyncOpenAI` client per process, made in the lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .chat import AsyncChatService, AsyncChatStream, CallInfo
from .client import CLIENT_NAME, create_async_client
from .errors import GatewayError
from .http_contract import (
    ChatRequest,
    bad_body,
    describe_errors,
    error_body,
    request_id_from,
    result_body,
    retry_headers,
    status_for,
)
from .logs import configure_logging
from .settings import Settings, load_settings_or_exit
from .sse import MEDIA_TYPE, STREAM_HEADERS, delta_event, done_event, error_event


class RequestIdMiddleware:
    """Gives every request an id (the inbound X-Request-ID if valid) and echoes it.

    Plain ASGI rather than `@app.middleware("http")`, which would wrap streamed responses.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbound = dict(scope["headers"]).get(b"x-request-id")
        request_id = request_id_from(inbound.decode("latin-1") if inbound else None)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(settings: Settings) -> FastAPI:
    configure_logging(settings.log_level, secrets=[settings.api_key.get_secret_value()])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = create_async_client(settings)
        app.state.chat = AsyncChatService(client, settings.model)
        yield
        await client.close()

    app = FastAPI(title=CLIENT_NAME, version=__version__, lifespan=lifespan)
    app.add_middleware(RequestIdMiddleware)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        malformed = any(error.get("type") == "json_invalid" for error in errors)
        message = "the body is not valid JSON" if malformed else describe_errors(errors)
        return JSONResponse(bad_body(message, request.state.request_id), 400 if malformed else 422)

    @app.exception_handler(GatewayError)
    async def gateway_failed(request: Request, exc: GatewayError) -> JSONResponse:
        body = error_body(exc, request.state.request_id)
        return JSONResponse(body, status_for(exc), headers=retry_headers(exc))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat")
    async def chat(body: ChatRequest, request: Request) -> JSONResponse:
        service: AsyncChatService = request.app.state.chat
        result = await service.complete(
            body.to_messages(), model=body.model, call=_call_info(body, request)
        )
        return JSONResponse(result_body(result))

    @app.post("/v1/chat/stream")
    async def chat_stream(body: ChatRequest, request: Request) -> StreamingResponse:
        service: AsyncChatService = request.app.state.chat
        call = _call_info(body, request)
        # Opened before the response starts, so a refused call still gets a proper status.
        stream = await service.open_stream(body.to_messages(), model=body.model, call=call)
        return StreamingResponse(
            _relay(stream, call.request_id), media_type=MEDIA_TYPE, headers=STREAM_HEADERS
        )

    return app


async def _relay(stream: AsyncChatStream, request_id: str) -> AsyncIterator[bytes]:
    # Leaving this `async with` (also by cancellation when the client hangs up) closes the
    # upstream stream, so the gateway stops generating for nobody.
    async with stream:
        try:
            async for delta in stream:
                yield delta_event(delta)
        except GatewayError as error:
            yield error_event(error, request_id)
            return
        yield done_event(stream.result())


def _call_info(body: ChatRequest, request: Request) -> CallInfo:
    return CallInfo(request_id=request.state.request_id, user=body.user, task=body.task)


app = create_app(load_settings_or_exit())
