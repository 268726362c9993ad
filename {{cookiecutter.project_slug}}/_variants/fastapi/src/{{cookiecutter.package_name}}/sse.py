"""`EventStreamResponse`: a chat stream relayed as server-sent events, written straight to the
ASGI server by a response that stays cheap per chunk and does not outlive its client."""

from __future__ import annotations

import asyncio
import time

import anyio
from fastapi.responses import Response
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from . import http_contract as contract
from .chat_async import AsyncChatStream
from .errors import GatewayError
from .settings import Settings


class EventStreamResponse(Response):
    """A client that hangs up is noticed at once; one that accepts no write for
    `sse_send_timeout_s` is dropped (a stalled reader must not pin the upstream stream); a
    `: keep-alive` goes out after `sse_keepalive_s` of silence; leaving, for any reason, closes
    the stream upstream. One watchdog task per stream sleeps until the next deadline, so a
    flowing stream pays nothing per chunk for the timers (no task or cancel scope per read)."""

    def __init__(
        self,
        stream: AsyncChatStream,
        request_id: str,
        settings: Settings,
        background: BackgroundTask | None = None,  # run once the stream is closed, however
    ) -> None:
        self.status_code, self.media_type, self.background = 200, contract.MEDIA_TYPE, background
        self.init_headers(contract.STREAM_HEADERS)  # Response.__init__ would add Content-Length
        self.stream, self.request_id = stream, request_id
        keepalive_s, send_timeout_s = settings.sse_keepalive_s, settings.sse_send_timeout_s
        self.keepalive_s, self.send_timeout_s = keepalive_s, send_timeout_s
        self._write_lock = asyncio.Lock()  # the watchdog's keep-alives and the events share it
        self._last_write = time.monotonic()
        self._write_started: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self.stream, anyio.create_task_group() as tasks:
                tasks.start_soon(self._cancel_on_disconnect, receive, tasks.cancel_scope)
                tasks.start_soon(self._watchdog, send, tasks.cancel_scope)
                start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                await send(start)
                await self._relay(send)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tasks.cancel_scope.cancel()
        finally:
            if self.background is not None:
                with anyio.CancelScope(shield=True):
                    await self.background()

    async def _relay(self, send: Send) -> None:
        try:
            async for delta in self.stream:
                await self._write(send, contract.delta_event(delta))
        except GatewayError as error:  # after the response started: an event, not a status
            await self._write(send, contract.error_event(error, self.request_id))
            return
        await self._write(send, contract.done_event(self.stream.result()))

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
                    await self._write(send, contract.KEEPALIVE)
                if timer.cancelled_caught:
                    scope.cancel()
                    return
                continue
            else:
                deadline = self._last_write + self.keepalive_s
            await anyio.sleep(deadline - now)
