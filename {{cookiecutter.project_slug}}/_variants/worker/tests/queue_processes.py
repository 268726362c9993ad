"""The queue for real in the tests: `python -m <package> worker` processes and the `enqueue` /
`collect` commands, against the fake gateway and a real Redis (`redis_server.py`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .conftest import SENTINEL_KEY
from .redis_server import RedisServer

PACKAGE = "{{ cookiecutter.package_name }}"
QUEUE_VARIABLES = (
    "ALLTKN_QUEUE_RPM",
    "ALLTKN_QUEUE_TPM",
    "ALLTKN_QUEUE_VISIBILITY_TIMEOUT_S",
    "ALLTKN_QUEUE_RETRY_AFTER_CAP_S",
    "WORKER_CONCURRENCY",
)


@pytest.fixture
def queue_env(
    gateway_env: dict[str, str], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """`gateway_env`, and the queue on an empty Redis."""
    redis_server.flush()
    for name in QUEUE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALLTKN_QUEUE_URL", redis_server.url)
    return {**gateway_env, "ALLTKN_QUEUE_URL": redis_server.url}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", PACKAGE, *args]


def run(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """A queue command to its end: exit code, stdout, stderr."""
    environ = {**os.environ, **env}
    done = subprocess.run(
        command(*args), capture_output=True, text=True, timeout=timeout, env=environ, check=False
    )
    assert SENTINEL_KEY not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def write_lines(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class Worker:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process, self.log = process, log

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while "worker ready" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker did not start:\n{self.output()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, nothing given back (as the OOM killer does)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # Celery's warm shutdown: running jobs finish first
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextmanager
def workers(
    log_dir: Path, count: int = 1, concurrency: int = 4, pool: str = "threads", **env: str
) -> Iterator[list[Worker]]:
    """`count` worker processes, each started and ready; stopped (warm) at the end."""
    started: list[Worker] = []
    try:
        for _ in range(count):
            log = log_dir / f"worker-{time.monotonic_ns()}.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    command("worker", "--concurrency", str(concurrency), "--pool", pool),
                    env={**os.environ, **env},
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            started.append(Worker(process, log))
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()
    for worker in started:
        assert SENTINEL_KEY not in worker.output()
