"""Server-sent events for `/v1/chat/stream`: the wire format and the relay loop, for both
the async (FastAPI) and the sync (Flask) service.

The relay turns a chat stream into SSE bytes: one `data:` event per delta, then `event: done`
or `event: error`. While the gateway is silent it sends a `: keep-alive` comment every
`keepalive_s` seconds, so proxies don't time the stream out and a client that left is noticed
at the next write rather than at the next token.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import AsyncGenerator, Iterator, Mapping

from .chat import AsyncChatStream, ChatResult, ChatStream
from .errors import GatewayError
from .http_contract import error_body, usage_body

# Proxies (nginx, many CDNs) buffer responses unless told not to; a buffered stream looks
# like a hang followed by the whole answer at once.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"


def _encode(data: Mapping[str, object], event: str | None = None) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


def delta_event(text: str) -> bytes:
    return _encode({"delta": text})


def done_event(result: ChatResult) -> bytes:
    return _encode(
        {"model": result.model, "usage": usage_body(result.usage), "request_id": result.request_id},
        "done",
    )


def error_event(error: GatewayError, request_id: str) -> bytes:
    return _encode(error_body(error, request_id), "error")


async def relay(
    stream: AsyncChatStream, request_id: str, keepalive_s: float
) -> AsyncGenerator[bytes, None]:
    """SSE bytes for an async stream. Leaving early (the client hung up and the task was
    cancelled) closes the upstream stream, so the gateway stops generating for nobody."""
    async with stream:
        deltas = aiter(stream)
        # The SDK's iterator must not be cancelled mid-read, so a pending read survives a
        # keep-alive tick and is awaited again.
        pending: asyncio.Future[str] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(deltas))
                done, _ = await asyncio.wait((pending,), timeout=keepalive_s)
                if not done:
                    yield KEEPALIVE
                    continue
                finished, pending = pending, None
                try:
                    delta = finished.result()
                except StopAsyncIteration:
                    break
                yield delta_event(delta)
        except GatewayError as error:
            yield error_event(error, request_id)
            return
        finally:
            if pending is not None:
                pending.cancel()
        yield done_event(stream.result())


_END = object()


def relay_sync(stream: ChatStream, request_id: str, keepalive_s: float) -> Iterator[bytes]:
    """SSE bytes for a sync stream. The upstream is read by a helper thread so keep-alives can
    be written while it waits; when the server closes this generator (the client hung up),
    leaving the `with` closes the upstream and ends that thread."""
    with stream:
        items: queue.SimpleQueue[object] = queue.SimpleQueue()
        reader = threading.Thread(target=_pump, args=(stream, items), daemon=True)
        reader.start()
        while True:
            try:
                item = items.get(timeout=keepalive_s)
            except queue.Empty:
                yield KEEPALIVE
                continue
            if item is _END:
                break
            if isinstance(item, GatewayError):
                yield error_event(item, request_id)
                return
            if isinstance(item, BaseException):
                raise item
            yield delta_event(str(item))
    yield done_event(stream.result())


def _pump(stream: ChatStream, items: queue.SimpleQueue[object]) -> None:
    try:
        for delta in stream:
            items.put(delta)
        items.put(_END)
    except BaseException as exc:  # handed to the relaying thread, which decides
        items.put(exc)
