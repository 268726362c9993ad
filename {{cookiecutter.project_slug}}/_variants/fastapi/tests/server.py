"""How the tests start the service: the same command as in production, on a loopback port."""

from __future__ import annotations

import sys


def server_command(port: int) -> list[str]:
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
