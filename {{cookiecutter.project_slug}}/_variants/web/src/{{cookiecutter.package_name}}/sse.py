"""Server-sent events for `/v1/chat/stream`: the wire format and the relay loop, for both
the async (FastAPI) and the sync (Flask) service.

The relay turns a chat stream into SSE bytes: one `data:` event per delta, then `event: done`
or `event: error`. While the gateway is silent a `: keep-alive` comment goes out every
`keepalive_s` seconds, so proxies don't time the stream out and a client that left is noticed
at the next write rather than at the next token: the sync relay writes them itself, the async
one leaves them to the response that writes its bytes (FastAPI's `EventStreamResponse`), which
arms a timer only while the gateway is silent instead of racing every read against one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import AsyncGenerator, Iterator, Mapping

from pydantic_core import to_json

from .chat import AsyncChatStream, ChatResult, ChatStream
from .errors import GatewayError
from .http_contract import error_body, usage_body

# Proxies (nginx, many CDNs) buffer responses unless told not to; a buffered stream looks
# like a hang followed by the whole answer at once.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"


def _encode(data: Mapping[str, object], event: str | None = None) -> bytes:
    # pydantic-core's encoder: compact UTF-8 JSON, several times faster than `json.dumps`.
    payload = b"data: " + to_json(data) + b"\n\n"
    return f"event: {event}\n".encode() + payload if event else payload


def delta_event(text: str) -> bytes:
    return _encode({"delta": text})


def done_event(result: ChatResult) -> bytes:
    return _encode(
        {"model": result.model, "usage": usage_body(result.usage), "request_id": result.request_id},
        "done",
    )


def error_event(error: GatewayError, request_id: str) -> bytes:
    return _encode(error_body(error, request_id), "error")


async def relay(stream: AsyncChatStream, request_id: str) -> AsyncGenerator[bytes, None]:
    """SSE bytes for an async stream; the response that writes them adds the keep-alives.
    Leaving early (the client hung up and the task was cancelled) closes the upstream stream,
    so the gateway stops generating for nobody."""
    async with stream:
        try:
            async for delta in stream:
                yield delta_event(delta)
        except GatewayError as error:
            yield error_event(error, request_id)
            return
    yield done_event(stream.result())


_END = object()
# How far the reader may get ahead of a slow client. Bounded, so that a client that stops
# reading stops the reading upstream too (and the send timeout then drops it), instead of the
# whole answer piling up in memory.
_READ_AHEAD = 64
_HAND_OVER_POLL_S = 0.1


def relay_sync(stream: ChatStream, request_id: str, keepalive_s: float) -> Iterator[bytes]:
    """SSE bytes for a sync stream. The upstream is read by a helper thread so keep-alives can
    be written while it waits; when the server closes this generator (the client hung up),
    leaving the `with` closes the upstream and ends that thread."""
    with stream:
        items: queue.Queue[object] = queue.Queue(maxsize=_READ_AHEAD)
        leaving = threading.Event()
        reader = threading.Thread(target=_pump, args=(stream, items, leaving), daemon=True)
        reader.start()
        try:
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
        finally:
            leaving.set()
    yield done_event(stream.result())


def _pump(stream: ChatStream, items: queue.Queue[object], leaving: threading.Event) -> None:
    try:
        for delta in stream:
            if not _hand_over(delta, items, leaving):
                return
        _hand_over(_END, items, leaving)
    except BaseException as exc:  # handed to the relaying thread, which decides
        _hand_over(exc, items, leaving)


def _hand_over(item: object, items: queue.Queue[object], leaving: threading.Event) -> bool:
    """Queue `item` for the relaying thread; False if it left (nobody will read it)."""
    while not leaving.is_set():
        try:
            items.put(item, timeout=_HAND_OVER_POLL_S)
        except queue.Full:
            continue
        return True
    return False
