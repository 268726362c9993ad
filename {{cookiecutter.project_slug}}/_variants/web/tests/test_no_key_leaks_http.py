"""The key never reaches an HTTP client, nor the server's own output, on any path.

One real server process (the production command, at LOG_LEVEL=DEBUG) with the session's
sentinel key; every response's status line, headers and body are checked, then everything the
server printed (its logs, the framework's and the server's own loggers included).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway
from .live_server import Server, run_server

# The key, and pieces of it long enough that no mask could contain them.
KEY_PIECES = (SENTINEL_KEY, SENTINEL_KEY[:20], SENTINEL_KEY[3:23], SENTINEL_KEY[-12:])
FAILURES = [
    pytest.param("fake-error-400", 400, id="invalid-request"),
    pytest.param("fake-error-401", 502, id="auth"),
    pytest.param("fake-error-quota", 502, id="quota"),
    pytest.param("fake-error-402", 502, id="quota-402"),
    pytest.param("fake-error-403", 502, id="permission"),
    pytest.param("fake-error-404-model", 502, id="model-404"),
    pytest.param("fake-error-503-model", 502, id="model-503"),
    pytest.param("fake-error-429", 429, id="rate-limited"),
    pytest.param("fake-error-500", 502, id="unavailable-500"),
    pytest.param("fake-error-502", 502, id="unavailable-502"),
    pytest.param("fake-timeout", 504, id="timeout"),
]
PATHS = ["/v1/chat", "/v1/chat/stream"]


def assert_no_key(text: str) -> None:
    for piece in KEY_PIECES:
        assert piece not in text


@pytest.fixture(scope="module")
def server(gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(gateway, tmp_path_factory.mktemp("no-key-leaks"), LOG_LEVEL="DEBUG") as live:
        yield live


def exchange(server: Server, path: str, body: Any, **kwargs: Any) -> httpx2.Response:
    """One request; its whole response as the client saw it must not hold the key."""
    response = server.post(path, body, **kwargs)
    assert_no_key(server.seen[-1])
    return response


def test_health_check(server: Server) -> None:
    response = httpx2.get(server.url + "/healthz")

    assert response.status_code == 200
    assert_no_key(f"{response.headers} {response.text}")


@pytest.mark.parametrize("path", PATHS)
def test_success(server: Server, path: str) -> None:
    response = exchange(server, path, {"prompt": "say hello please"})

    assert response.status_code == 200


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("model", "status"), FAILURES)
def test_each_error_category(
    server: Server,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    model: str,
    status: int,
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 1.5)  # just past the server's 1 s timeout

    response = exchange(server, path, {"prompt": "hi", "model": model})

    assert response.status_code == status
    assert response.json()["error"]["category"]


@pytest.mark.parametrize("model", ["fake-stream-cut", "fake-stream-error", "fake-stream-no-finish"])
def test_a_stream_that_breaks(server: Server, model: str) -> None:
    response = exchange(server, "/v1/chat/stream", {"prompt": "hi", "model": model})

    assert response.status_code == 200
    assert "event: error" in response.text


@pytest.mark.parametrize(
    ("content", "status"),
    [
        pytest.param(b"{not json", 400, id="not-json"),
        pytest.param(b'{"messages": []}', 422, id="schema"),
    ],
)
def test_a_bad_body(server: Server, content: bytes, status: int) -> None:
    response = httpx2.post(
        server.url + "/v1/chat", content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == status
    assert_no_key(f"{response.headers} {response.text}")


def test_a_key_sent_by_the_client_is_not_logged(server: Server) -> None:
    """A client pastes the key into a prompt and a query string: the access log and the call
    log must still not hold it."""
    response = exchange(
        server, "/v1/chat", {"prompt": f"is {SENTINEL_KEY} valid?"}, params={"k": SENTINEL_KEY}
    )

    assert response.status_code == 200


def test_a_client_that_leaves_a_stream(server: Server, gateway: FakeGateway) -> None:
    with httpx2.stream(
        "POST",
        server.url + "/v1/chat/stream",
        json={"prompt": "hi", "model": "fake-slow"},
        headers={"X-Request-ID": "leaves-early"},
        timeout=10,
    ) as response:
        first = next(response.iter_lines())
        assert_no_key(f"{response.headers} {first}")

    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=3)
    assert server.call_log("leaves-early")["status"] == "client_disconnect"


def test_the_server_output_never_holds_the_key(server: Server) -> None:
    # Its own calls, a success and a failure: run alone (or first, on a pytest-xdist worker),
    # the module's server would have logged nothing yet.
    for model, request_id in (("gpt-4o-mini", "output-ok"), ("fake-error-401", "output-auth")):
        exchange(
            server,
            "/v1/chat",
            {"prompt": "hi", "model": model},
            headers={"X-Request-ID": request_id},
        )
        server.call_log(request_id)
    output = server.output()

    assert '"event": "upstream_call"' in output
    assert_no_key(output)
