"""`POST /v1/jobs` and `GET /v1/jobs/{id}` for real: the server process, a `worker` process,
the fake gateway and a real Redis. A bad body gets what `/v1/chat` gets: `test_bad_bodies.py`
runs its table on `/v1/jobs` too."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

{% if cookiecutter.caller_auth == "keys" -%}
from {{ cookiecutter.package_name }} import callers
{% endif -%}
from {{ cookiecutter.package_name }}.jobs import JobStore
from {{ cookiecutter.package_name }}.request import ChatRequest

from .conftest import ANSWER, HELLO, SENTINEL_KEY, free_port
from .fake_gateway import FakeGateway
from .live_server import Server, run_server
from .queue_processes import queue_env, workers  # noqa: F401
from .redis_server import redis_server  # noqa: F401

pytestmark = pytest.mark.usefixtures("queue_env")
UNKNOWN = "0" * 32


def get(server: Server, job_id: str, **kwargs: Any) -> httpx2.Response:
    return server.request("GET", f"/v1/jobs/{job_id}", **kwargs)


def queue(server: Server, body: dict[str, Any], **kwargs: Any) -> str:
    queued = server.post("/v1/jobs", body, **kwargs)
    assert queued.status_code == 202, queued.text
    job_id = str(queued.json()["job_id"])
    assert queued.json() == {"job_id": job_id}
    assert queued.headers["location"] == f"/v1/jobs/{job_id}"
    return job_id


def finished(server: Server, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """The job's state once it is no longer pending (polled as a client would)."""
    deadline = time.monotonic() + timeout
    while True:
        response = get(server, job_id)
        assert response.status_code == 200, response.text
        if response.json()["status"] != "pending":
            return dict(response.json())
        assert time.monotonic() < deadline, f"job {job_id} still pending"
        time.sleep(0.1)


def assert_error(response: httpx2.Response, status: int, category: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"]
    error = dict(response.json()["error"])
    assert sorted(error) == ["category", "hint", "message", "request_id"]
    assert error["category"] == category
    assert "\n" not in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def test_a_job_is_answered_by_a_worker_and_its_caller_gets_the_result(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """Queued over HTTP before any worker runs (pending), then answered by a worker process:
    done with `collect`'s result, or failed with the error body and its category."""
    with run_server(gateway, tmp_path) as server:
        job_id = queue(server, {"prompt": HELLO, "max_tokens": 20})
        failing = queue(server, {"prompt": "x", "model": "fake-error-400"})
        assert get(server, job_id).json() == {"status": "pending"}
        assert gateway.requests == []  # queued, not called
        with workers(tmp_path, concurrency=2):
            done, failed = finished(server, job_id), finished(server, failing)
    assert done["status"] == "done"
    result = done["result"]
    assert sorted(result) == ["content", "duration_ms", "model", "usage"]
    assert result["content"] == ANSWER
    assert result["model"] == "gpt-4o-mini"
    assert result["usage"]["total_tokens"] > 0
    (call,) = gateway.requests_for("gpt-4o-mini")
    assert call.headers["x-request-id"] == job_id  # the job's id is its request id
    assert call.body["max_tokens"] == 20
    assert sorted(failed) == ["error", "status"]
    assert failed["status"] == "failed"
    assert failed["error"]["category"] == "invalid_request"
    assert failed["error"]["request_id"] == failing
    assert failed["error"]["message"]
    assert failed["error"]["hint"]
    assert len(gateway.requests_for("fake-error-400")) == 1  # not retried
    assert SENTINEL_KEY not in "".join(server.seen)
{%- if cookiecutter.caller_auth == "keys" %}


def test_a_caller_sees_only_its_own_jobs_and_its_limits_hold_at_enqueue(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """Another caller's job id answers exactly as an unknown one (404), so ids cannot be
    probed; jobs `enqueue` queued belong to no caller. The caller key and the caller's limits
    are checked when a job is queued, as for /v1/chat."""
    file = tmp_path / "callers.json"
    keys = {name: callers.add(file, name) for name in ("alice", "bob")}
    keys["once"] = callers.add(file, "once", rpm=1)
    auth = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
    with run_server(gateway, tmp_path, ALLTKN_CALLERS_FILE=str(file)) as server:
        job_id = queue(server, {"prompt": HELLO}, headers=auth["alice"])
        from_the_cli = JobStore(os.environ["ALLTKN_QUEUE_URL"]).create(ChatRequest(prompt="x"))
        mine = get(server, job_id, headers=auth["alice"])
        theirs = get(server, job_id, headers=auth["bob"])
        unknown = get(server, UNKNOWN, headers=auth["bob"])
        not_an_id = get(server, "not-a-job-id", headers=auth["bob"])
        cli_job = get(server, from_the_cli, headers=auth["alice"])
        no_key_get = get(server, job_id)
        no_key_post = server.post("/v1/jobs", {"prompt": HELLO})
        first = server.post("/v1/jobs", {"prompt": HELLO}, headers=auth["once"])
        second = server.post("/v1/jobs", {"prompt": HELLO}, headers=auth["once"])
    assert mine.json() == {"status": "pending"}
    refused = (theirs, unknown, not_an_id, cli_job)
    refusals = [assert_error(response, 404, "job_not_found") for response in refused]
    assert len({(error["message"], error["hint"]) for error in refusals}) == 1
    assert job_id not in theirs.text
    assert_error(no_key_get, 401, "caller_auth")
    assert_error(no_key_post, 401, "caller_auth")
    assert first.status_code == 202
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert assert_error(second, 429, "caller_rate_limited")
    assert second.headers["retry-after"]
    assert gateway.requests == []
{%- else %}


def test_every_job_has_one_anonymous_owner_and_an_unknown_id_is_404(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """Without caller keys every job is everyone's, those `enqueue` queued too; an id that
    names no job is 404 with the error body."""
    with run_server(gateway, tmp_path) as server:
        job_id = queue(server, {"prompt": HELLO})
        from_the_cli = JobStore(os.environ["ALLTKN_QUEUE_URL"]).create(ChatRequest(prompt="x"))
        answers = [get(server, job_id), get(server, from_the_cli)]
        unknown, not_an_id = get(server, UNKNOWN), get(server, "not-a-job-id")
    assert [answer.json() for answer in answers] == [{"status": "pending"}] * 2
    for refused in (unknown, not_an_id):
        assert_error(refused, 404, "job_not_found")
    assert gateway.requests == []
{%- endif %}


def test_a_queue_that_cannot_be_reached_is_503_and_the_service_still_starts(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    # run_server waits for /healthz: the service started without its queue.
    with run_server(gateway, tmp_path, ALLTKN_QUEUE_URL=down) as server:
        queued = server.post("/v1/jobs", {"prompt": HELLO})
        looked_up = get(server, UNKNOWN)
        health = server.request("GET", "/healthz")
    assert health.status_code == 200
    for refused in (queued, looked_up):
        error = assert_error(refused, 503, "queue_unavailable")
        assert "ALLTKN_QUEUE_URL" in error["hint"]
        assert "127.0.0.1" not in refused.text  # where the queue is stays in the log
    assert gateway.requests == []
    assert "cannot reach the queue's Redis at ALLTKN_QUEUE_URL" in server.output()
