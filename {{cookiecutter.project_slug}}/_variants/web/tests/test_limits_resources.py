"""What one caller can take from a worker, against the real server process: memory (a huge
body), time (a gateway that trickles a stream for ever), its threads and connections (slow
clients, many streams: /healthz must keep answering). Memory is read from /proc, which only
the tests use."""

from __future__ import annotations

import json
import socket
{%- if cookiecutter.framework == "flask" %}
import subprocess
{%- endif %}
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx2
import pytest
{%- if cookiecutter.framework == "flask" and cookiecutter.caller_auth == "keys" %}

from {{ cookiecutter.package_name }} import callers
{%- endif %}

from .fake_gateway import FakeGateway
{%- if cookiecutter.framework == "flask" %}
from .live_server import PROJECT_ROOT, Server, free_port, parse_events, run_server, server_env
from .server import server_command
{%- else %}
from .live_server import Server, parse_events, run_server
{%- endif %}

MB = 1024 * 1024
HUGE = 300 * MB
PIECE = b"x" * MB


@pytest.fixture(scope="module")
def server(gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(gateway, tmp_path_factory.mktemp("limits"), ALLTKN_MAX_STREAM_S="1") as running:
        yield running


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def send_head(server: Server, path: str, length: int, extra: bytes = b"") -> socket.socket:
    """A POST whose head is sent whole, then `extra` of its `length` body bytes."""
    sock = connect(server)
    auth = "".join(f"{name}: {value}\r\n" for name, value in server.headers.items()).encode()
    sock.sendall(
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"%sContent-Length: %d\r\n\r\n%s" % (path.encode(), auth, length, extra)
    )
    return sock


def open_stream(server: Server, model: str = "fake-stream-trickle") -> socket.socket:
    body = json.dumps({"prompt": "hi", "model": model}).encode()
    return send_head(server, "/v1/chat/stream", len(body), body)


def answer_of(sock: socket.socket) -> bytes:
    """What the server sent until its JSON body ended, it closed the connection, or 10 s."""
    answer = bytearray()
    try:
        while chunk := sock.recv(65536):
            answer += chunk
            if answer.endswith(b"}"):
                break
    except OSError:
        pass
    return bytes(answer)


def local_address(response: httpx2.Response) -> tuple[str, int]:
    """The client's end of the connection `response` came on, while it is open."""
    address = response.extensions["network_stream"].get_extra_info("client_addr")
    return str(address[0]), int(address[1])


def healthz_seconds(server: Server) -> float:
    started = time.monotonic()
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = answer_of(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return time.monotonic() - started


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


def test_healthz_answers_within_a_second_past_40_slow_bodies_and_64_streams(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """40 clients that send a head and one byte of their body, 64 streams that go on for
    minutes: each holds a connection (and, on Flask, a thread) of the one worker."""
    with run_server(gateway, tmp_path_factory.mktemp("crowd")) as server, ExitStack() as held:
        for _ in range(40):
            held.callback(send_head(server, "/v1/chat", 100, b"{").close)
        for _ in range(64):
            held.callback(open_stream(server).close)
        time.sleep(1)  # every connection reached the worker
        seconds = [healthz_seconds(server) for _ in range(5)]
        print(f"/healthz under load: {max(seconds) * 1000:.0f} ms at most")
        assert max(seconds) < 1.0


def test_past_max_streams_a_chat_request_gets_503_and_healthz_still_answers(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("busy")
    with run_server(gateway, directory, ALLTKN_MAX_STREAMS="2") as server, ExitStack() as held:
        streams = [open_stream(server) for _ in range(2)]
        for stream in streams:
            held.callback(stream.close)
            assert stream.recv(65536).startswith(b"HTTP/1.1 200")  # both flowing
        # A body past the 64 KiB a server drains by itself: the refusal reads it, so the
        # client's pooled connection carries on (a closed one: "Server disconnected").
        busy = server.post("/v1/chat", {"prompt": "x" * 200_000})
        connections = {local_address(busy)}
        health = server.request("GET", "/healthz")
        connections.add(local_address(health))
        held.close()  # the streams hang up: their slots come back
        assert gateway.wait_for(lambda: gateway.aborted_streams == 2, timeout=3)
        again = server.post("/v1/chat", {"prompt": "hi"})
        connections.add(local_address(again))
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"
    assert busy.headers.get("connection", "keep-alive") == "keep-alive"
    assert busy.json()["error"]["category"] == "server_busy"
    assert "ALLTKN_MAX_STREAMS" in busy.json()["error"]["message"]
    assert health.status_code == 200
    assert again.status_code == 200
    assert len(connections) == 1, connections  # the one pooled connection served all three


def test_a_client_that_stops_sending_its_body_gets_408(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("slow-body")
    with run_server(gateway, directory, ALLTKN_CLIENT_TIMEOUT_S="1") as server:
        started = time.monotonic()
        sock = send_head(server, "/v1/chat", 100, b'{"prompt": ')
        answer = answer_of(sock)
        took = time.monotonic() - started
        sock.close()
        assert server.post("/v1/chat", {"prompt": "hi"}).status_code == 200  # its slot is back
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"ALLTKN_CLIENT_TIMEOUT_S" in answer
    assert 1.0 <= took < 3.0
    assert len(gateway.requests) == 1  # the one after
{%- if cookiecutter.framework == "fastapi" %}


def test_a_client_that_trickles_its_head_gets_408(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One header line every 0.2 s would hold the connection for ever without the deadline."""
    directory = tmp_path_factory.mktemp("slow-head")
    with run_server(gateway, directory, ALLTKN_CLIENT_TIMEOUT_S="1") as server:
        sock = connect(server)
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        try:
            for number in range(25):
                time.sleep(0.2)
                sock.sendall(b"X-Slow-%d: 1\r\n" % number)
        except OSError:
            pass  # closed on us: expected
        answer = answer_of(sock)
        took = time.monotonic() - started
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"ALLTKN_CLIENT_TIMEOUT_S" in answer
    assert took < 3.0
{%- endif %}
{%- if cookiecutter.framework == "flask" %}


def test_gunicorn_refuses_a_stream_cap_that_leaves_no_thread_for_healthz(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = server_env(gateway, ALLTKN_MAX_STREAMS="32", GUNICORN_THREADS="32")
{%- if cookiecutter.caller_auth == "keys" %}
    callers_file = tmp_path_factory.mktemp("cap") / "callers.json"
    callers.add(callers_file, "tests")
    env["ALLTKN_CALLERS_FILE"] = str(callers_file)
{%- endif %}
    done = subprocess.run(
        server_command(free_port()), cwd=PROJECT_ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.decode().splitlines() if "error[config]" in line]
    assert lines == [
        "error[config]: ALLTKN_MAX_STREAMS (32) must be below GUNICORN_THREADS (32), so that "
        "/healthz always finds a thread: lower it or add threads"
    ]
    assert "Traceback" not in done.stderr.decode()
{%- endif %}
