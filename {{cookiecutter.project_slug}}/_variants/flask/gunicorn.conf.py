"""gunicorn settings for `gunicorn {{ cookiecutter.package_name }}.app:app` (see README)."""

import os
import sys
from typing import Any

from gunicorn.glogging import Logger

from {{ cookiecutter.package_name }} import metrics_dir
{% if cookiecutter.caller_auth == "keys" -%}
from {{ cookiecutter.package_name }}.admission import workers_problem
{% endif -%}
from {{ cookiecutter.package_name }}.logs import logging_config
from {{ cookiecutter.package_name }}.settings import load_settings_or_exit

# All interfaces: inside a container the port is only reachable as published.
bind = os.environ.get("BIND", "0.0.0.0:8000")


def _count(name: str, default: int, high: int) -> int:
    """A whole number from the environment; a bad one stops gunicorn with one line."""
    raw = os.environ.get(name, "").strip() or str(default)
    if not (raw.isdigit() and 1 <= int(raw) <= high):
        sys.exit(f"error[config]: {name} must be a whole number from 1 to {high}")
    return int(raw)


# Worker processes: WEB_CONCURRENCY (the variable gunicorn, uvicorn and the Dockerfile share).
workers = _count("WEB_CONCURRENCY", 2, high=64)
# Threaded workers: each stream holds a thread, not a whole process, and the sync worker's
# request timeout (which would cut long streams) does not apply to them.
worker_class = "gthread"
threads = _count("GUNICORN_THREADS", 32, high=1024)
# Idle time allowed to a worker before it is restarted; streams keep their worker busy.
timeout = _count("GUNICORN_TIMEOUT", 120, high=86_400)
graceful_timeout = 30
keepalive = 5
# No control socket (gunicornc): nothing here uses it, and it is one more way in.
control_socket_disable = True
# Load the app in the master so a configuration error stops the server with one line
# instead of workers failing to boot in a loop.
preload_app = True
# One log format: gunicorn's own lines and its access lines (on stderr) are the service's JSON
# lines (see logs.py); the app applies LOG_LEVEL when it loads.
accesslog = "-"
logconfig_dict = logging_config()


class StreamLogger(Logger):
    """gunicorn's logger, minus the traceback for a client dropped by the send timeout.

    The app sets a socket timeout on streams (ALLTKN_SSE_SEND_TIMEOUT_S); when a client stops
    reading, the blocked write times out, which gunicorn would report as a socket error with a
    traceback. It is an expected outcome, logged as one line instead.
    """

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if isinstance(sys.exc_info()[1], TimeoutError):
            self.warning("dropped a client that stopped reading (send timeout)")
            return
        super().exception(msg, *args, **kwargs)


logger_class = StreamLogger
# The directory where the workers count for /metrics (metrics_dir.py), named before the app
# loads and imports prometheus_client; always files, even for one worker: gunicorn replaces
# workers (max_requests, timeouts) and their counts must outlive them. None: ALLTKN_METRICS=off.
METRICS_DIR = metrics_dir.prepare() if load_settings_or_exit().metrics == "on" else None


def on_starting(server: Any) -> None:
    """Once, before the first worker: counts from an earlier run wiped.
{%- if cookiecutter.caller_auth == "keys" %} The app is loaded
    (preload_app) and the worker count final (command line included): limits counted in each
    worker's memory are refused with several workers.
{%- endif %}"""
    if METRICS_DIR:
        metrics_dir.empty(METRICS_DIR)
    cap, threads = server.app.wsgi().extensions["slots"].limit, server.cfg.threads
    if cap >= threads:
        sys.exit(
            f"error[config]: ALLTKN_MAX_STREAMS ({cap}) must be below GUNICORN_THREADS "
            f"({threads}), so that /healthz always finds a thread: lower it or add threads"
        )
{%- if cookiecutter.caller_auth == "keys" %}
    gate = server.app.wsgi().extensions["gate"]
    if problem := workers_problem(gate.settings, gate.callers, server.cfg.workers):
        sys.exit(f"error[config]: {problem}")
    gate.workers = server.cfg.workers  # the app was made before gunicorn knew them
{%- endif %}


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: its counts merged, so that recycled workers leave no files behind."""
    if METRICS_DIR:
        metrics_dir.merge_dead(METRICS_DIR)


def on_exit(server: Any) -> None:
    metrics_dir.remove_private()
