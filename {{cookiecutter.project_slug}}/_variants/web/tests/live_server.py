"""The service as a real server process on loopback, for tests that need real sockets.

Streaming, keep-alives and disconnects only behave for real over a socket, so the HTTP tests
start the service with the production command (see `server.py`) against the fake gateway.
{%- if cookiecutter.caller_auth == "keys" %}
Unless a test brings its own callers file, the server gets one with a caller without limits,
whose key the `Server`'s client sends with every request.
{%- endif %}
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

{% if cookiecutter.caller_auth == "keys" -%}
from {{ cookiecutter.package_name }} import callers
{% endif -%}
from {{ cookiecutter.package_name }}.settings import ENV_NAMES, KEY_ENV_VAR

from .conftest import SENTINEL_KEY, free_port
from .fake_gateway import FakeGateway
from .server import server_command

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Server:
    def __init__(
        self, process: subprocess.Popen[bytes], url: str, log: Path, key: str | None = None
    ) -> None:
        self.process = process
        self.url = url
        self.log = log
        self.key = key  # the caller key its client sends (None: none)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.seen: list[str] = []  # every response head and body, for the key-leak check
        # One client, so its connections are reused: a new one per request (what the
        # module-level `httpx2.post` makes) costs about 30 ms of CPU.
        self.client = httpx2.Client(base_url=url, timeout=10, headers=self.headers)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        response = self.client.request(method, path, **kwargs)
        self.remember(response, response.text)
        return response

    def post(self, path: str, body: Any, **kwargs: Any) -> httpx2.Response:
        return self.request("POST", path, json=body, **kwargs)

    def stream(self, body: Any, **kwargs: Any) -> AbstractContextManager[httpx2.Response]:
        """`POST /v1/chat/stream`, read as it comes; leaving the `with` early hangs up."""
        return self.client.stream("POST", "/v1/chat/stream", json=body, **kwargs)

    def remember(self, response: httpx2.Response, body: str) -> None:
        self.seen.append(f"{response.status_code} {dict(response.headers)} {body}")

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8")

    def call_logs(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for line in self.output().splitlines()
            if line.startswith("{") and '"upstream_call"' in line
        ]

    def call_log(self, request_id: str, timeout: float = 3.0) -> dict[str, Any]:
        """The call log entry for `request_id`, waiting for the server to write it."""
        deadline = time.monotonic() + timeout
        while True:
            found = [entry for entry in self.call_logs() if entry["request_id"] == request_id]
            if found or time.monotonic() > deadline:
                assert found, f"no upstream_call logged for {request_id}:\n{self.output()}"
                return found[-1]
            time.sleep(0.02)


def server_env(gateway: FakeGateway, **overrides: str) -> dict[str, str]:
    """The service's settings pointed at the fake; none of the service's variables set in the
    environment the tests run in (a rollback switch, say, or a metrics directory that servers
    running side by side would share) reaches the server."""
    ours = {*ENV_NAMES.values(), "PROMETHEUS_MULTIPROC_DIR"}
    ours |= {name for name in os.environ if name.startswith("OTEL_")}  # an OTLP endpoint
    outside = {name: value for name, value in os.environ.items() if name not in ours}
    env = {
        **outside,
        KEY_ENV_VAR: SENTINEL_KEY,
        "ALLTKN_BASE_URL": gateway.base_url,
        "ALLTKN_MODEL": "gpt-4o-mini",
        # Any model: the tests name the fake's scenarios. Tests of the allowlist set their own.
        "ALLTKN_ALLOWED_MODELS": "*",
        "ALLTKN_TIMEOUT_S": "1",
        "ALLTKN_MAX_RETRIES": "0",
        "OPENAI_API_KEY": "decoy-openai-key-value",  # pragma: allowlist secret
        "OPENAI_BASE_URL": "http://127.0.0.1:9/never-used",
    }
    env.update(overrides)
    return env


@contextmanager
def run_server(
    gateway: FakeGateway, log_dir: Path, *, workers: int = 1, **env: str
) -> Iterator[Server]:
    """Start the service with `workers` worker processes, wait for /healthz, stop it
    afterwards; its output goes to a file.
{%- if cookiecutter.caller_auth == "keys" %} Without ALLTKN_CALLERS_FILE in `env`, it gets a
    callers file in `log_dir` with one caller without limits, `tests`, whose key `Server.key`
    holds and its client sends.
{%- endif %}"""
    key = None
{%- if cookiecutter.caller_auth == "keys" %}
    if "ALLTKN_CALLERS_FILE" not in env:
        callers_file = log_dir / "callers.json"
        key = callers.add(callers_file, "tests")
        env["ALLTKN_CALLERS_FILE"] = str(callers_file)
{%- endif %}
    port = free_port()
    log = log_dir / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            server_command(port, workers),
            cwd=PROJECT_ROOT,
            env=server_env(gateway, **{"WEB_CONCURRENCY": str(workers), **env}),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    running = Server(process, f"http://127.0.0.1:{port}", log, key)
    try:
        _wait_until_healthy(running, workers)
        yield running
    finally:
        running.client.close()
        process.terminate()  # a graceful stop: gunicorn's quick one (SIGINT) can hang a worker
        process.wait(timeout=10)
    output = running.output()
    assert SENTINEL_KEY not in output
    assert key is None or key not in output
    assert "Traceback" not in output, output


def _wait_until_healthy(server: Server, workers: int) -> None:
    # Each worker may import the app in a new interpreter (uvicorn): slow on a busy machine.
    deadline = time.monotonic() + 20 + 10 * (workers - 1)
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited at start:\n{server.output()}")
        try:
            if httpx2.get(server.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            time.sleep(0.1)
    pytest.fail(f"server did not answer /healthz:\n{server.output()}")


def parse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse an SSE body into (event name, data) pairs; unnamed events are "message", and
    comment-only blocks (keep-alives) are skipped."""
    events = []
    for block in text.strip().split("\n\n"):
        name, data = "message", None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
        if data is not None:
            events.append((name, json.loads(data)))
    return events
