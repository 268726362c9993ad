"""Streams under the conditions that break them in production: a silent gateway, a first token
that never comes, a client that stops reading, many clients hanging up at once. Real server
processes on loopback only."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .fake_gateway import FakeGateway
from .live_server import Server, parse_events, run_server

ANSWER = "Hello from the fake gateway."
KEEPALIVE_S = 0.1
SEND_TIMEOUT_S = 0.5
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Short keep-alive and send timeouts; one retry and a fallback model, so that what is (and
    is not) retried before the first delta shows."""
    with run_server(
        gateway,
        tmp_path_factory.mktemp("streaming"),
        ALLTKN_SSE_KEEPALIVE_S=str(KEEPALIVE_S),
        ALLTKN_SSE_SEND_TIMEOUT_S=str(SEND_TIMEOUT_S),
        ALLTKN_TIMEOUT_S=str(TIMEOUT_S),
        ALLTKN_MAX_RETRIES="1",
        ALLTKN_FALLBACK_MODELS="gpt-4o",
    ) as running:
        yield running


def test_keep_alives_flow_while_the_gateway_is_silent(
    server: Server, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 0.6)  # the first token after 0.6 s
    lines: list[str] = []
    with server.stream({"prompt": "hi", "model": "fake-stream-slow-start"}) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("data: "):
                break

    keepalives = [line for line in lines if line == ": keep-alive"]
    assert len(keepalives) >= 3  # about one per 0.1 s during the 0.6 s of silence
    assert lines[-1].startswith('data: {"delta"')


def test_a_client_leaving_before_the_first_token_stops_the_upstream_and_its_retries(
    server: Server, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 0.6)  # the first token comes after 0.6 s
    monkeypatch.setattr(gateway, "delta_interval", 0.05)  # then one every 50 ms
    with server.stream(
        {"prompt": "hi", "model": "fake-stream-slow-start"},
        headers={"X-Request-ID": "left-before-first-token"},
    ) as response:
        for line in response.iter_lines():
            if line == ": keep-alive":
                break  # hang up while the gateway is still silent

    # Logged at the relay's next keep-alive write, before the first token came.
    entry = server.call_log("left-before-first-token")
    assert (entry["status"], entry["ttft_ms"]) == ("client_disconnect", None)
    assert entry["duration_ms"] < 600
    # Upstream closed by the time the gateway sends its first token (FastAPI at once; Flask's
    # reader thread, blocked in its read, lets go when that token arrives): it never finishes.
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=3)
    assert gateway.completed_streams == 0
    assert len(gateway.requests) == 1  # neither retried nor fallen back for nobody


def test_a_stream_without_a_first_token_is_retried_then_falls_back(
    server: Server, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", TIMEOUT_S + 0.5)  # past the read timeout
    response = server.post(
        "/v1/chat/stream", {"prompt": "say hello please", "model": "fake-stream-slow-start"}
    )

    assert response.status_code == 200
    events = parse_events(response.text)
    assert "".join(data["delta"] for name, data in events if name == "message") == ANSWER
    assert events[-1][0] == "done"
    assert events[-1][1]["model"] == "gpt-4o"
    assert len(gateway.requests_for("fake-stream-slow-start")) == 2  # tried, then retried once
    assert len(gateway.requests_for("gpt-4o")) == 1
    request_id = response.headers["x-request-id"]
    server.call_log(request_id)
    calls = [c for c in server.call_logs() if c["request_id"] == request_id]
    assert [(c["model"], c["category"]) for c in calls] == [
        ("fake-stream-slow-start", "timeout"),
        ("fake-stream-slow-start", "timeout"),
        ("gpt-4o", None),
    ]
    assert calls[-1]["fallback_from"] == "fake-stream-slow-start"
    # Both timed-out attempts are seen as aborted when the gateway wakes: not in the next test.
    assert gateway.wait_for(lambda: gateway.aborted_streams == 2, timeout=3)


def test_a_client_that_stops_reading_does_not_pin_the_upstream(
    server: Server, gateway: FakeGateway
) -> None:
    body = b'{"prompt": "hi", "model": "fake-firehose"}'
    headers = "".join(f"{name}: {value}\r\n" for name, value in server.headers.items())
    request = (
        b"POST /v1/chat/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + headers.encode()
        + b"X-Request-ID: stalled-reader\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(request + body)
        client.recv(1024)  # the response has started; now stop reading
        # The service's writes block once the socket buffers fill; after the send timeout it
        # gives up on this client and closes the upstream stream.
        assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=10)

    assert server.call_log("stalled-reader")["status"] == "client_disconnect"


def test_many_clients_hanging_up_at_once_all_stop_their_upstream(
    server: Server, gateway: FakeGateway
) -> None:
    clients = 20
    first_delta = threading.Barrier(clients + 1)

    def hang_up_after_first_delta() -> None:
        with server.stream({"prompt": "hi", "model": "fake-slow"}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    break
            first_delta.wait(timeout=10)

    threads = [threading.Thread(target=hang_up_after_first_delta) for _ in range(clients)]
    for thread in threads:
        thread.start()
    first_delta.wait(timeout=10)
    hung_up = time.monotonic()
    for thread in threads:
        thread.join(timeout=10)

    assert gateway.wait_for(lambda: gateway.aborted_streams == clients, timeout=5)
    # fake-slow sends every 0.2 s, so each relay notices its client at its next write.
    assert time.monotonic() - hung_up < 2.0
    assert gateway.completed_streams == 0
