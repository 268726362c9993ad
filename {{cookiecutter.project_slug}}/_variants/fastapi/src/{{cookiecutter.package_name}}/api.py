"""The HTTP endpoints. To add one, add a route function here: it takes the chat service as
`service: Chat`, the request admitted by `admission.py` as `admission: Admitted`{% if cookiecutter.caller_auth == "keys" %} (its caller's
key, model, cap and limits checked){% else %} (its model and
cap checked){% endif %}, and the request id from `request.state`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, cast

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
{%- if cookiecutter.caller_auth == "keys" %}
from starlette.background import BackgroundTask
{%- endif %}
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from . import http_contract as contract
from .admission import Admission, Gate
{%- if cookiecutter.caller_auth == "keys" %}
from .callers import Who
{%- endif %}
from .chat import CallInfo
{%- if cookiecutter.caller_auth == "keys" %}
from .chat_async import AsyncChatService, AsyncChatStream
from .errors import GatewayError
{%- else %}
from .chat_async import AsyncChatService
{%- endif %}
{%- if cookiecutter.caller_auth == "keys" %}
from .limiter import AsyncLimiter
{%- endif %}
from .request import ChatRequest
from .sse import EventStreamResponse


class JSONBodyRoute(APIRoute):
    """Routes taking a JSON body get it checked as `http_contract` decides: by its headers (415,
    413), read no further than ALLTKN_MAX_BODY_BYTES (413) nor longer than
    ALLTKN_CLIENT_TIMEOUT_S (408) and parsed (400, 422); FastAPI
    then reuses the parse.{% if cookiecutter.caller_auth == "keys" %} A bad caller key still answers 401 first.{% endif %}"""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        if self.body_field is None:
            return handle

        async def handle_json(request: Request) -> Response:
            gate = cast(Gate, request.state.gate)
            settings = gate.settings
            try:
                limit, timeout_s = settings.max_body_bytes, settings.client_timeout_s
                request = await read_json(request, limit, timeout_s)
            except contract.BadBody:
{%- if cookiecutter.caller_auth == "keys" %}
                who = gate.authenticate(request.headers.get("authorization"))  # the key first
                request.state.caller = who[0]  # named in the refusal's count
{%- endif %}
                raise
            return await handle(request)

        return handle_json


async def read_json(request: Request, limit: int, timeout_s: float) -> Request:
    """`request` with its body read within `timeout_s` and parsed (cached in it), or
    `contract.BadBody`."""
    length = request.headers.get("content-length")
    content_length = int(length) if length and length.isdigit() else None
    contract.check_body_headers(request.headers.get("content-type"), content_length, limit)
    if content_length is None:  # sent chunked: counted as it comes
        request = Request(request.scope, counted(request.receive, limit))
    try:
        with anyio.fail_after(timeout_s):
            raw = await request.body()
    except TimeoutError:
        raise contract.too_slow(timeout_s) from None
    except ClientDisconnect:  # nobody reads the answer; it keeps a traceback out of the log
        raise contract.BadBody(400, "the client hung up before its body ended") from None
    try:
        payload = await request.json()
    except (ValueError, RecursionError) as error:
        raise contract.not_json(raw, error) from None
    contract.json_object(raw, payload)
    return request


def counted(receive: Receive, limit: int) -> Receive:
    """`receive` refusing the body (413) once more than `limit` bytes of it came."""
    received = 0

    async def receive_counted() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise contract.too_large(limit)
        return message

    return receive_counted


router = APIRouter(route_class=JSONBodyRoute)


# Dependencies: async, so FastAPI skips its thread pool; what they return is made in the lifespan.
async def get_chat(request: Request) -> AsyncChatService:
    return cast(AsyncChatService, request.state.chat)


Chat = Annotated[AsyncChatService, Depends(get_chat)]
{%- if cookiecutter.caller_auth == "keys" %}


async def get_limiter(request: Request) -> AsyncLimiter:
    return cast(AsyncLimiter, request.state.limiter)


Limiter = Annotated[AsyncLimiter, Depends(get_limiter)]


async def authenticate(request: Request) -> Who:
    """The caller, from `Authorization: Bearer <caller key>`, or 401."""
    who = cast(Gate, request.state.gate).authenticate(request.headers.get("authorization"))
    request.state.caller = who[0]  # named when a later check refuses the request (app.py)
    return who


Caller = Annotated[Who, Depends(authenticate)]


async def admit(body: ChatRequest, request: Request, limiter: Limiter, who: Caller) -> Admission:
    admission = cast(Gate, request.state.gate).check(body, who)
    request.state.admission = admission  # its limit headers go out with the answer (app.py)
    admission.reservation = await limiter.reserve(admission.plan)
    return admission
{%- else %}


async def admit(body: ChatRequest, request: Request) -> Admission:
    return cast(Gate, request.state.gate).check(body)
{%- endif %}


Admitted = Annotated[Admission, Depends(admit)]


def call_info(admission: Admission, request: Request) -> CallInfo:
    body, request_id = admission.request, request.state.request_id
{%- if cookiecutter.caller_auth == "keys" %}
    who, models = admission.caller, admission.models  # fallbacks only among `models`
    return CallInfo(request_id, body.user, body.task, caller=who, models=models)
{%- else %}
    return CallInfo(request_id, body.user, body.task)
{%- endif %}


@router.get("/", include_in_schema=False)
async def demo(service: Chat) -> HTMLResponse:
    """The demo page, with ALLTKN_DEV_UI=on (`make run`); off, 404."""
    if service.settings.dev_ui != "on":
        raise HTTPException(404)
    return HTMLResponse(contract.DEMO_PAGE, headers=contract.DEMO_PAGE_HEADERS)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


# Included by `create_app` only with ALLTKN_METRICS=on (the default).
metrics_router = APIRouter()


# A plain `def`: reading the workers' counts runs in the thread pool, off the event loop.
@metrics_router.get("/metrics", include_in_schema=False)
def scrape(request: Request, service: Chat) -> Response:
    """Prometheus metrics; no caller key, but ALLTKN_METRICS_TOKEN when it is set."""
    from . import prometheus  # imported by `create_app` already: metrics are on

    token = service.settings.metrics_token
    if not prometheus.authorized(request.headers.get("authorization"), token):
        return JSONResponse(*contract.metrics_denied(request.state.request_id))
    return Response(prometheus.sink().exposition(), media_type=prometheus.CONTENT_TYPE)


@router.post("/v1/chat")
{%- if cookiecutter.caller_auth == "keys" %}
async def chat(
    admission: Admitted, request: Request, service: Chat, limiter: Limiter
) -> JSONResponse:
    try:
        result = await service.complete(admission.request, call_info(admission, request))
    except GatewayError as error:
        await limiter.settle(admission.reservation, admission.used(error))
        raise
    await limiter.settle(admission.reservation, admission.used(result))
    return JSONResponse(contract.result_body(result))
{%- else %}
async def chat(admission: Admitted, request: Request, service: Chat) -> JSONResponse:
    result = await service.complete(admission.request, call_info(admission, request))
    return JSONResponse(contract.result_body(result))
{%- endif %}


@router.post("/v1/chat/stream")
{%- if cookiecutter.caller_auth == "keys" %}
async def chat_stream(
    admission: Admitted, request: Request, service: Chat, limiter: Limiter
) -> EventStreamResponse:
    call = call_info(admission, request)
    # Opened before the response starts, so a refused call still gets its own status.
    try:
        stream = await service.open_stream(admission.request, call)
    except GatewayError as error:
        await limiter.settle(admission.reservation, admission.used(error))
        raise

    async def settle(stream: AsyncChatStream) -> None:  # after the stream closed, however
        await limiter.settle(admission.reservation, admission.used(stream.result()))

    settling = BackgroundTask(settle, stream)
    return EventStreamResponse(stream, call.request_id, service.settings, background=settling)
{%- else %}
async def chat_stream(admission: Admitted, request: Request, service: Chat) -> EventStreamResponse:
    call = call_info(admission, request)
    # Opened before the response starts, so a refused call still gets its own status.
    stream = await service.open_stream(admission.request, call)
    return EventStreamResponse(stream, call.request_id, service.settings)
{%- endif %}
