"""`doctor` with caller keys: the callers file and the store of the callers' limits (a real
Redis, `redis_server`), with the same contract as its other checks (`--json`, `--support`, exit
codes, no key, and no password from ALLTKN_LIMITS_REDIS_URL)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }} import callers, callers_doctor

from .redis_server import RedisServer, redis_server  # noqa: F401
from .test_doctor import (
    TIMEOUT_S,
    checks_of,
    closed_port,  # noqa: F401
    doctor_env,  # noqa: F401
    doctor_json,
    doctor_process,
    field,
    run_doctor,
    silent_port,  # noqa: F401
)

PASSWORD = "-".join(("redis", "pass", "5678"))  # built here: no secret-shaped literal


@pytest.fixture
def callers_file(doctor_env: Callable[..., None], tmp_path: Path) -> Path:  # noqa: F811
    """The callers file the doctor reads (doctor_env wrote one caller without limits), for a
    service of one worker."""
    doctor_env(WEB_CONCURRENCY="1")
    return tmp_path / "callers.json"


def limited(path: Path) -> str:
    """Add a caller with limits to the file; returns its key."""
    return callers.add(path, "limited", rpm=10, daily_tokens=5000)


# -- the callers file ---------------------------------------------------------------------------


def test_callers_and_their_limits_are_counted(
    callers_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = [limited(callers_file), callers.add(callers_file, "batch", models=["gpt-4o-mini"])]
    code, out, _ = run_doctor(capsys)

    assert code == 0, out
    assert re.search(r"^PASS  callers file .*  3 callers, 1 with limits$", out, re.M)
    assert not any(key in out for key in keys)  # the doctor never sees a key, only its hash


BAD_FILES = {  # what is wrong with the file: what the doctor says
    "missing": "does not exist: create a caller with `keys create NAME`",
    "empty": "is empty",
    "not-json": "is not valid JSON",
    "world-readable": "is readable by every user: run chmod 600 callers.json",
}


@pytest.mark.parametrize("wrong", BAD_FILES)
def test_a_bad_callers_file_fails_with_its_one_line(
    callers_file: Path, capsys: pytest.CaptureFixture[str], wrong: str
) -> None:
    if wrong == "missing":
        callers_file.unlink()
    elif wrong == "world-readable":
        callers_file.chmod(0o644)
    else:  # rewritten in place: still mode 0600
        callers_file.write_text({"empty": "", "not-json": "{callers"}[wrong], encoding="utf-8")
    document = doctor_json(capsys)
    checks = checks_of(document)

    assert (document["exit_code"], checks["callers"]["status"]) == (1, "fail")
    assert checks["callers"]["detail"].startswith("callers file callers.json ")
    assert BAD_FILES[wrong] in checks["callers"]["detail"]
    assert "refuse to start" in checks["callers"]["hint"]
    assert checks["limits"]["status"] == "skip"
    assert "needs the callers file check" in checks["limits"]["detail"]
    assert checks["stream"]["status"] == "pass"  # the gateway is checked all the same
    assert [c["id"] for c in document["checks"] if c["status"] == "fail"] == ["callers"]


def test_a_callers_file_with_no_caller_is_a_warning(
    callers_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    callers.remove(callers_file, "tests")
    document = doctor_json(capsys)
    row = checks_of(document)["callers"]

    assert (document["exit_code"], row["status"]) == (0, "warn")
    assert "all get 401" in row["detail"]
    assert "keys create NAME" in row["hint"]


# -- limits counted in this process (ALLTKN_LIMITS_REDIS_URL not set) ---------------------------


@pytest.mark.parametrize(
    ("has_limits", "workers", "status"),
    [
        pytest.param(False, "8", "pass", id="no-limits-any-workers"),
        pytest.param(True, "1", "warn", id="limits-one-worker"),
        pytest.param(True, "3", "fail", id="limits-three-workers"),
    ],
)
def test_limits_without_redis(
    callers_file: Path,
    doctor_env: Callable[..., None],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    has_limits: bool,
    workers: str,
    status: str,
) -> None:
    if has_limits:
        limited(callers_file)
    doctor_env(WEB_CONCURRENCY=workers)
    document = doctor_json(capsys)
    row = checks_of(document)["limits"]

    assert row["status"] == status
    assert document["exit_code"] == (1 if status == "fail" else 0)
    if status == "pass":
        assert row["detail"] == "no caller has limits (ALLTKN_LIMITS_REDIS_URL not set)"
    elif status == "warn":
        assert row["detail"] == "limits counted in this process only: one worker"
        assert "ALLTKN_LIMITS_REDIS_URL" in row["hint"]
    else:  # the service would refuse to start: each worker would count alone
        assert row["detail"].startswith("3 workers (WEB_CONCURRENCY=3) would each count")
        assert "caller limited" in row["detail"]
        assert "ALLTKN_LIMITS_REDIS_URL is not set" in row["detail"]
        assert "refuses to start" in row["hint"]


def test_unset_web_concurrency_means_the_servers_default(
    callers_file: Path,
    doctor_env: Callable[..., None],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    limited(callers_file)
    doctor_env(WEB_CONCURRENCY=None)
    row = checks_of(doctor_json(capsys))["limits"]

    # FastAPI (`serve`, uvicorn): one worker; Flask (gunicorn.conf.py): two.
    if callers_doctor.DEFAULT_WORKERS > 1:
        assert row["status"] == "fail"
        assert row["detail"].startswith("2 workers (WEB_CONCURRENCY unset) would each count")
    else:
        assert row["status"] == "warn"


# -- Redis (ALLTKN_LIMITS_REDIS_URL set) --------------------------------------------------------


def test_a_running_redis_answers_ping(
    callers_file: Path,
    doctor_env: Callable[..., None],  # noqa: F811
    redis_server: RedisServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    limited(callers_file)
    doctor_env(ALLTKN_LIMITS_REDIS_URL=redis_server.url, WEB_CONCURRENCY="4")
    code, out, _ = run_doctor(capsys)

    assert code == 0, out
    where = f"127.0.0.1:{redis_server.port}"
    assert re.search(rf"^PASS  limits store .*Redis at {where} answered PING in \d+ ms", out, re.M)


@pytest.mark.parametrize("port", ["closed", "silent"])
def test_unreachable_redis_fails_in_time_without_its_password(
    callers_file: Path,
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
    doctor_env(ALLTKN_LIMITS_REDIS_URL=url, ALLTKN_TIMEOUT_S=str(TIMEOUT_S))

    started = time.monotonic()
    code, out, err = run_doctor(capsys, "--support")
    elapsed = time.monotonic() - started

    assert code == 1
    assert elapsed < 2 * TIMEOUT_S
    error = "TimeoutError" if port == "silent" else "ConnectionError"
    assert f"cannot reach Redis at 127.0.0.1:{number} ({error})" in out
    assert "ALLTKN_LIMITS_REDIS_URL" in out  # the hint names the variable
    report = next(tmp_path.glob("support-reports/support-report-*.txt")).read_text(encoding="utf-8")
    for text in (out, err, report, json.dumps(doctor_json(capsys))):
        assert PASSWORD not in text
        assert PASSWORD[-4:] not in text


@pytest.mark.parametrize(
    ("url", "row", "detail"),
    [
        pytest.param(
            "http://default:{password}@127.0.0.1:6379/0",
            *("settings", "ALLTKN_LIMITS_REDIS_URL must start with redis://"),
            id="not-redis",
        ),
        pytest.param(
            "redis://default:{password}@127.0.0.1:port/0",
            *("settings", "ALLTKN_LIMITS_REDIS_URL has a port that is not a number"),
            id="bad-port",
        ),
    ],
)
def test_a_malformed_redis_url_is_named_not_shown(
    callers_file: Path,
    doctor_env: Callable[..., None],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    url: str,
    row: str,
    detail: str,
) -> None:
    doctor_env(ALLTKN_LIMITS_REDIS_URL=url.format(password=PASSWORD))
    document = doctor_json(capsys)

    assert checks_of(document)[row]["status"] == "fail"
    assert checks_of(document)[row]["detail"].startswith(detail)
    assert PASSWORD not in json.dumps(document)


def test_a_bad_callers_file_exits_1_as_a_command(callers_file: Path) -> None:
    callers_file.chmod(0o644)
    done, _ = doctor_process("--support")

    assert done.returncode == 1
    assert field(done.stdout, "Category").startswith("none: checked on this host")
    assert "is readable by every user: run chmod 600" in done.stdout
