"""How the tests start the service: the same command as in production, on a loopback port."""

from __future__ import annotations

import sys


def server_command(port: int, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "{{ cookiecutter.package_name }}.app:app",
    ]
