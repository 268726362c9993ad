"""A fake OpenAI-compatible gateway in the style of one-api / new-api (ALLTKN), stdlib only.

It is a real HTTP/1.1 server (keep-alive, chunked streaming) on 127.0.0.1 and an ephemeral
port, so tests exercise the real openai SDK and its transport end to end::

    with FakeGateway(api_key=KEY) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
        ...
        assert gw.requests_for("gpt-4o-mini")

Standalone (for benchmarks or manual poking); prints ``base_url=<url>`` and serves until
SIGINT/SIGTERM. Without ``--api-key`` any bearer token is accepted::

    python fake_gateway.py [--port 0] [--api-key KEY] [--first-token-delay S] [--delta-interval S]

``--wait`` serves nothing: it waits up to 10 s for a fake gateway on ``--port`` and exits 0 once
one answers, else 1 with one line saying how to start it (``make try`` runs it first).

Routes, under the base path ``/api/v1``:

- ``GET  /api/v1/models``: the ids in ``models`` (default: gpt-4o-mini, gpt-4o, fake-slow).
- ``GET  /_fake/stats``: ``{"aborted_streams", "completed_streams", "requests"}``, for
  benchmarks that run the fake in another process.
- ``POST /api/v1/chat/completions``: the OpenAI chat API, streaming or not. The answer is
  ``"".join(deltas)``; ``usage.prompt_tokens`` counts whitespace-separated words in the
  messages and ``completion_tokens`` is ``len(deltas)``. Non-streaming answers wait
  ``first_token_delay + delta_interval * len(deltas)``. Streams send a role chunk, then one chunk
  per delta (the first after ``first_token_delay``, the rest ``delta_interval`` apart), a
  ``finish_reason: "stop"`` chunk, a usage chunk with ``choices: []`` if the request set
  ``stream_options.include_usage``, and ``data: [DONE]``.
- Anything else: 404 ``Invalid URL (<METHOD> <path>)``, exactly like one-api.

Every response carries ``X-Oneapi-Request-Id``; gateway error messages end with
``(request id: <that id>)``. Error bodies are ``{"error": {"message", "type", "param", "code"}}``.
Checks run in this order: route, bearer token (401), body (400 for malformed JSON or a missing
``messages`` list), then the scenario chosen by the request's ``model``:

=========================  ===================================================================
``fake-error-401``         401 ``invalid_api_key`` "无效的令牌", even with the right key
``fake-error-quota``       403 ``insufficient_user_quota`` "用户额度不足, 剩余额度: $0.000000"
``fake-error-402``         402 ``insufficient_quota``
``fake-error-403``         403 ``access_denied`` "该令牌无权使用模型：fake-error-403"
``fake-error-404-model``   404 ``model_not_found`` "The model `fake-error-404-model` does not exist"
``fake-error-503-model``   503 ``model_not_found`` "当前分组 default 下对于模型 ... 无可用渠道"
``fake-error-400``         400 ``context_length_exceeded`` (type ``invalid_request_error``)
``fake-error-429``         429 ``rate_limit_exceeded`` with ``Retry-After: 7``
``fake-error-500``         500 ``server_error``
``fake-error-502``         502 with a non-JSON HTML page, like a reverse proxy's
``fake-html-200``          200 with an HTML page, like a captive portal's
``fake-timeout``           waits ``hang_seconds``, then answers if the client is still there
``fake-stream-cut``        stream: role chunk, 2 deltas, then (50 ms on) the socket closes mid-body
``fake-stream-error``      stream: 1 delta, then ``data: {"error": ...}`` and the end, no [DONE]
``fake-stream-no-finish``  stream: all deltas, then [DONE] without a finish_reason chunk
``fake-stream-linger``     stream: the usual answer and [DONE], then 2 s of silence before the
                           body ends
``fake-slow``              10 deltas ("tok0 " .. "tok9 ") 0.2 s apart, whatever the timings
``fake-slow-start``        the usual answer, but the first token only after 1 s
``fake-stream-slow-start`` stream: the first token only after ``hang_seconds``
``fake-stream-stall``      stream: the first delta, then ``hang_seconds`` between the others
``fake-firehose``          40,000 deltas of 500 characters, as fast as the client reads them
``fake-stream-trickle``    stream: "tick " every 0.1 s for 10 minutes, like a gateway that
                           never stops (each read well within any read timeout)
``fake-429-once``          429 ``rate_limit_exceeded`` with ``Retry-After: 1`` on the first request
                           for each distinct ``messages``; later requests answer normally
``fake-drop``              closes the connection without answering (stream or not)
=========================  ===================================================================

Without ``"stream": true`` the stream-only scenarios answer like an ordinary model.

Bookkeeping, all thread-safe: every request (rejected ones too) is appended to ``requests``
before it is answered; ``aborted_streams`` counts streams whose client went away before the
end (noticed at the next chunk, so within one ``delta_interval``; after ``[DONE]`` nothing is
aborted); ``completed_streams`` counts streams written to the end of their scenario (the broken
scenarios included);
``connections_opened`` counts accepted connections (a client that reuses its connections opens
one). ``reset()`` clears them all. No request can take the server down: handler failures are
logged at DEBUG level and never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import secrets
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from types import FrameType, TracebackType
from typing import Any, final
from urllib.parse import urlsplit

__all__ = ["DEFAULT_DELTAS", "MODELS", "FakeGateway", "RecordedRequest", "main"]

_logger = logging.getLogger(__name__)
_logger.addHandler(logging.NullHandler())  # silent unless the application configures logging

BASE_PATH = "/api/v1"
DEFAULT_DELTAS: tuple[str, ...] = ("Hello", " from", " the", " fake", " gateway", ".")
MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "fake-slow")

_SLOW_MODEL = "fake-slow"
_SLOW_DELTAS = tuple(f"tok{i} " for i in range(10))
_SLOW_INTERVAL = 0.2
_SLOW_START_MODEL = "fake-slow-start"
_SLOW_START_SECONDS = 1.0
_STREAM_SLOW_START_MODEL = "fake-stream-slow-start"
_STREAM_STALL_MODEL = "fake-stream-stall"
_FIREHOSE_MODEL = "fake-firehose"
_FIREHOSE_DELTAS = ("x" * 500,) * 40_000  # 20 MB, more than socket buffers hold
_TRICKLE_MODEL = "fake-stream-trickle"
_TRICKLE_INTERVAL = 0.1
_TRICKLE_DELTAS = ("tick ",) * 6000
STATS_PATH = "/_fake/stats"
_TIMEOUT_MODEL = "fake-timeout"
_CUT_AFTER_DELTAS = 2
_CUT_PAUSE_S = 0.05
_LINGER_MODEL = "fake-stream-linger"
_LINGER_S = 2.0
_RETRY_AFTER_SECONDS = "7"
_RATE_LIMITED_ONCE_MODEL = "fake-429-once"
_DROP_MODEL = "fake-drop"
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

_PORTAL_PAGE = b"<html><body><h1>Please sign in to the network</h1></body></html>\r\n"
_PROXY_ERROR_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass
class RecordedRequest:
    """One request as the gateway received it. Header names are lower-cased; ``path`` has no
    query string; ``body`` is the parsed JSON, or None if absent or malformed."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class _GatewayError:
    """A scripted one-api / new-api error; ``{model}`` in the message is filled in."""

    status: int
    message: str
    type: str
    code: str
    param: str = ""
    headers: tuple[tuple[str, str], ...] = ()


_INVALID_TOKEN = _GatewayError(401, "无效的令牌", "new_api_error", "invalid_api_key")

_ERROR_SCENARIOS: dict[str, _GatewayError] = {
    "fake-error-401": _INVALID_TOKEN,
    "fake-error-quota": _GatewayError(
        403, "用户额度不足, 剩余额度: $0.000000", "new_api_error", "insufficient_user_quota"
    ),
    "fake-error-402": _GatewayError(
        402,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    ),
    "fake-error-403": _GatewayError(
        403, "该令牌无权使用模型：{model}", "new_api_error", "access_denied"
    ),
    "fake-error-404-model": _GatewayError(
        404, "The model `{model}` does not exist", "invalid_request_error", "model_not_found"
    ),
    "fake-error-503-model": _GatewayError(
        503, "当前分组 default 下对于模型 {model} 无可用渠道", "new_api_error", "model_not_found"
    ),
    "fake-error-400": _GatewayError(
        400,
        "This model's maximum context length is 8192 tokens. However, your messages resulted "
        "in 12000 tokens. Please reduce the length of the messages.",
        "invalid_request_error",
        "context_length_exceeded",
        param="messages",
    ),
    "fake-error-429": _GatewayError(
        429,
        "Rate limit reached for requests. Please try again in 7s.",
        "rate_limit_error",
        "rate_limit_exceeded",
        headers=(("Retry-After", _RETRY_AFTER_SECONDS),),
    ),
    "fake-error-500": _GatewayError(
        500,
        "The server had an error while processing your request.",
        "server_error",
        "internal_server_error",
    ),
}

_RATE_LIMITED_ONCE = _GatewayError(
    429,
    "Rate limit reached for requests. Please try again in 1s.",
    "rate_limit_error",
    "rate_limit_exceeded",
    headers=(("Retry-After", "1"),),
)

_STREAM_ERROR = {
    "message": "upstream error: 上游负载已饱和",
    "type": "upstream_error",
    "param": "",
    "code": "upstream_error",
}


class _Stopping(Exception):
    """Raised inside a handler when the gateway is shutting down."""


@dataclass(frozen=True)
class _Reply:
    """What a successful chat completion will contain and how fast it is delivered."""

    model: str
    deltas: tuple[str, ...]
    first_token_delay: float
    delta_interval: float
    prompt_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        completion = len(self.deltas)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


@final
class FakeGateway:
    """The fake gateway; see the module docstring for routes and scenarios.

    Single use: ``start()`` once, ``stop()`` (idempotent) when done, or use it as a context
    manager. ``api_key=None`` accepts any bearer token.
    """

    def __init__(
        self,
        *,
        api_key: str | None,
        first_token_delay: float = 0.0,
        delta_interval: float = 0.0,
        deltas: Sequence[str] = DEFAULT_DELTAS,
        hang_seconds: float = 5.0,
        port: int = 0,
        models: Sequence[str] = MODELS,
    ) -> None:
        self.api_key = api_key
        self.models = tuple(models)
        self.first_token_delay = first_token_delay
        self.delta_interval = delta_interval
        self.deltas = tuple(deltas)
        self.hang_seconds = hang_seconds
        self.requests: list[RecordedRequest] = []
        self.aborted_streams = 0
        self.completed_streams = 0
        self.connections_opened = 0
        self._answered_once: set[str] = set()
        self._port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _GatewayServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeGateway:
        if self._server is not None or self._stopping.is_set():
            raise RuntimeError("FakeGateway can only be started once")
        self._server = _GatewayServer(("127.0.0.1", self._port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-gateway",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and drop open keep-alive connections."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeGateway:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeGateway is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_PATH}"

    # -- inspection --------------------------------------------------------------------------

    def requests_for(self, model: str) -> list[RecordedRequest]:
        """Recorded requests whose JSON body named ``model``."""
        with self._lock:
            return [r for r in self.requests if _model_of(r.body) == model]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    def reset(self) -> None:
        """Forget recorded requests, zero the counters and re-arm the "once" scenarios."""
        with self._lock:
            self.requests.clear()
            self.aborted_streams = 0
            self.completed_streams = 0
            self.connections_opened = 0
            self._answered_once.clear()

    # -- used by the request handler ---------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _first_time(self, model: str, messages: Any) -> bool:
        """True the first time ``model`` is asked with these ``messages`` (since a reset)."""
        key = json.dumps([model, messages], sort_keys=True)
        with self._lock:
            if key in self._answered_once:
                return False
            self._answered_once.add(key)
            return True

    def _count_stream(self, *, aborted: bool) -> None:
        with self._lock:
            if aborted:
                self.aborted_streams += 1
            else:
                self.completed_streams += 1

    def _track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(connection)
                self.connections_opened += 1
            else:
                self._connections.discard(connection)

    def _pause(self, seconds: float) -> None:
        """Sleep without blocking other requests; raise `_Stopping` if the gateway stops."""
        if self._stopping.wait(max(0.0, seconds)):
            raise _Stopping

    def _authorized(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return self.api_key is None or secrets.compare_digest(token.strip(), self.api_key)

    def _reply_for(self, body: dict[str, Any]) -> _Reply:
        model = _model_of(body) or ""
        if model == _SLOW_MODEL:
            deltas, first, interval = _SLOW_DELTAS, 0.0, _SLOW_INTERVAL
        elif model == _FIREHOSE_MODEL:
            deltas, first, interval = _FIREHOSE_DELTAS, 0.0, 0.0
        elif model == _TRICKLE_MODEL and body.get("stream") is True:
            deltas, first, interval = _TRICKLE_DELTAS, 0.0, _TRICKLE_INTERVAL
        elif model == _SLOW_START_MODEL:
            deltas, first, interval = self.deltas, _SLOW_START_SECONDS, self.delta_interval
        elif model == _STREAM_SLOW_START_MODEL and body.get("stream") is True:
            deltas, first, interval = self.deltas, self.hang_seconds, self.delta_interval
        elif model == _STREAM_STALL_MODEL and body.get("stream") is True:
            deltas, first, interval = self.deltas, self.first_token_delay, self.hang_seconds
        else:
            deltas, first, interval = self.deltas, self.first_token_delay, self.delta_interval
        return _Reply(model, deltas, first, interval, _count_prompt_words(body["messages"]))


class _GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], gateway: FakeGateway) -> None:
        self.gateway = gateway
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name (getfqdn), which can be slow.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Called from socketserver's own except block, so sys.exc_info() is the failure.
        _logger.debug("fake gateway: error serving %s", client_address, exc_info=sys.exc_info())


class _ChunkedWriter:
    """Writes one HTTP chunk per SSE event, noticing promptly when the client has gone."""

    def __init__(self, connection: socket.socket, wfile: BufferedIOBase) -> None:
        self._connection = connection
        self._wfile = wfile

    def event(self, data: dict[str, Any] | str, *, last: bool = False) -> None:
        """Send ``data: ...``; with ``last`` the chunked body's terminator goes in the same
        write, so a client that hangs up right after the final event is not seen as an abort."""
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        payload = f"data: {text}\n\n".encode()
        chunk = b"%x\r\n%s\r\n" % (len(payload), payload)
        self._write(chunk + b"0\r\n\r\n" if last else chunk)

    def end(self) -> None:
        self._write(b"0\r\n\r\n")

    def _write(self, data: bytes) -> None:
        if _peer_closed(self._connection):
            raise BrokenPipeError("client closed the connection")
        self._wfile.write(data)
        self._wfile.flush()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _GatewayServer

    request_id = ""
    head_sent = False

    # -- plumbing ----------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.gateway._track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.gateway._track(self.connection, open_=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: test output stays clean."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        self.request_id = _new_request_id()
        self.head_sent = False
        try:
            self._route()
        except (*_CLIENT_GONE, _Stopping):
            self.close_connection = True
        except Exception:
            _logger.exception("fake gateway: handler failed")
            self.close_connection = True
            if not self.head_sent:
                with contextlib.suppress(OSError):
                    self._send_error(_GatewayError(500, "fake gateway bug", "server_error", ""))

    # -- routing -----------------------------------------------------------------------------

    def _route(self) -> None:
        path = urlsplit(self.path).path
        raw = self._read_body()
        body = _parse_json(raw)
        self.server.gateway._record(
            RecordedRequest(
                method=self.command,
                path=path,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
            )
        )
        if (self.command, path) == ("GET", STATS_PATH):
            self._stats()
        elif (self.command, path) == ("GET", f"{BASE_PATH}/models"):
            self._models()
        elif (self.command, path) == ("POST", f"{BASE_PATH}/chat/completions"):
            self._chat(body)
        else:
            self._invalid_url(path)

    def _read_body(self) -> bytes:
        """The request body; b"" (and no keep-alive) if Content-Length is unusable."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True  # the connection can no longer be framed
            return b""
        return self.rfile.read(length) if length else b""

    def _invalid_url(self, path: str) -> None:
        message = f"Invalid URL ({self.command} {path})"
        error = {"message": message, "type": "invalid_request_error", "param": "", "code": ""}
        self._send_json(404, {"error": error})

    def _stats(self) -> None:
        gateway = self.server.gateway
        stats = {
            "aborted_streams": gateway.aborted_streams,
            "completed_streams": gateway.completed_streams,
            "connections_opened": gateway.connections_opened,
            "requests": len(gateway.requests),
        }
        self._send_json(200, stats)

    def _models(self) -> None:
        if not self.server.gateway._authorized(self.headers.get("Authorization")):
            self._send_error(_INVALID_TOKEN)
            return
        models = self.server.gateway.models
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in models]
        self._send_json(200, {"object": "list", "data": data})

    def _chat(self, body: Any) -> None:
        gateway = self.server.gateway
        if not gateway._authorized(self.headers.get("Authorization")):
            self._send_error(_INVALID_TOKEN)
            return
        problem = _body_problem(body)
        if problem:
            self._send_error(
                _GatewayError(400, problem, "invalid_request_error", "invalid_request")
            )
            return
        model = _model_of(body) or ""
        scripted = _ERROR_SCENARIOS.get(model)
        if scripted is not None:
            self._send_error(scripted, model=model)
            return
        if model == _DROP_MODEL:
            self._cut_connection()
            return
        if model == _RATE_LIMITED_ONCE_MODEL and gateway._first_time(model, body["messages"]):
            self._send_error(_RATE_LIMITED_ONCE, model=model)
            return
        if model == "fake-error-502":
            self._send_bytes(502, _PROXY_ERROR_PAGE, "text/html")
            return
        if model == "fake-html-200":
            self._send_bytes(200, _PORTAL_PAGE, "text/html")
            return
        if model == _TIMEOUT_MODEL:
            gateway._pause(gateway.hang_seconds)
            if _peer_closed(self.connection):
                # The client timed out and left: answer nobody, count nothing, so the late
                # reply cannot show up as an aborted stream in a later test.
                self.close_connection = True
                return
        reply = gateway._reply_for(body)
        if body.get("stream") is True:
            self._stream(reply, include_usage=_wants_usage(body))
        else:
            self._complete(reply)

    # -- answers -----------------------------------------------------------------------------

    def _complete(self, reply: _Reply) -> None:
        pause = self.server.gateway._pause
        pause(reply.first_token_delay + reply.delta_interval * len(reply.deltas))
        message = {"role": "assistant", "content": "".join(reply.deltas)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        self._send_json(
            200,
            {
                "id": _completion_id(),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": reply.model,
                "choices": [choice],
                "usage": reply.usage,
                "system_fingerprint": None,
            },
        )

    def _stream(self, reply: _Reply, *, include_usage: bool) -> None:
        writer = _ChunkedWriter(self.connection, self.wfile)
        try:
            self._send_head(200, "text/event-stream", (("Cache-Control", "no-cache"),), None)
            self._play_stream(writer, reply, include_usage=include_usage)
        except _CLIENT_GONE:
            self.close_connection = True
            self.server.gateway._count_stream(aborted=True)
        else:
            self.server.gateway._count_stream(aborted=False)

    def _play_stream(self, writer: _ChunkedWriter, reply: _Reply, *, include_usage: bool) -> None:
        chunks = _ChunkFactory(reply.model)
        writer.event(chunks.delta({"role": "assistant", "content": ""}))
        scenario = reply.model
        deltas = reply.deltas
        if scenario == "fake-stream-cut":
            deltas = deltas[:_CUT_AFTER_DELTAS]
        elif scenario == "fake-stream-error":
            deltas = deltas[:1]
        for text in self._paced(deltas, reply):
            writer.event(chunks.delta({"content": text}))
        if scenario == "fake-stream-cut":
            # The cut lands between deltas, after the client has read the last one: over
            # aiohttp (the async client), a cut arriving *with* a delta loses that delta
            # (README, Streaming), which would make every comparison of cut streams flaky.
            self.server.gateway._pause(_CUT_PAUSE_S)
            self._cut_connection()
            return
        if scenario == "fake-stream-error":
            error = dict(_STREAM_ERROR, message=self._with_request_id(_STREAM_ERROR["message"]))
            writer.event({"error": error}, last=True)
            return
        if scenario != "fake-stream-no-finish":
            writer.event(chunks.delta({}, finish_reason="stop"))
            if include_usage:
                writer.event(chunks.usage(reply.usage))
        if scenario == _LINGER_MODEL:
            writer.event("[DONE]")
            self.server.gateway._pause(_LINGER_S)
            # The answer is complete: a client that has left by now aborted nothing (and must
            # not show up as an abort in a test 2 s later).
            with contextlib.suppress(*_CLIENT_GONE):
                writer.end()
            return
        writer.event("[DONE]", last=True)

    def _paced(self, deltas: Sequence[str], reply: _Reply) -> Iterator[str]:
        pause = self.server.gateway._pause
        for index, text in enumerate(deltas):
            pause(reply.first_token_delay if index == 0 else reply.delta_interval)
            yield text

    def _cut_connection(self) -> None:
        """Close abruptly: the chunked body never ends and no [DONE] is sent."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- low-level responses -----------------------------------------------------------------

    def _with_request_id(self, message: str) -> str:
        return f"{message} (request id: {self.request_id})"

    def _send_error(self, error: _GatewayError, *, model: str = "") -> None:
        message = self._with_request_id(error.message.format(model=model))
        payload = {
            "error": {
                "message": message,
                "type": error.type,
                "param": error.param,
                "code": error.code,
            }
        }
        self._send_json(error.status, payload, error.headers)

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        self._send_bytes(status, body, "application/json; charset=utf-8", headers)

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._send_head(status, content_type, headers, len(body))
        self.wfile.write(body)
        self.wfile.flush()

    def _send_head(
        self,
        status: int,
        content_type: str,
        headers: Sequence[tuple[str, str]],
        length: int | None,
    ) -> None:
        """Status line and headers; ``length=None`` means a chunked body follows."""
        self.head_sent = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.send_header("X-Oneapi-Request-Id", self.request_id)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()


class _ChunkFactory:
    """Builds the ``chat.completion.chunk`` objects of one stream (shared id and timestamp)."""

    def __init__(self, model: str) -> None:
        self._base = {
            "id": _completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
        }

    def delta(self, delta: dict[str, str], *, finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._base, "choices": [choice]}

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._base, "choices": [], "usage": usage}


# -- pure helpers ------------------------------------------------------------------------------


def _new_request_id() -> str:
    """one-api style: a timestamp followed by random characters."""
    return datetime.now().strftime("%Y%m%d%H%M%S") + secrets.token_hex(8)


def _completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _body_problem(body: Any) -> str:
    """Why a chat body is unacceptable, or "" if it is fine."""
    if not isinstance(body, dict):
        return "invalid request body: expected a JSON object"
    if not isinstance(body.get("messages"), list):
        return "field messages is required and must be a list"
    return ""


def _model_of(body: Any) -> str | None:
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _count_prompt_words(messages: list[Any]) -> int:
    """Whitespace-separated words in all message texts (string or content-part form)."""
    words = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                words += len(text.split()) if isinstance(text, str) else 0
    return words


def _peer_closed(connection: socket.socket) -> bool:
    """True if the client has closed its end (EOF or reset is waiting to be read)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


# -- command line ------------------------------------------------------------------------------


def _wait_for(port: int, seconds: float) -> int:
    """0 once a fake gateway answers on 127.0.0.1:`port` (its stats route), else 1 and a hint."""
    deadline = time.monotonic() + seconds
    while True:
        address = ("127.0.0.1", port)
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=1) as sock:
            sock.sendall(f"GET {STATS_PATH} HTTP/1.0\r\n\r\n".encode())
            if sock.recv(64).startswith(b"HTTP/1.1 200"):
                return 0
        if time.monotonic() > deadline:
            where = f"127.0.0.1:{port}"
            print(f"error: no fake gateway on {where}: start it first (make fake)", file=sys.stderr)
            return 1
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the fake one-api style gateway.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="omit to accept any bearer token")
    parser.add_argument("--first-token-delay", type=float, default=0.0, metavar="S")
    parser.add_argument("--delta-interval", type=float, default=0.0, metavar="S")
    parser.add_argument(
        "--deltas", type=int, default=0, metavar="N", help="answer with N deltas (default: 6)"
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait (10 s at most) for a fake gateway on --port"
    )
    args = parser.parse_args(argv)
    if args.wait:
        return _wait_for(args.port, 10.0)

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    gateway = FakeGateway(
        api_key=args.api_key,
        first_token_delay=args.first_token_delay,
        delta_interval=args.delta_interval,
        deltas=tuple(f"w{i} " for i in range(args.deltas)) if args.deltas else DEFAULT_DELTAS,
        port=args.port,
    )
    with gateway:
        print(f"base_url={gateway.base_url}", flush=True)
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
