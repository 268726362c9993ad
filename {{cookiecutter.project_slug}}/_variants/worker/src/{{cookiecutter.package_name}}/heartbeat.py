"""The worker's heartbeat, for Kubernetes' probes (k8s/worker-deployment.yaml).

A worker started with WORKER_HEARTBEAT_FILE set touches that file every EVERY_S seconds from
its own event loop (a Celery timer, `worker.Heartbeat`): the loop that takes jobs from the queue
and hands them to the pool. A worker frozen, stuck, or reconnecting to a lost broker stops
touching it; running jobs do not (they run in the pool). Then

    python -m <package>.heartbeat [--max-age S]

exits 0 if the file was touched within S seconds (default MAX_AGE_S), else 1 with one line. It
imports neither Celery nor the settings and asks nothing of Redis: a cheap, local check, where
`celery inspect ping` would start Celery, open a broker connection and wait for a broadcast
reply on every probe (and this worker runs with remote control off: no broadcast queues).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

FILE_VARIABLE = "WORKER_HEARTBEAT_FILE"
EVERY_S = 5.0
MAX_AGE_S = 60.0


def path() -> Path | None:
    """The heartbeat file (WORKER_HEARTBEAT_FILE), or None: no heartbeat."""
    raw = os.environ.get(FILE_VARIABLE, "").strip()
    return Path(raw) if raw else None


def touch(target: Path) -> None:
    target.touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.heartbeat",
        description=f"Exit 0 if the worker touched {FILE_VARIABLE} recently, else 1.",
    )
    parser.add_argument(
        "--max-age", type=float, default=MAX_AGE_S, metavar="S",
        help=f"the oldest heartbeat that counts, in seconds (default {MAX_AGE_S:g})",
    )  # fmt: skip
    max_age = parser.parse_args(argv).max_age
    target = path()
    if target is None:
        print(f"error[config]: {FILE_VARIABLE} is not set: set it for the worker and this check "
              "alike, e.g. /tmp/worker-heartbeat", file=sys.stderr)  # fmt: skip
        return 2
    try:
        age = time.time() - target.stat().st_mtime
    except OSError:
        print(f"no heartbeat: {target} does not exist (the worker has not started taking jobs)")
        return 1
    if age > max_age:
        print(f"stale heartbeat: {target} was touched {age:.0f} s ago, more than {max_age:g} s "
              "(the worker is stuck, or cannot reach the queue's Redis)")  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
