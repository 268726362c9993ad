"""Stream a chat answer from FastAPI as server-sent events.

When to use: a FastAPI (or any Starlette) service relays the answer to a browser as it is
generated. One `AsyncOpenAI` client per process, made in the lifespan. A refused call (bad
body, bad key, no balance, unknown model, ...) is answered before the stream starts, with a
proper status and `{"error": {"category", "message", "hint", "request_id"}}`; a failure later
arrives as `event: error`. The response carries the anti-buffering headers, and a client that
hangs up, or stops reading for `ALLTKN_SSE_SEND_TIMEOUT_S`, gets its upstream stream closed at
once.

Run: `uvicorn sse_fastapi:app --loop asyncio --host 127.0.0.1 --port 8000` (uvloop misses
client hang-ups) and
`curl -N localhost:8000/v1/chat/stream -H 'Content-Type: application/json' -d '{"prompt": "Hi"}'`.
Needs alltkn_client.py, alltkn_errors.py and alltkn_sse.py next to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from alltkn_client import DEFAULT_MODEL, make_async_client
from alltkn_errors import UPSTREAM_ERRORS, classify
from alltkn_sse import (
    MEDIA_TYPE,
    SEND_TIMEOUT_S,
    STREAM_HEADERS,
    Answer,
    bad_body,
    error_body,
    http_status,
    relay,
    request_id_from,
    retry_headers,
)
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.types import Send


class ChatBody(BaseModel):
    prompt: str = Field(min_length=1, max_length=200_000)
    model: str = Field(DEFAULT_MODEL, min_length=1, max_length=200, pattern=r"^\S+$")


class EventStreamResponse(StreamingResponse):
    """An SSE response that gives up on a client that stops reading, and closes the event
    source (so the upstream stream) however the response ends."""

    def __init__(self, events: AsyncIterator[bytes], request_id: str) -> None:
        headers = {**STREAM_HEADERS, "X-Request-ID": request_id}
        super().__init__(events, media_type=MEDIA_TYPE, headers=headers)
        self.events = events

    async def stream_response(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        try:
            await send(start)
            async for chunk in self.events:
                with anyio.fail_after(SEND_TIMEOUT_S):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            pass  # the client stopped reading; the server closes the connection
        finally:
            await self.events.aclose()  # type: ignore[attr-defined]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.client = make_async_client()
    yield
    await app.state.client.close()


app = FastAPI(lifespan=lifespan)


@app.exception_handler(RequestValidationError)
async def refuse_bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's default 422 echoes the input; answer like any refused call instead."""
    request_id = request_id_from(request.headers.get("X-Request-ID"))
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    malformed = first["type"] == "json_invalid"
    problem = "the body is not valid JSON" if malformed else f"{where}: {first['msg']}"
    headers = {"X-Request-ID": request_id}
    return JSONResponse(bad_body(problem, request_id), 400 if malformed else 422, headers)


@app.post("/v1/chat/stream")
async def chat_stream(body: ChatBody, request: Request) -> Response:
    request_id = request_id_from(request.headers.get("X-Request-ID"))
    try:
        # Opened before the response starts, so a refused call still gets a proper status.
        stream = await request.app.state.client.chat.completions.create(
            model=body.model,
            messages=[{"role": "user", "content": body.prompt}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Request-ID": request_id},
        )
    except UPSTREAM_ERRORS as exc:
        category = classify(exc)
        headers = {**retry_headers(exc), "X-Request-ID": request_id}
        return JSONResponse(error_body(category, request_id), http_status(category), headers)
    return EventStreamResponse(relay(stream, Answer(body.model, request_id)), request_id)
