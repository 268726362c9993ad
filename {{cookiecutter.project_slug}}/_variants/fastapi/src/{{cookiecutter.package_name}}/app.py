"""FastAPI app. Run: uvicorn {{ cookiecutter.package_name }}.app:app (or the `serve` command)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import CLIENT_NAME, __version__, api{{ ", jobs_api" if cookiecutter.worker == "celery" else "" }}, metrics, telemetry
{%- if cookiecutter.caller_auth == "keys" %}
from .admission import Gate, limit_headers, load_callers_or_exit, workers_from_environment
{%- else %}
from .admission import Gate, warn_open
{%- endif %}
from .chat_async import AsyncChatService, create_async_client
from .errors import GatewayError
from .http_contract import (
    CHAT_PATHS,
    NOSNIFF,
    UNTRACED_PATHS,
    BadBody,
    Slots,
    check_host,
    describe_errors,
    gateway_error,
    no_route_body,
    request_id_from,
)
{%- if cookiecutter.caller_auth == "keys" %}
from .limiter import AsyncLimiter
{%- endif %}
from .logs import REQUEST_ID, configure_logging
from .settings import Settings, load_settings_or_exit

if TYPE_CHECKING:
    from .otlp import ServerSpan


def request_ids(app: ASGIApp) -> ASGIApp:
    """Request ids in `request.state`, echoed{% if cookiecutter.caller_auth == "keys" %} (with the caller's limit headers){% endif %}, and
    `nosniff`, on every response; the
    request's SERVER span, when traces are exported (telemetry.py). Plain ASGI: `@app.middleware`
    wraps streams, and the span ends with the response, a stream's too."""

    async def with_request_id(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        inbound = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        state = scope.setdefault("state", {})
        state["request_id"] = request_id = request_id_from(inbound)
        REQUEST_ID.set(request_id)  # for uvicorn's access line (logs.py)
        added = [(b"x-request-id", request_id.encode()), tuple(n.encode() for n in NOSNIFF)]
        span = server_span(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
{%- if cookiecutter.caller_auth == "keys" %}
                headers = [*message.get("headers", []), *added, *limit_headers(state)]
                message["headers"] = headers
{%- else %}
                message["headers"] = [*message.get("headers", []), *added]
{%- endif %}
                if span:
                    span.status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            if span:
                span.detach()
                span.end(getattr(scope.get("route"), "path", None), request_id)  # FastAPI's

    return with_request_id


def guard(app: ASGIApp, slots: Slots, hosts: frozenset[str] | None) -> ASGIApp:
    """A Host outside `hosts` gets 400 `host_not_allowed` (`check_host`); each chat request
    holds one of the worker's `slots` until its answer is out (a stream's too), or gets 503
    `server_busy`; nothing else takes one."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        chat = scope["path"] in CHAT_PATHS and scope["method"] == "POST"
        try:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            check_host(host, scope["path"], hosts)
            if chat:
                slots.take()
        except GatewayError as refusal:
            reply = JSONResponse(*gateway_error(refusal, scope["state"]["request_id"]))
            return await reply(scope, receive, send)
        try:
            await app(scope, receive, send)
        finally:
            if chat:
                slots.give_back()

    return guarded


def server_span(scope: Scope) -> ServerSpan | None:
    """The request's SERVER span, current from here on; none for probes and scrapes."""
    if (tracing := telemetry.tracing) is None or scope["path"] in UNTRACED_PATHS:
        return None
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    return tracing.server_span(scope["method"], scope["scheme"], scope["path"], headers)


def create_app(settings: Settings) -> FastAPI:
    configure_logging(settings.log_level, secrets=settings.secret_values)
    metrics.configure(settings)
    if settings.metrics == "on":  # off: prometheus_client is not even imported
        from . import prometheus

        metrics.install(prometheus.sink())
    telemetry.start_or_exit(settings)  # spans and metrics over OTLP, if configured
{%- if cookiecutter.caller_auth == "keys" %}
    workers = workers_from_environment()
    gate = Gate(settings, load_callers_or_exit(settings, workers), workers)
    redis_url = settings.limits_redis_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        limiter = AsyncLimiter(redis_url.get_secret_value() if redis_url else None)
        async with create_async_client(settings) as client:  # one per process: the connections
            chat = AsyncChatService(client, settings)  # all three in every `request.state`
            yield {"chat": chat, "gate": gate, "limiter": limiter}
        await limiter.aclose()
        telemetry.stop()  # uvicorn ends on SIGTERM without running atexit: what is pending, now
{%- else %}
    warn_open()
    gate = Gate(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        async with create_async_client(settings) as client:  # one per process: the connections
            yield {"chat": AsyncChatService(client, settings), "gate": gate}  # `request.state`
        telemetry.stop()  # uvicorn ends on SIGTERM without running atexit: what is pending, now
{%- endif %}

    dev = settings.dev_ui == "on"  # off: /docs, /redoc and /openapi.json answer 404
    app = FastAPI(
        title=CLIENT_NAME,
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if dev else None,
        redoc_url="/redoc" if dev else None,
        openapi_url="/openapi.json" if dev else None,
    )
    app.add_middleware(guard, slots=Slots(settings.max_streams), hosts=settings.allowed_host_set)
    app.add_middleware(request_ids)  # the outer one: it runs first
    app.include_router(api.router)
{%- if cookiecutter.worker == "celery" %}
    jobs_api.install(app)  # POST /v1/jobs, GET /v1/jobs/{id}
{%- endif %}
    if settings.metrics == "on":
        app.include_router(api.metrics_router)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
{%- if cookiecutter.caller_auth == "keys" %}
        # FastAPI parses a JSON body before any dependency: the caller key still comes first,
        # so that a client without one learns nothing about the body, then the model.
        caller = None
        try:
            caller, policy = gate.authenticate(request.headers.get("authorization"))
            gate.check_named_model(exc.body, (caller, policy))
        except GatewayError as error:
            return JSONResponse(*gateway_error(error, request.state.request_id, caller))
{%- endif %}
        refusal = BadBody(422, describe_errors(exc.errors()))  # 415, 413, 400: api.py
{%- if cookiecutter.caller_auth == "keys" %}
        return JSONResponse(*gateway_error(refusal, request.state.request_id, caller))
{%- else %}
        return JSONResponse(*gateway_error(refusal, request.state.request_id))
{%- endif %}

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, exc: HTTPException) -> JSONResponse:
        status, request_id = exc.status_code, request.state.request_id
        body = no_route_body(status, request.method, request.url.path, request_id)
        return JSONResponse(body, status, headers=exc.headers)  # a 405's Allow

    @app.exception_handler(GatewayError)
    async def gateway_failed(request: Request, exc: GatewayError) -> JSONResponse:
{%- if cookiecutter.caller_auth == "keys" %}
        caller = getattr(request.state, "caller", None)  # known once the key was checked
        return JSONResponse(*gateway_error(exc, request.state.request_id, caller))
{%- else %}
        return JSONResponse(*gateway_error(exc, request.state.request_id))
{%- endif %}

    return app


app = create_app(load_settings_or_exit())
