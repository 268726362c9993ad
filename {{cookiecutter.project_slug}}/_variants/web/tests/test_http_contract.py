"""The HTTP contract, tested against the real server process on loopback, as clients see it:
statuses, bodies, request ids, parameters, streams, and the key in no response and no log line
(bad request bodies: test_bad_bodies.py).

Streaming and disconnects only behave for real over a socket, so nothing here uses an
in-process test client. One server for the module, at LOG_LEVEL=DEBUG so that the key checks
cover every logger's output (the SDK's, the transport's, the server's).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.settings import KEY_ENV_VAR

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway
from .live_server import PROJECT_ROOT, Server, free_port, parse_events, run_server, server_env
from .server import server_command

ANSWER = "Hello from the fake gateway."
MAX_OUTPUT_TOKENS = 512
PATHS = ["/v1/chat", "/v1/chat/stream"]
# The key, and pieces of it long enough that no mask could contain them.
KEY_PIECES = (SENTINEL_KEY, SENTINEL_KEY[:20], SENTINEL_KEY[3:23], SENTINEL_KEY[-12:])


def assert_no_key(text: str) -> None:
    for piece in KEY_PIECES:
        assert piece not in text


@pytest.fixture(scope="module")
def server(gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(
        gateway,
        tmp_path_factory.mktemp("server"),
        LOG_LEVEL="DEBUG",
        ALLTKN_MAX_OUTPUT_TOKENS=str(MAX_OUTPUT_TOKENS),
    ) as running:
        yield running


# -- plain requests ------------------------------------------------------------------------


def test_healthz_answers_without_calling_the_gateway(server: Server, gateway: FakeGateway) -> None:
    response = server.request("GET", "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]
    assert gateway.requests == []


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        pytest.param("POST", "/v1/chats", 404, "there is no endpoint at /v1/chats", id="404"),
        pytest.param("GET", "/v1/chat", 405, "GET is not allowed on /v1/chat", id="405"),
    ],
)
def test_a_request_no_endpoint_takes_gets_the_error_body(
    server: Server, gateway: FakeGateway, method: str, path: str, status: int, message: str
) -> None:
    response = server.request(
        method, path, json={"prompt": "hi"}, headers={"X-Request-ID": "lost-client"}
    )

    assert response.status_code == status
    error = response.json()["error"]
    assert (error["category"], error["message"]) == ("invalid_request", message)
    assert "POST /v1/chat/stream" in error["hint"]
    assert error["request_id"] == response.headers["x-request-id"] == "lost-client"
    if status == 405:
        assert "POST" in response.headers["allow"]
    assert gateway.requests == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"prompt": "say hello please"}, id="prompt"),
        pytest.param(
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                ]
            },
            id="messages",
        ),
    ],
)
def test_chat_returns_the_answer(
    server: Server, gateway: FakeGateway, body: dict[str, Any]
) -> None:
    response = server.post("/v1/chat", body)

    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["content"] == ANSWER
    assert payload["model"] == "gpt-4o-mini"
    assert payload["usage"]["completion_tokens"] == 6
    assert payload["request_id"] == response.headers["x-request-id"]
    (sent,) = gateway.requests_for("gpt-4o-mini")
    assert sent.headers["authorization"] == f"Bearer {SENTINEL_KEY}"
    prompt = [{"role": "user", "content": body.get("prompt")}]
    assert sent.body["messages"] == body.get("messages", prompt)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("temperature", "max_tokens"),
    [
        pytest.param(0.3, 50, id="typical"),
        pytest.param(0, MAX_OUTPUT_TOKENS, id="zero-temperature-and-the-cap-itself"),
        pytest.param(2, 1, id="the-other-edges"),
    ],
)
def test_temperature_and_max_tokens_reach_the_gateway(
    server: Server, gateway: FakeGateway, path: str, temperature: float, max_tokens: int
) -> None:
    body = {"prompt": "hi", "temperature": temperature, "max_tokens": max_tokens}
    response = server.post(path, body)

    assert response.status_code == 200, response.text
    sent = gateway.requests[-1].body
    assert (sent["temperature"], sent["max_tokens"]) == (temperature, max_tokens)


@pytest.mark.parametrize("path", PATHS)
def test_the_output_cap_is_sent_when_the_request_names_no_max_tokens(
    server: Server, gateway: FakeGateway, path: str
) -> None:
    response = server.post(path, {"prompt": "hi"})

    assert response.status_code == 200, response.text
    sent = gateway.requests[-1].body
    assert sent["max_tokens"] == MAX_OUTPUT_TOKENS  # ALLTKN_MAX_OUTPUT_TOKENS
    assert "temperature" not in sent  # left to the gateway


@pytest.mark.parametrize("path", PATHS)
def test_max_tokens_above_the_cap_is_a_422_naming_the_setting_without_an_upstream_call(
    server: Server, gateway: FakeGateway, path: str
) -> None:
    response = server.post(path, {"prompt": "hi", "max_tokens": MAX_OUTPUT_TOKENS + 1})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["category"] == "invalid_request"
    assert "ALLTKN_MAX_OUTPUT_TOKENS" in error["message"]
    assert f"at most {MAX_OUTPUT_TOKENS}" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert gateway.requests == []


def test_request_id_is_reused_echoed_sent_upstream_and_logged(
    server: Server, gateway: FakeGateway
) -> None:
    body = {"prompt": "hi", "model": "gpt-4o", "user": "u-42", "task": "greeting"}
    response = server.post("/v1/chat", body, headers={"X-Request-ID": "trace-abc.123"})

    assert response.headers["x-request-id"] == "trace-abc.123"
    assert response.json()["request_id"] == "trace-abc.123"
    assert gateway.requests_for("gpt-4o")[0].headers["x-request-id"] == "trace-abc.123"
    entry = server.call_log("trace-abc.123")
    assert (entry["model"], entry["user"], entry["task"], entry["status"]) == (
        "gpt-4o",
        "u-42",
        "greeting",
        "ok",
    )


def test_an_invalid_request_id_is_replaced(server: Server) -> None:
    response = server.post(
        "/v1/chat", {"prompt": "hi"}, headers={"X-Request-ID": "bad id\twith spaces"}
    )
    assert response.headers["x-request-id"] not in ("", "bad id\twith spaces")


@pytest.mark.parametrize(
    ("model", "status", "category"),
    [
        pytest.param("fake-error-401", 502, "auth", id="auth"),
        pytest.param("fake-error-quota", 502, "quota", id="quota"),
        pytest.param("fake-error-402", 502, "quota", id="quota-402"),
        pytest.param("fake-error-403", 502, "permission", id="permission"),
        pytest.param("fake-error-404-model", 502, "model_not_found", id="model-404"),
        pytest.param("fake-error-503-model", 502, "model_not_found", id="model-503"),
        pytest.param("fake-error-400", 400, "invalid_request", id="invalid-upstream"),
        pytest.param("fake-error-429", 429, "rate_limited", id="rate-limited"),
        pytest.param("fake-error-500", 502, "upstream_unavailable", id="unavailable-500"),
        pytest.param("fake-error-502", 502, "upstream_unavailable", id="unavailable-502"),
        pytest.param("fake-timeout", 504, "timeout", id="timeout"),
        pytest.param("fake-html-200", 502, "upstream_unavailable", id="200-html-page"),
        pytest.param("fake-drop", 502, "connection", id="connection"),
    ],
)
@pytest.mark.parametrize("path", PATHS)
def test_gateway_failures_map_to_status_and_category(
    server: Server,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    model: str,
    status: int,
    category: str,
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 1.5)  # just past the server's 1 s timeout
    response = server.post(path, {"prompt": "hi", "model": model})

    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["category"] == category
    assert error["message"]
    assert error["hint"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    assert "用户额度不足" not in response.text  # the gateway's own words stay in the logs
    assert_no_key(server.seen[-1])
    if category == "rate_limited":
        assert response.headers["retry-after"] == "7"


def test_gateway_text_and_request_id_are_logged(server: Server) -> None:
    response = server.post("/v1/chat", {"prompt": "hi", "model": "fake-error-quota"})
    request_id = response.headers["x-request-id"]

    entry = server.call_log(request_id)
    assert entry["status"] == "error"
    assert entry["category"] == "quota"
    assert "用户额度不足" in entry["error"]
    assert entry["upstream_request_id"]


# -- streams -------------------------------------------------------------------------------


def test_stream_sends_deltas_then_done_with_anti_buffering_headers(server: Server) -> None:
    response = server.post("/v1/chat/stream", {"prompt": "say hello please"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    request_id = response.headers["x-request-id"]
    events = parse_events(response.text)
    deltas = [data["delta"] for name, data in events if name == "message"]
    assert "".join(deltas) == ANSWER
    assert len(deltas) == 6
    assert events[-1] == (
        "done",
        {
            "model": "gpt-4o-mini",
            "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9},
            "request_id": request_id,
        },
    )


def test_stream_deltas_reach_the_client_before_the_gateway_finishes(
    server: Server, gateway: FakeGateway
) -> None:
    started = time.monotonic()
    with server.stream({"prompt": "hi", "model": "fake-slow"}) as response:
        first_line = next(response.iter_lines())
        first_after = time.monotonic() - started
    assert first_line == 'data: {"delta":"tok0 "}'
    # fake-slow needs 2 s for its ten deltas; a buffered relay would hold the first until then.
    assert first_after < 1.0
    # Leaving early aborts the rest; wait for it so no late abort is counted in the next test.
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param("fake-stream-cut", id="cut"),
        pytest.param("fake-stream-error", id="error-event"),
        pytest.param("fake-stream-no-finish", id="no-finish-reason"),
    ],
)
def test_a_failure_after_the_stream_began_becomes_an_error_event(
    server: Server, model: str
) -> None:
    response = server.post("/v1/chat/stream", {"prompt": "hi", "model": model})

    assert response.status_code == 200
    events = parse_events(response.text)
    assert events[0][0] == "message"
    name, data = events[-1]
    assert name == "error"
    assert data["error"]["category"] == "stream_interrupted"
    assert data["error"]["hint"]
    assert data["error"]["request_id"] == response.headers["x-request-id"]
    assert all(name != "done" for name, _ in events)
    assert_no_key(server.seen[-1])


def test_a_stream_whose_first_token_never_comes_ends_as_a_timeout(
    server: Server, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 1.5)  # past the server's 1 s read timeout
    response = server.post("/v1/chat/stream", {"prompt": "hi", "model": "fake-stream-slow-start"})

    # The gateway had accepted the stream, so the response (and its keep-alives) had started.
    assert response.status_code == 200
    events = parse_events(response.text)
    assert [name for name, _ in events] == ["error"]
    assert events[0][1]["error"]["category"] == "timeout"  # nothing was delivered: not a cut
    entry = server.call_log(response.headers["x-request-id"])
    assert (entry["status"], entry["category"], entry["ttft_ms"]) == ("error", "timeout", None)
    assert entry["upstream_request_id"]
    # The gateway notices the closed connection when it wakes; not in the next test's count.
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)


def test_a_client_that_hangs_up_stops_the_upstream_stream(
    server: Server, gateway: FakeGateway
) -> None:
    with server.stream(
        {"prompt": "hi", "model": "fake-slow"}, headers={"X-Request-ID": "hang-up-1"}
    ) as response:
        first = next(response.iter_lines())
        assert_no_key(f"{response.headers} {first}")
    # The relay notices at its next write (fake-slow sends every 0.2 s), then closes upstream.
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=3)
    entry = server.call_log("hang-up-1")
    assert entry["status"] == "client_disconnect"
    assert gateway.completed_streams == 0


# -- the key -------------------------------------------------------------------------------


def test_a_key_sent_by_the_client_is_not_logged(server: Server) -> None:
    """A client pastes the key into a prompt and a query string: neither the access log nor
    the call log may hold it."""
    response = server.post(
        "/v1/chat",
        {"prompt": f"is {SENTINEL_KEY} valid?"},
        params={"k": SENTINEL_KEY},
        headers={"X-Request-ID": "pasted-key"},
    )

    assert response.status_code == 200
    server.call_log("pasted-key")
    assert_no_key(server.output())


def test_the_key_is_in_no_response_and_no_server_output(server: Server) -> None:
    # Its own calls, a success and a failure of each endpoint: run alone (or first, on a
    # pytest-xdist worker), the module's server would have answered and logged nothing yet.
    for path in PATHS:
        for model in ("gpt-4o-mini", "fake-error-401"):
            request_id = f"key-check-{model}-{path.count('/')}"
            headers = {"X-Request-ID": request_id}
            server.post(path, {"prompt": "hi", "model": model}, headers=headers)
            server.call_log(request_id)

    assert server.seen
    for seen in server.seen:
        assert_no_key(seen)
    output = server.output()
    assert '"event": "upstream_call"' in output
    assert '"level": "DEBUG"' in output  # the loggers that could leak it were all on
    assert_no_key(output)


# -- start-up ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # With two workers: the server must stop, not respawn failing workers forever. (A
        # missing key takes the same path, `load_settings_or_exit`: see test_settings.py.)
        pytest.param(KEY_ENV_VAR, "<your-alltkn-api-key>", id="key-placeholder-2-workers"),
        pytest.param("WEB_CONCURRENCY", "65", id="workers-too-many"),
        pytest.param("ALLTKN_METRICS", "maybe", id="metrics-switch-neither-on-nor-off"),
    ],
)
def test_the_server_refuses_to_start_with_a_bad_setting(
    gateway: FakeGateway, name: str, value: str
) -> None:
    env = {**server_env(gateway, WEB_CONCURRENCY="2"), name: value}
    done = subprocess.run(
        server_command(free_port()),
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    problem = [line for line in done.stderr.splitlines() if name in line]
    assert len(problem) == 1
    if name == KEY_ENV_VAR:
        assert ".env.example" in problem[0]
