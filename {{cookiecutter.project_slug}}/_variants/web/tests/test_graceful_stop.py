"""A stop (SIGTERM: a rolling update, a worker replaced) loses no request, against the real
server process: a stream in flight ends complete, and a request already on its way, on a
connection the server had accepted, is answered rather than reset."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

from .fake_gateway import FakeGateway
from .live_server import parse_events, run_server

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# How the server exits once stopped: gunicorn with 0; uvicorn raises the signal again.
STOPPED = (0, -signal.SIGTERM)


def read_one(connection: socket.socket) -> bytes:
    """One response (head and Content-Length body), leaving the connection open."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536)
    head, body = received.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(body) < length:
        body += connection.recv(65536)
    return head


def read_response(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_a_stream_in_flight_when_the_server_stops_ends_complete(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    with run_server(gateway, tmp_path) as live:
        with live.stream({"prompt": "hi", "model": "fake-slow"}) as response:
            lines = response.iter_lines()
            first = next(lines)  # the stream has started
            live.process.send_signal(signal.SIGTERM)
            events = parse_events("\n".join([first, *lines]))
        assert events[-1][0] == "done", events
        assert live.process.wait(timeout=30) in STOPPED


def test_a_request_on_a_connection_accepted_before_the_stop_is_answered(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """The client connected, the server accepted; the request leaves the client just after
    the server was told to stop (the race every rolling update runs)."""
    with run_server(gateway, tmp_path) as live:
        port = int(live.url.rsplit(":", 1)[1])
        fresh = socket.create_connection(("127.0.0.1", port), timeout=10)
        kept = socket.create_connection(("127.0.0.1", port), timeout=10)
        kept.sendall(HEALTHZ)  # served, then kept alive
        assert read_one(kept).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)  # accepted by the server's loop
        live.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # it is stopping (uvicorn looks every 0.1 s), the connections still open
        answers: dict[str, bytes] = {}

        def ask(name: str, connection: socket.socket) -> None:
            with connection:
                connection.sendall(HEALTHZ)
                answers[name] = read_response(connection)

        askers = [threading.Thread(target=ask, args=pair) for pair in
                  (("fresh", fresh), ("kept alive", kept))]  # fmt: skip
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join(30)
        assert live.process.wait(timeout=30) in STOPPED
    for name, answer in answers.items():
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200"), (name, answer)
        assert b"connection: close" in head, name  # and no more requests on it
