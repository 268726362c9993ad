"""Server-sent events for `/v1/chat/stream`: a chat stream relayed as SSE bytes by a gunicorn
thread, with keep-alives while the gateway is silent and a send timeout for stalled clients."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from flask import Response, request

from . import http_contract as contract
from .chat_sync import ChatStream
from .errors import GatewayError
from .settings import Settings

_END = object()
# Bounded: a client that stops reading stops the upstream reads too, not piling them up here.
_READ_AHEAD = 64


def event_stream(stream: ChatStream, request_id: str, settings: Settings) -> Response:
    """A write blocked `sse_send_timeout_s` fails, so gunicorn closes a stalled client's stream."""
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        sock.settimeout(settings.sse_send_timeout_s)
    events = relay(stream, request_id, settings.sse_keepalive_s)
    response = Response(events, mimetype=contract.MEDIA_TYPE, headers=contract.STREAM_HEADERS)
    response.call_on_close(stream.close)  # also if the relay never started (closing is idempotent)
    return response


def relay(stream: ChatStream, request_id: str, keepalive_s: float) -> Iterator[bytes]:
    """A helper thread reads the upstream, so a `: keep-alive` goes out every `keepalive_s`
    while it waits; leaving (done, or gunicorn closing us on a hang-up) closes the stream."""
    with stream:
        items: queue.Queue[object] = queue.Queue(maxsize=_READ_AHEAD)
        leaving = threading.Event()
        threading.Thread(target=_pump, args=(stream, items, leaving), daemon=True).start()
        try:
            while True:
                try:
                    item = items.get(timeout=keepalive_s)
                except queue.Empty:
                    yield contract.KEEPALIVE
                    continue
                if item is _END:
                    break
                if isinstance(item, GatewayError):
                    yield contract.error_event(item, request_id)
                    return
                if isinstance(item, BaseException):
                    raise item
                yield contract.delta_event(str(item))
        finally:
            leaving.set()
    yield contract.done_event(stream.result())


def _pump(stream: ChatStream, items: queue.Queue[object], leaving: threading.Event) -> None:
    def hand_over(item: object) -> bool:  # False once the relay left: nobody will read it
        while not leaving.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    try:
        if all(hand_over(delta) for delta in stream):
            hand_over(_END)
    except BaseException as exc:  # handed to the relaying thread, which decides
        hand_over(exc)
