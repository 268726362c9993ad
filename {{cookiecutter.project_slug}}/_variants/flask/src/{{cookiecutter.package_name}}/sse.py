"""Server-sent events for `/v1/chat/stream`: a chat stream relayed as SSE bytes by a gunicorn
thread, with keep-alives while the gateway is silent and a send timeout for stalled clients."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from flask import request

from .chat_sync import ChatStream
from .errors import GatewayError
from .http_contract import KEEPALIVE, delta_event, done_event, error_event

_END = object()
# How far the reader may get ahead of a slow client. Bounded, so that a client that stops
# reading stops the reading upstream too (and the send timeout then drops it), instead of the
# whole answer piling up in memory.
_READ_AHEAD = 64
_HAND_OVER_POLL_S = 0.1


def relay(stream: ChatStream, request_id: str, keepalive_s: float) -> Iterator[bytes]:
    """SSE bytes for a stream: one `data:` event per delta, then `event: done` or `event:
    error`. A helper thread reads the upstream so that a `: keep-alive` goes out every
    `keepalive_s` while it waits; a client that hung up is noticed at the next write, gunicorn
    closes this generator, and leaving the `with` closes the stream upstream (which ends the
    reader at its next read)."""
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


def limit_send_time(seconds: float) -> None:
    """Give up on a client that stops reading: a write blocked this long fails, gunicorn then
    closes the response generator, and that closes the stream upstream."""
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        sock.settimeout(seconds)


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
