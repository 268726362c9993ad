"""Server-sent events for `/v1/chat/stream`: a chat stream relayed as SSE bytes, written by a
response that must stay cheap per chunk and must not outlive its client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import anyio
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from .chat_async import AsyncChatStream
from .errors import GatewayError
from .http_contract import (
    KEEPALIVE,
    MEDIA_TYPE,
    STREAM_HEADERS,
    delta_event,
    done_event,
    error_event,
)


async def relay(stream: AsyncChatStream, request_id: str) -> AsyncGenerator[bytes, None]:
    """SSE bytes for a stream; the response that writes them adds the keep-alives. Leaving
    early (the client hung up, the task was cancelled) closes the stream upstream, so the
    gateway stops generating for nobody."""
    async with stream:
        try:
            async for delta in stream:
                yield delta_event(delta)
        except GatewayError as error:
            yield error_event(error, request_id)
            return
    yield done_event(stream.result())


class EventStreamResponse(Response):
    """An SSE response written straight to the ASGI server:

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
