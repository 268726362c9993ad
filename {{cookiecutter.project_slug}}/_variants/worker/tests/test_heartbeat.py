"""The worker's heartbeat and the probe Kubernetes runs on it (`python -m <package>.heartbeat`,
k8s/worker-deployment.yaml), against a real worker on a real Redis: the probe passes while the
worker's event loop runs, fails once the worker has lost its broker for longer than the
allowed age, and passes again when the worker has reconnected."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .queue_processes import PACKAGE, queue_env, workers  # noqa: F401
from .redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.usefixtures("queue_env")


def probe(heartbeat: Path | None, max_age: float = 60) -> subprocess.CompletedProcess[str]:
    """What the kubelet runs in the container: the exit code and the one line."""
    env = {name: value for name, value in os.environ.items() if name != "WORKER_HEARTBEAT_FILE"}
    if heartbeat is not None:
        env["WORKER_HEARTBEAT_FILE"] = str(heartbeat)
    command = [sys.executable, "-m", f"{PACKAGE}.heartbeat", "--max-age", str(max_age)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30, check=False)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_the_probe_follows_the_worker_s_event_loop(tmp_path: Path) -> None:
    from {{ cookiecutter.package_name }} import heartbeat

    heartbeat_file = tmp_path / "heartbeat"
    unset = probe(None)
    assert unset.returncode == 2
    assert unset.stderr.startswith("error[config]: WORKER_HEARTBEAT_FILE is not set")
    missing = probe(heartbeat_file)
    assert missing.returncode == 1
    assert missing.stdout.startswith(f"no heartbeat: {heartbeat_file} does not exist")

    broker = RedisServer(tmp_path).start()  # this test's own: it stops it
    env = {"ALLTKN_QUEUE_URL": broker.url, "WORKER_HEARTBEAT_FILE": str(heartbeat_file)}
    max_age = heartbeat.EVERY_S + 2  # a tick, and time to spare
    try:
        with workers(tmp_path, **env) as (worker,):
            first = heartbeat_file.stat().st_mtime
            wait_for(lambda: heartbeat_file.stat().st_mtime > first, 3 * max_age, "no 2nd tick")
            assert probe(heartbeat_file, max_age).returncode == 0

            broker.stop()  # the worker loses its broker: its loop stops, reconnecting
            wait_for(lambda: probe(heartbeat_file, max_age).returncode == 1, 4 * max_age, "stale")
            stale = probe(heartbeat_file, max_age)
            assert stale.stdout.startswith(f"stale heartbeat: {heartbeat_file} was touched")
            assert worker.process.poll() is None  # alive, and useless: what liveness is for

            broker.start()  # the same port: the worker reconnects and its loop runs again
            wait_for(lambda: probe(heartbeat_file, max_age).returncode == 0, 60, "no recovery")
    finally:
        broker.stop()
