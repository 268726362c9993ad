"""FastAPI service: the app assembled from settings, logging, the request-id middleware, the
error handlers and the endpoints in `api`.

Run: python -m {{ cookiecutter.package_name }} serve (or uvicorn {{ cookiecutter.package_name }}.app:app)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, api
from . import http_contract as contract
from .chat_async import AsyncChatService, create_async_client
from .client import CLIENT_NAME
from .errors import GatewayError
from .logs import REQUEST_ID, configure_logging
from .settings import Settings, load_settings_or_exit


class RequestIdMiddleware:
    """Gives every request an id (the inbound X-Request-ID if valid) in `request.state` and
    echoes it. Plain ASGI: `@app.middleware("http")` would wrap streamed responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbound = dict(scope["headers"]).get(b"x-request-id")
        request_id = contract.request_id_from(inbound.decode("latin-1") if inbound else None)
        scope.setdefault("state", {})["request_id"] = request_id
        REQUEST_ID.set(request_id)  # for uvicorn's access line (logs.py)
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
        client = create_async_client(settings)  # one per process: it holds the connections
        app.state.chat = AsyncChatService(client, settings)
        yield
        await client.close()

    app = FastAPI(title=CLIENT_NAME, version=__version__, lifespan=lifespan)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(api.router)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors, request_id = exc.errors(), request.state.request_id
        if any(error.get("type") == "json_invalid" for error in errors):
            return JSONResponse(contract.bad_body("the body is not valid JSON", request_id), 400)
        return JSONResponse(contract.bad_body(contract.describe_errors(errors), request_id), 422)

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, exc: HTTPException) -> JSONResponse:
        status, request_id = exc.status_code, request.state.request_id
        body = contract.no_route_body(status, request.method, request.url.path, request_id)
        return JSONResponse(body, status, headers=exc.headers)  # a 405's Allow

    @app.exception_handler(GatewayError)
    async def gateway_failed(request: Request, exc: GatewayError) -> JSONResponse:
        body = contract.gateway_error_body(exc, request.state.request_id)
        return JSONResponse(body, contract.status_for(exc), headers=contract.retry_headers(exc))

    return app


app = create_app(load_settings_or_exit())
