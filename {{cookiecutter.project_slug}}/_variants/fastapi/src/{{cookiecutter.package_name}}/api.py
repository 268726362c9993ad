"""The HTTP endpoints. To add one, add a route function here: it takes the chat service as
`service: Chat`, a body model, and the request id from `request.state`."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse

from .chat import CallInfo
from .chat_async import AsyncChatService
from .http_contract import DEMO_PAGE, DEMO_PAGE_HEADERS, result_body
from .request import ChatRequest
from .sse import EventStreamResponse

router = APIRouter()


async def get_chat(request: Request) -> AsyncChatService:
    """The service made in the app's lifespan; async, so FastAPI skips its thread pool."""
    return cast(AsyncChatService, request.state.chat)


Chat = Annotated[AsyncChatService, Depends(get_chat)]


def call_info(body: ChatRequest, request: Request) -> CallInfo:
    return CallInfo(request_id=request.state.request_id, user=body.user, task=body.task)


@router.get("/", include_in_schema=False)
async def demo() -> HTMLResponse:
    return HTMLResponse(DEMO_PAGE, headers=DEMO_PAGE_HEADERS)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.post("/v1/chat")
async def chat(body: ChatRequest, request: Request, service: Chat) -> JSONResponse:
    result = await service.complete(body, call_info(body, request))
    return JSONResponse(result_body(result))


@router.post("/v1/chat/stream")
async def chat_stream(body: ChatRequest, request: Request, service: Chat) -> EventStreamResponse:
    call = call_info(body, request)
    # Opened before the response starts, so a refused call still gets its own status.
    stream = await service.open_stream(body, call)
    return EventStreamResponse(stream, call.request_id, service.settings)
