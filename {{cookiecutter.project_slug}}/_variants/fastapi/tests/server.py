"""How the tests start the service: the same command as in production, on a loopback port."""

from __future__ import annotations

import sys


def server_command(port: int, workers: int = 1) -> list[str]:
    """`serve` starts the WEB_CONCURRENCY worker processes: `run_server` sets it to `workers`."""
    return [
        sys.executable,
        "-m",
        "{{ cookiecutter.package_name }}",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
