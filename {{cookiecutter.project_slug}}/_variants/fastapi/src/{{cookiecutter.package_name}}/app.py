"""FastAPI service: where HTTP requests enter.

Run: uvicorn {{ cookiecutter.package_name }}.app:app

A thin layer: validation and the HTTP contract live in `http_contract`, the gateway call in
`chat`, the error taxonomy in `errors`. One `AsyncOpenAI` client per process, made in the lifespan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .chat import AsyncChatService, CallInfo, Rollback
from .client import CLIENT_NAME, create_async_client
from .errors import GatewayError
from .http_contract import (
    DEMO_PAGE_HEADERS,
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
from .logs import REQUEST_ID, configure_logging
from .settings import Settings, load_settings_or_exit
from .sse import KEEPALIVE, MEDIA_TYPE, STREAM_HEADERS, relay


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
        REQUEST_ID.set(request_id)  # for uvicorn's access line (logs.py)
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class EventStreamResponse(Response):
    """An SSE response written straight to the ASGI server, for a relay that must stay cheap
    per chunk and must not outlive its client:

    - a client that hangs up is noticed at once, and one that accepts no write for
      `send_timeout_s` is dropped: a stalled reader must not pin the upstream stream;
    - a `: keep-alive` comment goes out when nothing was written for `keepalive_s`;
    - leaving, for any reason, closes the event source, which closes the upstream stream.

    Both timers live in one watchdog task per stream that sleeps until the next deadline, so a
    flowing stream pays nothing per chunk for them (racing each read against a timeout cost a
    task, or a cancel scope, per chunk).
    """

    def __init__(
        self, events: AsyncGenerator[bytes, None], *, keepalive_s: float, send_timeout_s: float
    ) -> None:
        self.status_code = 200
        self.media_type = MEDIA_TYPE
        self.background = None
        self.init_headers(STREAM_HEADERS)
        self.events = events
        self.keepalive_s = keepalive_s
        self.send_timeout_s = send_timeout_s
        self._write_lock = asyncio.Lock()  # the watchdog's keep-alives and the events share it
        self._last_write = time.monotonic()
        self._write_started: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._cancel_on_disconnect, receive, tasks.cancel_scope)
                tasks.start_soon(self._watchdog, send, tasks.cancel_scope)
                start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                await send(start)
                async for event in self.events:
                    await self._write(send, event)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tasks.cancel_scope.cancel()
        finally:
            await self.events.aclose()

    async def _write(self, send: Send, chunk: bytes) -> None:
        async with self._write_lock:
            self._write_started = time.monotonic()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._last_write = time.monotonic()
            self._write_started = None

    async def _cancel_on_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _watchdog(self, send: Send, scope: anyio.CancelScope) -> None:
        """Sleeps until a keep-alive is due or a pending write runs out of time."""
        while True:
            now = time.monotonic()
            if self._write_started is not None:
                if now - self._write_started >= self.send_timeout_s:
                    scope.cancel()  # the client stopped reading
                    return
                deadline = self._write_started + self.send_timeout_s
            elif now - self._last_write >= self.keepalive_s:
                with anyio.move_on_after(self.send_timeout_s) as timer:
                    await self._write(send, KEEPALIVE)
                if timer.cancelled_caught:
                    scope.cancel()
                    return
                continue
            else:
                deadline = self._last_write + self.keepalive_s
            await anyio.sleep(deadline - now)


def create_app(settings: Settings) -> FastAPI:
    configure_logging(settings.log_level, secrets=[settings.api_key.get_secret_value()])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = create_async_client(settings)
        app.state.chat = AsyncChatService(client, settings.model, Rollback.from_settings(settings))
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

    @app.exception_handler(StarletteHTTPException)
    async def no_route(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = no_route_body(
            exc.status_code, request.method, request.url.path, request.state.request_id
        )
        return JSONResponse(body, exc.status_code, headers=exc.headers)  # e.g. Allow for a 405

    @app.exception_handler(GatewayError)
    async def gateway_failed(request: Request, exc: GatewayError) -> JSONResponse:
        body = error_body(exc, request.state.request_id)
        return JSONResponse(body, status_for(exc), headers=retry_headers(exc))

    page = demo_page()

    @app.get("/", include_in_schema=False)
    async def demo() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=DEMO_PAGE_HEADERS)

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
    async def chat_stream(body: ChatRequest, request: Request) -> EventStreamResponse:
        service: AsyncChatService = request.app.state.chat
        call = _call_info(body, request)
        # Opened before the response starts, so a refused call still gets a proper status.
        stream = await service.open_stream(body.to_messages(), model=body.model, call=call)
        return EventStreamResponse(
            relay(stream, call.request_id),
            keepalive_s=settings.sse_keepalive_s,
            send_timeout_s=settings.sse_send_timeout_s,
        )

    return app


def _call_info(body: ChatRequest, request: Request) -> CallInfo:
    return CallInfo(request_id=request.state.request_id, user=body.user, task=body.task)


app = create_app(load_settings_or_exit())
