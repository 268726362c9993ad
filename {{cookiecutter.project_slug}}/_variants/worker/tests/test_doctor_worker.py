"""`doctor` in a worker bake: ALLTKN_QUEUE_URL, a PING of the queue's Redis (a real one,
`redis_server`, and ports where nothing answers) and the visibility timeout against the worst
call, judged by the very check `worker` makes at start; never the URL's password."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from .queue_processes import run, workers
from .redis_server import RedisServer, redis_server  # noqa: F401
from .test_doctor import (
    TIMEOUT_S,
    checks_of,
    closed_port,  # noqa: F401
    doctor_env,  # noqa: F401
    doctor_json,
    run_doctor,
    silent_port,  # noqa: F401
)

PASSWORD = "-".join(("queue", "pass", "4321"))  # built here: no secret-shaped literal


@pytest.fixture
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this test's own that asks for PASSWORD."""
    server = RedisServer(tmp_path_factory.mktemp("private-redis")).start()
    with redis.Redis.from_url(server.url) as client:
        client.config_set("requirepass", PASSWORD)
    yield server
    server.stop()


def assert_no_password(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text
        assert PASSWORD[-4:] not in text


def test_a_queue_behind_a_password_passes_without_showing_it(
    doctor_env: Callable[..., None],  # noqa: F811
    private_redis: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = private_redis.port
    doctor_env(ALLTKN_QUEUE_URL=f"redis://default:{PASSWORD}@127.0.0.1:{port}/2")
    document = doctor_json(capsys)
    checks = checks_of(document)

    assert document["exit_code"] == 0, checks
    shown = f"redis://127.0.0.1:{port}/2 (with a password, not shown)"
    assert (checks["queue_url"]["status"], checks["queue_url"]["detail"]) == ("pass", shown)
    assert checks["queue"]["status"] == "pass"
    assert re.fullmatch(
        rf"Redis at 127\.0\.0\.1:{port} answered PING in \d+ ms: the queue",
        checks["queue"]["detail"],
    )
    detail = "3600 s, longer than the worst call (80 s)"  # 60 s cap + 10 s pace + 10 s timeout
    assert (checks["visibility"]["status"], checks["visibility"]["detail"]) == ("pass", detail)
    code, out, err = run_doctor(capsys, "--support")
    assert code == 0
    assert_no_password(out, err, json.dumps(document))


def test_the_workers_running_are_counted(
    doctor_env: Callable[..., None],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    row = checks_of(doctor_json(capsys))["workers"]
    assert (row["status"], row["detail"]) == (
        "warn",
        "no worker seen in the last 30 s: queued jobs wait for one",
    )
    assert row["hint"].endswith(" worker")

    with workers(tmp_path, count=2, concurrency=3):
        row = checks_of(doctor_json(capsys))["workers"]
    assert (row["status"], row["detail"]) == ("pass", "2 workers running, 6 jobs at once in all")

    row = checks_of(doctor_json(capsys))["workers"]  # stopped: each took its key away
    assert row["status"] == "warn"


def test_an_unset_queue_url_is_a_warning_naming_the_default(
    doctor_env: Callable[..., None],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    doctor_env(ALLTKN_QUEUE_URL=None)
    row = checks_of(doctor_json(capsys))["queue_url"]

    assert row["status"] == "warn"
    assert row["detail"] == "ALLTKN_QUEUE_URL is not set: the queue is redis://127.0.0.1:6379/0"
    assert "set ALLTKN_QUEUE_URL" in row["hint"]


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        pytest.param(
            "http://default:{password}@127.0.0.1:6379/0",
            "ALLTKN_QUEUE_URL must start with redis://, rediss:// or unix://",
            id="not-redis",
        ),
        pytest.param(
            "redis://default:{password}@127.0.0.1:port/0",
            "ALLTKN_QUEUE_URL has a port that is not a number: redis://host:6379/0",
            id="bad-port",
        ),
    ],
)
def test_a_malformed_queue_url_is_named_not_shown(
    doctor_env: Callable[..., None],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    url: str,
    detail: str,
) -> None:
    doctor_env(ALLTKN_QUEUE_URL=url.format(password=PASSWORD))
    document = doctor_json(capsys)
    checks = checks_of(document)

    assert document["exit_code"] == 1
    assert checks["queue_url"]["status"] == "fail"
    assert checks["queue_url"]["detail"].startswith(detail)
    assert "refuse it too" in checks["queue_url"]["hint"]
    for row in ("queue", "visibility"):  # each waits for a valid URL
        assert checks[row]["status"] == "skip"
        assert "needs the queue URL check" in checks[row]["detail"]
    assert_no_password(json.dumps(document))


@pytest.mark.parametrize("port", ["closed", "silent"])
def test_an_unreachable_queue_fails_in_time_without_its_password(
    doctor_env: Callable[..., None],  # noqa: F811
    closed_port: int,  # noqa: F811
    silent_port: int,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    port: str,
) -> None:
    """A Redis that is down (nothing on the port) or hung (it accepts, never answers)."""
    number = silent_port if port == "silent" else closed_port
    url = f"redis://default:{PASSWORD}@127.0.0.1:{number}/0"
    doctor_env(ALLTKN_QUEUE_URL=url, ALLTKN_TIMEOUT_S=str(TIMEOUT_S))

    started = time.monotonic()
    code, out, err = run_doctor(capsys, "--support")
    elapsed = time.monotonic() - started

    assert code == 1
    assert elapsed < 2 * TIMEOUT_S
    error = "TimeoutError" if port == "silent" else "ConnectionError"
    assert f"cannot reach Redis at 127.0.0.1:{number} ({error})" in out
    assert "ALLTKN_QUEUE_URL" in out  # the hint names the variable
    report = next(tmp_path.glob("support-reports/support-report-*.txt")).read_text(encoding="utf-8")
    assert_no_password(out, err, report, json.dumps(doctor_json(capsys)))


def test_a_visibility_timeout_the_worker_refuses_fails_with_its_words(
    doctor_env: Callable[..., None],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    doctor_env(ALLTKN_QUEUE_VISIBILITY_TIMEOUT_S="30", ALLTKN_TIMEOUT_S="60")
    document = doctor_json(capsys)
    row = checks_of(document)["visibility"]

    assert (document["exit_code"], row["status"]) == (1, "fail")
    assert row["detail"].startswith("ALLTKN_QUEUE_VISIBILITY_TIMEOUT_S is 30 s, not longer")
    assert "refuses to start" in row["hint"]
    # The worker, started with the same settings.
    done = run("worker", ALLTKN_QUEUE_VISIBILITY_TIMEOUT_S="30", ALLTKN_TIMEOUT_S="60")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error[config]: {row['detail']}"]
