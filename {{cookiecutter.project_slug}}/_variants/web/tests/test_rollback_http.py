"""The rollback switches as HTTP clients see them, on a real server process (docs/RUNBOOK.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_gateway import FakeGateway
from .live_server import Server, parse_events, run_server

ANSWER = "Hello from the fake gateway."
MAX_INPUT_CHARS = 40


@pytest.fixture(scope="module")
def server(gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with every switch thrown, as an operator rolling back would set them."""
    with run_server(
        gateway,
        tmp_path_factory.mktemp("rollback"),
        ALLTKN_STREAMING="off",
        ALLTKN_FALLBACK_MODELS="gpt-4o",
        ALLTKN_MAX_INPUT_CHARS=str(MAX_INPUT_CHARS),
    ) as running:
        yield running


def test_streaming_off_still_answers_the_stream_endpoint_with_one_delta(
    server: Server, gateway: FakeGateway
) -> None:
    response = server.post("/v1/chat/stream", {"prompt": "say hello please"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    events = parse_events(response.text)
    assert events[0] == ("message", {"delta": ANSWER})
    name, done = events[-1]
    assert (name, done["model"]) == ("done", "gpt-4o-mini")
    assert done["usage"]["completion_tokens"] == 6
    assert len(events) == 2
    (sent,) = gateway.requests_for("gpt-4o-mini")
    assert "stream" not in sent.body
    entry = server.call_log(response.headers["x-request-id"])
    assert entry["stream"] is False


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/stream"])
def test_the_fallback_model_answers_and_is_returned_and_logged(
    server: Server, gateway: FakeGateway, path: str
) -> None:
    response = server.post(path, {"prompt": "say hello please", "model": "fake-error-503-model"})

    assert response.status_code == 200
    if path == "/v1/chat":
        assert (response.json()["content"], response.json()["model"]) == (ANSWER, "gpt-4o")
    else:
        assert parse_events(response.text)[-1][1]["model"] == "gpt-4o"
    assert len(gateway.requests_for("fake-error-503-model")) == 1
    assert len(gateway.requests_for("gpt-4o")) == 1
    entry = server.call_log(response.headers["x-request-id"])
    assert (entry["model"], entry["fallback_from"]) == ("gpt-4o", "fake-error-503-model")


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/stream"])
def test_no_fallback_on_auth_or_quota(server: Server, gateway: FakeGateway, path: str) -> None:
    for model, category in (("fake-error-401", "auth"), ("fake-error-quota", "quota")):
        response = server.post(path, {"prompt": "hi", "model": model})
        assert response.status_code == 502
        assert response.json()["error"]["category"] == category
    assert gateway.requests_for("gpt-4o") == []


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/stream"])
def test_over_long_input_is_refused_with_400_before_any_upstream_call(
    server: Server, gateway: FakeGateway, path: str
) -> None:
    prompt = "x" * (MAX_INPUT_CHARS + 1)
    response = server.post(path, {"prompt": prompt})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["category"] == "invalid_request"
    assert f"the limit is {MAX_INPUT_CHARS} characters" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert gateway.requests == []
