"""gunicorn settings for `gunicorn {{ cookiecutter.package_name }}.app:app` (see README)."""

import os

# All interfaces: inside a container the port is only reachable as published.
bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threaded workers: each stream holds a thread, not a whole process, and the sync worker's
# request timeout (which would cut long streams) does not apply to them.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
# Idle time allowed to a worker before it is restarted; streams keep their worker busy.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 30
keepalive = 5
# Load the app in the master so a configuration error stops the server with one line
# instead of workers failing to boot in a loop.
preload_app = True
accesslog = None
