"""One log format: everything the real server process writes is a JSON line like the call log.

{%- if cookiecutter.framework == "fastapi" %}
The service runs as in production (`serve`: uvicorn); uvicorn's own lines and its access lines
{%- else %}
The service runs as in production (gunicorn with gunicorn.conf.py); gunicorn's own lines and its
access lines
{%- endif %}
must come out with the same keys as the service's (`ts`, `level`, `logger`, `request_id` where
known), and the key nowhere, not even when a client puts it in a URL.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway
from .live_server import Server, run_server

SERVER = "{{ "uvicorn" if cookiecutter.framework == "fastapi" else "gunicorn" }}"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def server(gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No ALLTKN_ALLOWED_MODELS: the default allowlist, ALLTKN_MODEL and the fallback models
    (here one that fails, for the error lines; a model never falls back to itself)."""
    with run_server(
        gateway,
        tmp_path_factory.mktemp("server-logs"),
        LOG_LEVEL="INFO",
        ALLTKN_ALLOWED_MODELS="",
        ALLTKN_FALLBACK_MODELS="fake-error-500",
    ) as live:
        yield live
    lines(live)  # its shutdown lines too


def lines(server: Server) -> list[dict[str, Any]]:
    """Every line the server wrote (stdout and stderr), each of which must be a JSON object."""
    parsed = []
    for line in server.output().splitlines():
        entry = json.loads(line)  # fails on any line in another format
        assert isinstance(entry, dict), line
        parsed.append(entry)
    return parsed


def access_line(server: Server, request_id: str) -> dict[str, Any]:
    """The server's access line for `request_id`, waiting for it to be written."""
    deadline = time.monotonic() + 3
    while True:
        found = [
            entry
            for entry in lines(server)
            if entry["logger"] == f"{SERVER}.access" and entry.get("request_id") == request_id
        ]
        if found or time.monotonic() > deadline:
            assert found, f"no access line for {request_id}:\n{server.output()}"
            return found[-1]
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("model", "status", "outcome"),
    [("gpt-4o-mini", 200, "ok"), ("fake-error-500", 502, "error")],
)
def test_a_request_gets_an_access_line_with_its_status_and_request_id(
    server: Server, model: str, status: int, outcome: str
) -> None:
    request_id = f"logs-{outcome}-1"
    response = server.post(
        "/v1/chat", {"prompt": "hi", "model": model}, headers={"X-Request-ID": request_id}
    )

    assert response.status_code == status
    line = access_line(server, request_id)
    assert line["event"] == "access"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/chat", status)
    assert line["level"] == "INFO"
    assert line["client"].startswith("127.0.0.1")
{%- if cookiecutter.framework == "flask" %}
    assert line["duration_ms"] >= 0
{%- endif %}
    assert server.call_log(request_id)["status"] == outcome  # the call line shares the id


def test_a_model_outside_the_allowlist_is_a_403_with_an_access_line_and_no_call(
    server: Server, gateway: FakeGateway
) -> None:
    response = server.post(
        "/v1/chat",
        {"prompt": "hi", "model": "gpt-4.5-preview"},
        headers={"X-Request-ID": "logs-403-1"},
    )

    assert response.status_code == 403
    assert response.json()["error"]["category"] == "model_not_allowed"
    assert access_line(server, "logs-403-1")["status"] == 403
    assert gateway.requests == []
    assert not [entry for entry in server.call_logs() if entry["request_id"] == "logs-403-1"]


def test_the_start_says_whether_anyone_can_call_the_service(server: Server) -> None:
    open_to_anyone = [entry for entry in lines(server) if "anyone" in entry.get("message", "")]
{%- if cookiecutter.caller_auth == "none" %}
    # caller_auth=none: one warning, at start, before the server took any request.
    assert len(open_to_anyone) == 1, open_to_anyone
    (warning,) = open_to_anyone
    assert warning["level"] == "WARNING"
    assert "caller_auth=none" in warning["message"]
    starts = [entry["ts"] for entry in lines(server) if entry["logger"] == f"{SERVER}.access"]
    assert warning["ts"] <= min(starts)
{%- else %}
    assert open_to_anyone == []  # callers need a key
{%- endif %}


def test_a_key_in_a_url_is_masked_in_the_access_line(server: Server) -> None:
    response = httpx2.get(
        f"{server.url}/nowhere?api_key={SENTINEL_KEY}",
        headers={"X-Request-ID": "logs-404-1"},
        timeout=5,
    )

    assert response.status_code == 404
    line = access_line(server, "logs-404-1")
    assert line["status"] == 404
    assert line["path"] == f"/nowhere?api_key=****{SENTINEL_KEY[-4:]}"
    assert SENTINEL_KEY not in server.output()


def test_every_line_the_server_wrote_has_the_same_keys(server: Server) -> None:
    server.post("/v1/chat", {"prompt": "hi"}, headers={"X-Request-ID": "logs-ok-2"})
    access_line(server, "logs-ok-2")

    written = lines(server)
    for entry in written:
        assert TIMESTAMP.fullmatch(entry["ts"]), entry
        assert entry["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, entry
        assert entry["logger"], entry
    loggers = {entry["logger"] for entry in written}
    # The server's own start-up lines, its access lines and the service's call lines.
    assert {f"{SERVER}.error", f"{SERVER}.access"} <= loggers, loggers
    assert any(entry.get("event") == "upstream_call" for entry in written)
    assert SENTINEL_KEY not in server.output()
