"""What the benchmarks share: baking a variant, running the bundled fake gateway and a Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE_DIR = Path(__file__).resolve().parents[1]


def bake(framework: str, into: Path, **answers: str) -> Path:
    """Bake `framework` with default answers but `answers` under `into/framework` (plus the
    answers' values, so that two bakes of one framework do not collide); returns the project.
    The web services measured since before caller keys are baked with `caller_auth="none"`, so
    their figures stay comparable."""
    project = cookiecutter(
        str(TEMPLATE_DIR),
        no_input=True,
        output_dir=str(into / "-".join([framework, *answers.values()])),
        extra_context={"framework": framework, **answers},
    )
    return Path(project)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server(directory: Path) -> Iterator[tuple[str, int]]:
    """Debian's `redis-server` on a free loopback port, nothing saved to disk, as the limits
    tests run it. Yields (url, pid)."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"redis-server did not start on port {port}")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        process.terminate()
        process.wait()


@contextmanager
def fake_gateway(
    project: Path,
    deltas: int = 20,
    *,
    first_token_delay: float = 0.05,
    delta_interval: float = 0.01,
) -> Iterator[tuple[str, int]]:
    """The project's fake gateway in its own process, answering like a real model: first token
    after 50 ms, then `deltas` deltas 10 ms apart (by default). Yields (base_url, pid)."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(project / "tests" / "fake_gateway.py"),
            "--first-token-delay",
            str(first_token_delay),
            "--delta-interval",
            str(delta_interval),
            "--deltas",
            str(deltas),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    base_url = process.stdout.readline().strip().removeprefix("base_url=")
    try:
        yield base_url, process.pid
    finally:
        process.terminate()
        process.wait()
