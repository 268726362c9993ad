"""The queue end to end: `enqueue`, real `worker` processes, `collect`, against the fake gateway
and a real Redis; and what each command says about bad input."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest
import redis

from {{ cookiecutter.package_name }}.jobs import PENDING, JobStore, QueueSettings
from {{ cookiecutter.package_name }}.request import ChatRequest

from .conftest import ANSWER
from .fake_gateway import FakeGateway
from .queue_processes import queue_env, read_rows, run, workers, write_lines  # noqa: F401
from .redis_server import redis_server  # noqa: F401

pytestmark = pytest.mark.usefixtures("queue_env")


def queue_url() -> str:
    return os.environ["ALLTKN_QUEUE_URL"]


def enqueue(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    done = run("enqueue", str(write_lines(tmp_path / "in.jsonl", rows)))
    assert done.returncode == 0, done.stderr
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(done.stdout, encoding="utf-8")
    return jobs


def test_jobs_go_through_a_worker_and_come_back_with_their_line_ids(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    rows: list[dict[str, object]] = [
        {"id": 1, "prompt": "first"},
        {"id": "two", "messages": [{"role": "user", "content": "second"}], "max_tokens": 20},
        {"id": 3, "prompt": "third", "note": "not sent"},
    ]
    jobs = enqueue(tmp_path, rows)
    ids = jobs.read_text(encoding="utf-8").split()
    assert len(ids) == 3
    assert len(set(ids)) == 3
    with workers(tmp_path, concurrency=2):
        done = run("collect", str(jobs), str(tmp_path / "out.jsonl"), "--wait", timeout=60)
    assert done.returncode == 0, done.stderr
    results = read_rows(tmp_path / "out.jsonl")
    assert [row["id"] for row in results] == [1, "two", 3]  # the JOBS order, the lines' ids
    assert {row["content"] for row in results} == {ANSWER}
    assert all(row["usage"]["total_tokens"] > 0 for row in results)
    calls = gateway.requests_for("gpt-4o-mini")
    assert sorted(call.headers["x-request-id"] for call in calls) == sorted(ids)
    assert "note" not in str([call.body for call in calls])


def test_a_job_delivered_again_after_it_finished_is_not_sent_again(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """A second delivery of a finished job's message (a worker lost after the call, before the
    acknowledgement) costs nothing: the job's result is there."""
    from {{ cookiecutter.package_name }} import worker

    jobs = enqueue(tmp_path, [{"id": 1, "prompt": "once"}])
    job_id = jobs.read_text(encoding="utf-8").strip()
    with workers(tmp_path) as (started,):
        assert run("collect", str(jobs), str(tmp_path / "a.jsonl"), "--wait").returncode == 0
        worker.configure(QueueSettings())
        worker.chat.apply_async(args=[job_id], task_id=job_id)
        deadline = time.monotonic() + 20
        while started.output().count(f"[{job_id}] succeeded") < 2:
            assert time.monotonic() < deadline, started.output()
            time.sleep(0.05)
    assert len(gateway.requests_for("gpt-4o-mini")) == 1


def test_a_failure_that_is_not_retried_fails_the_job_at_once(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    jobs = enqueue(tmp_path, [{"id": "bad", "prompt": "x", "model": "fake-error-400"}])
    with workers(tmp_path):
        done = run("collect", str(jobs), str(tmp_path / "out.jsonl"), "--wait", timeout=60)
    assert done.returncode == 1
    assert "0 done, 1 failed" in done.stderr
    (row,) = read_rows(tmp_path / "out.jsonl")
    assert row["id"] == "bad"
    assert row["error"]["category"] == "invalid_request"
    assert len(gateway.requests_for("fake-error-400")) == 1


def test_retries_are_celery_s_alone_and_stop_after_the_unattended_attempts(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """A 500 each time: 4 attempts in all (no SDK retries multiplying them), each after a
    longer backoff, then the job fails with its category."""
    jobs = enqueue(tmp_path, [{"id": 1, "prompt": "x", "model": "fake-error-500"}])
    with workers(tmp_path):
        done = run("collect", str(jobs), str(tmp_path / "out.jsonl"), "--wait", timeout=90)
    assert done.returncode == 1
    assert read_rows(tmp_path / "out.jsonl")[0]["error"]["category"] == "upstream_unavailable"
    times = [call.at for call in gateway.requests_for("fake-error-500")]
    assert len(times) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.5 * 0.75  # retry.backoff_s: 0.5 s, 1 s, 2 s, up to a quarter less
    assert gaps[2] >= 2 * 0.75


def test_a_429_is_never_retried_before_its_retry_after(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    gateway.once_retry_after = "2"
    try:
        jobs = enqueue(tmp_path, [{"id": 1, "prompt": "x", "model": "fake-429-once"}])
        with workers(tmp_path):
            done = run("collect", str(jobs), str(tmp_path / "out.jsonl"), "--wait", timeout=60)
    finally:
        gateway.once_retry_after = "1"
    assert done.returncode == 0, done.stderr
    first, second = gateway.requests_for("fake-429-once")
    assert first.status == 429
    assert second.status == 200
    assert second.at - first.at >= 2.0


def test_a_job_whose_message_was_lost_is_sent_again(gateway: FakeGateway, tmp_path: Path) -> None:
    """A worker killed between taking a message from the queue and recording it as delivered
    loses it for good (kombu's Redis transport): the job stays pending with no message. The
    workers' sweep sends it again once it is older than the visibility timeout."""
    store = JobStore(queue_url())
    job_id = store.create(ChatRequest(prompt="lost"), line_id=7)  # recorded, never sent
    store.redis.zadd(PENDING, {job_id: time.time() - 60})
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(job_id + "\n", encoding="utf-8")
    short = {"ALLTKN_QUEUE_VISIBILITY_TIMEOUT_S": "20", "ALLTKN_QUEUE_RETRY_AFTER_CAP_S": "1"}
    with workers(tmp_path, **short) as (started,):
        done = run("collect", str(jobs), str(tmp_path / "out.jsonl"), "--wait", timeout=60)
    assert done.returncode == 0, done.stderr
    assert read_rows(tmp_path / "out.jsonl")[0]["id"] == 7
    assert f"job {job_id}: its message was lost; sent again" in started.output()
    assert len(gateway.requests_for("gpt-4o-mini")) == 1


# --- bad input: one line each, naming what is wrong ----------------------------------------------


def test_a_malformed_line_enqueues_nothing(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "prompt": "ok"}\n{"id": 2, "prompt": \n', encoding="utf-8")
    done = run("enqueue", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: IN {path} line 2: not valid JSON")
    assert "nothing was enqueued" in line
    with redis.Redis.from_url(queue_url()) as client:
        assert client.zcard(PENDING) == 0


def test_an_unknown_job_id_is_named(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("0" * 32 + "\n", encoding="utf-8")
    done = run("collect", str(jobs), str(tmp_path / "out.jsonl"))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: JOBS line 1: unknown job id {'0' * 32}")
    jobs.write_text("not-a-job\n", encoding="utf-8")
    done = run("collect", str(jobs), str(tmp_path / "out.jsonl"))
    assert done.stderr.splitlines() == [
        "error: JOBS line 1: 'not-a-job' is not a job id (enqueue prints them)"
    ]


def test_an_unreachable_queue_is_one_line_naming_alltkn_queue_url(tmp_path: Path) -> None:
    from .conftest import free_port

    down = {"ALLTKN_QUEUE_URL": f"redis://127.0.0.1:{free_port()}/0"}
    path = write_lines(tmp_path / "in.jsonl", [{"id": 1, "prompt": "x"}])
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("0" * 32 + "\n", encoding="utf-8")
    for args in (["enqueue", str(path)], ["collect", str(jobs), "out"], ["worker"]):
        done = run(*args, **down)
        assert done.returncode == 2, args
        (line,) = done.stderr.splitlines()
        assert line.startswith("error: cannot reach the queue's Redis at ALLTKN_QUEUE_URL")
        assert line.endswith("start Redis or fix ALLTKN_QUEUE_URL")


def test_a_lost_result_is_named(tmp_path: Path) -> None:
    """The result backend knows the job ran, but its record is gone (evicted, flushed): that
    job is named, and no OUT is half written."""
    jobs = enqueue(tmp_path, [{"id": 1, "prompt": "x"}, {"id": 2, "prompt": "y"}])
    kept, lost = jobs.read_text(encoding="utf-8").split()
    with workers(tmp_path):
        assert run("collect", str(jobs), str(tmp_path / "a.jsonl"), "--wait").returncode == 0
    JobStore(queue_url()).redis.delete(JobStore.key(lost))
    for wait in ([], ["--wait"]):
        done = run("collect", str(jobs), str(tmp_path / "out.jsonl"), *wait)
        assert done.returncode == 1
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"error: job {lost}: its result is lost")
        assert kept not in line
        assert not (tmp_path / "out.jsonl").exists()


def test_a_visibility_timeout_shorter_than_the_worst_call_stops_the_worker() -> None:
    done = run("worker", ALLTKN_QUEUE_VISIBILITY_TIMEOUT_S="30", ALLTKN_TIMEOUT_S="60")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("error[config]: ALLTKN_QUEUE_VISIBILITY_TIMEOUT_S is 30 s, not longer")
