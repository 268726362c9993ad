"""uvicorn's HTTP protocol, with two changes; `serve` runs uvicorn with it (`http=PROTOCOL`).

- A deadline for a request's head: a client gets ALLTKN_CLIENT_TIMEOUT_S from its connection
  (or, on a kept-alive one, from the next request's first byte) to send the request line and
  headers, then 408 and the connection is closed. uvicorn has no such timeout: one header a
  second would hold a connection for ever.
- A stop that loses no request: told to stop (SIGTERM: a rolling update, a worker replaced),
  uvicorn closes at once every connection between requests, resetting one whose request is
  already on its way (a connection it just accepted, a kept-alive one the client just reused).
  Here such a connection gets STOP_GRACE_S for its request, which is answered with
  `connection: close`; a request in flight ends as uvicorn ends it.
"""

from __future__ import annotations

import asyncio

from pydantic_core import to_json
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import error_body
from .http_contract import request_id_from, too_slow

PROTOCOL = f"{__name__}:HttpProtocol"  # by name: uvicorn's worker processes import it
STOP_GRACE_S = 1.0  # a request on its way arrives within milliseconds


class HttpProtocol(HttpToolsProtocol):
    timeout_s: float | None = None  # ALLTKN_CLIENT_TIMEOUT_S, read once per process
    _head_timer: asyncio.TimerHandle | None = None
    _stopping = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self._stopping and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed

    def shutdown(self) -> None:
        self._stopping = True  # a request read from here on is the connection's last
        if self.cycle is not None and not self.cycle.response_complete:
            super().shutdown()  # in flight: closed once answered
            return
        self.loop.call_later(STOP_GRACE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if HttpProtocol.timeout_s is None:
            from .settings import load_settings  # checked by `serve` before it started us

            HttpProtocol.timeout_s = load_settings().client_timeout_s
        self._head_timer = self.loop.call_later(self.timeout_s or 0, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        refusal, request_id = too_slow(self.timeout_s or 0, "head"), request_id_from(None)
        body = to_json(error_body(refusal.category, refusal.message, refusal.hint, request_id))
        head = (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"x-content-type-options: nosniff\r\n"
            b"x-request-id: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (request_id.encode(), len(body))
        )
        self.transport.write(head + body)
        self.transport.close()
