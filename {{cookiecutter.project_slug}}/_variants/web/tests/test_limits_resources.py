"""What one caller can take from a worker, against the real server process: memory (a huge
body), time (a gateway that trickles a stream for ever). Memory is read from /proc, which
only the tests use."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fake_gateway import FakeGateway
from .live_server import Server, parse_events, run_server

MB = 1024 * 1024
HUGE = 300 * MB
PIECE = b"x" * MB


@pytest.fixture(scope="module")
def server(gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(gateway, tmp_path_factory.mktemp("limits"), ALLTKN_MAX_STREAM_S="1") as running:
        yield running


def worker_pid(server: Server) -> int:
    """The process serving requests: gunicorn's one worker, or uvicorn's own process."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def post_huge(server: Server, *, chunked: bool) -> bytes:
    """POST a 300 MB body as fast as the server takes it, reading the answer meanwhile; the
    answer's bytes once the server closed or sent it whole."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % HUGE
    head = b"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    auth = "".join(f"{name}: {value}\r\n" for name, value in server.headers.items()).encode()
    answer = bytearray()
    answered = threading.Event()

    def read() -> None:
        try:
            while chunk := sock.recv(65536):
                answer.extend(chunk)
                if b"}}" in answer:  # the whole JSON error body
                    break
        except OSError:
            pass
        answered.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        sock.sendall(head + auth + framing + b"\r\n\r\n")
        sent = 0
        while sent < HUGE and not answered.is_set():
            piece = b"%x\r\n%s\r\n" % (len(PIECE), PIECE) if chunked else PIECE
            sock.sendall(piece)
            sent += len(PIECE)
    except OSError:
        pass  # the server stopped reading and closed: expected
    reader.join(timeout=10)
    sock.close()
    return bytes(answer)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_300_mb_body_gets_413_and_leaves_the_workers_memory_alone(
    server: Server, chunked: bool
) -> None:
    assert server.post("/v1/chat", {"prompt": "hi"}).status_code == 200  # warmed up
    pid = worker_pid(server)
    before = peak_rss(pid)

    answer = post_huge(server, chunked=chunked)

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    grew = peak_rss(pid) - before
    print(f"peak RSS before {before / MB:.1f} MB, grew by {grew / MB:.1f} MB")
    assert grew <= 20 * MB
    assert server.request("GET", "/healthz").status_code == 200


def test_a_trickling_stream_ends_at_the_deadline_with_a_timeout_event(server: Server) -> None:
    """ALLTKN_MAX_STREAM_S=1: the gateway's "tick " every 0.1 s would last ten minutes."""
    started = time.monotonic()
    with server.stream({"prompt": "hi", "model": "fake-stream-trickle"}) as response:
        assert response.status_code == 200
        text = response.read().decode()
    took = time.monotonic() - started

    events = parse_events(text)
    assert [name for name, _ in events[:-1]] == ["message"] * (len(events) - 1)
    assert len(events) >= 5
    name, data = events[-1]
    assert name == "error"
    assert data["error"]["category"] == "timeout"
    assert "ALLTKN_MAX_STREAM_S" in data["error"]["message"]
    assert 1.0 <= took < 2.5
