"""The queue from the command line; jobs are answered by `worker` processes (`worker.py`).

    python -m <package> enqueue IN.jsonl            one job per line; prints the job ids
    python -m <package> collect JOBS OUT.jsonl [--wait]

`enqueue` reads the `batch` line format (an ``"id"`` and a request a line; `rows.py`), checks
every line first (a bad line: one error naming it, exit 2, nothing enqueued), then prints one job
id per input line, in input order. `collect` reads those ids (a file, or ``-`` for stdin) and
writes every finished job as a `batch` output row with its input line's ``id``, in the JOBS
order; without ``--wait`` the pending ones are left out (named on stderr: run it again), with
``--wait`` it waits for them, with a progress bar on a terminal. Exit codes: 0 every job done, 1
a job failed (or its result was lost), 2 bad input or an unreachable queue.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import IO

from . import worker
from .jobs import Job, JobStore, QueueUnavailable, is_job_id, result_of
from .limiter import REDIS_ERRORS
from .rows import BatchLine, Row, error_row, read_lines, request_of

COMMANDS = ("worker", "enqueue", "collect")
POLL_S = 0.5
PLAIN_PROGRESS_EVERY_S = 10.0
BAR_WIDTH = 30


class QueueUsageError(Exception):
    """Bad input; the message is one line naming the file, the line and the fix."""


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """The arguments of `command`, one of `COMMANDS` (their help lines are the CLI's)."""
    if command == "worker":
        worker.add_arguments(parser)
    elif command == "enqueue":
        parser.add_argument("input", type=Path, metavar="IN.jsonl", help="the batch line format")
    else:
        parser.add_argument(
            "jobs", metavar="JOBS", help="job ids, one a line (enqueue's output; -: stdin)"
        )
        parser.add_argument("output", type=Path, metavar="OUT.jsonl", help="one result row a job")
        parser.add_argument("--wait", action="store_true", help="wait until every job has finished")


def main(args: argparse.Namespace) -> int:
    if args.command == "worker":
        return worker.main(args)
    queue = worker.load_queue_settings_or_exit()
    store = JobStore(queue.queue_url.get_secret_value())
    try:
        if args.command == "enqueue":
            lines = _read_input(args.input)
            store.check()
            worker.configure(queue)
            for line in lines:
                print(worker.enqueue(store, request_of(line), line_id=line.id), flush=True)
            return 0
        ids = _read_ids(args.jobs)
        store.check()
        return _collect(store, ids, args.output, wait=args.wait)
    except _Lost as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (QueueUsageError, QueueUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except REDIS_ERRORS as exc:  # lost on the way
        print(f"error: {QueueUnavailable(exc)}", file=sys.stderr)
        return 2


def _open(path: Path, mode: str, role: str) -> IO[bytes]:
    try:
        return path.open(mode)
    except OSError as exc:
        raise QueueUsageError(f"{role} {path}: {exc.strerror or exc}") from None


def _read_input(path: Path) -> list[BatchLine]:
    """Every line, or `QueueUsageError` naming the first bad one."""
    lines: list[BatchLine] = []
    with _open(path, "rb", "IN") as raw:
        for _, line in read_lines(raw):
            if isinstance(line, dict):
                message = line["error"]["message"]
                raise QueueUsageError(f"IN {path} {message}; fix that line, nothing was enqueued")
            lines.append(line)
    return lines


def _read_ids(source: str) -> list[str]:
    stream = sys.stdin.buffer if source == "-" else _open(Path(source), "rb", "JOBS")
    ids: list[str] = []
    with stream:
        for number, raw in enumerate(stream, 1):
            text = raw.decode("utf-8", "replace").strip()
            if text and not is_job_id(text):
                raise QueueUsageError(
                    f"JOBS line {number}: {text[:40]!r} is not a job id (enqueue prints them)"
                )
            if text:
                ids.append(text)
    return ids


def _collect(store: JobStore, ids: list[str], output: Path, *, wait: bool) -> int:
    jobs = _known(store, ids)
    progress = _Progress(len(ids)) if wait else None
    while wait and any(job.state == "pending" for job in jobs):
        assert progress is not None  # noqa: S101 - for mypy
        progress.show(sum(job.state != "pending" for job in jobs))
        time.sleep(POLL_S)
        jobs = _known(store, ids)
    if progress is not None:
        progress.done(len(ids))
    rows = [_row(job) for job in jobs if job.state != "pending"]
    with _open(output, "wb", "OUT") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    failed = sum("error" in row for row in rows)
    pending = len(ids) - len(rows)
    print(f"collect: {len(rows) - failed} done, {failed} failed, {pending} pending"
          + (" (not in OUT: run collect again)" if pending else ""), file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


def _known(store: JobStore, ids: list[str]) -> list[Job]:
    """The jobs; an id without a job: `QueueUsageError` (unknown) or, if it ran, a lost result
    (exit 1 through `_row`'s error)."""
    jobs = store.get_many(ids)
    for number, (job_id, job) in enumerate(zip(ids, jobs, strict=True), 1):
        if job is None and store.result_lost(job_id):
            raise _Lost(job_id)
        if job is None:
            raise QueueUsageError(
                f"JOBS line {number}: unknown job id {job_id} (not from this queue's "
                "ALLTKN_QUEUE_URL, or finished more than 7 days ago)"
            )
    return [job for job in jobs if job is not None]


class _Lost(QueueUsageError):
    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job {job_id}: its result is lost (the job ran, but its record is gone from the "
            "queue's Redis: evicted or flushed; give Redis maxmemory-policy noeviction and "
            "enqueue that line again)"
        )


def _row(job: Job) -> Row:
    body = job.body or {}
    if job.state == "failed":
        error = body.get("error", {})
        return error_row(job.line_id, error.get("category", ""), error.get("message", ""))
    return {"id": job.line_id, **result_of(job)}


class _Progress:
    """A bar on a terminal (stderr), else a line every PLAIN_PROGRESS_EVERY_S."""

    def __init__(self, total: int) -> None:
        self.total, self.tty = total, sys.stderr.isatty()
        self.last = time.monotonic()

    def show(self, finished: int) -> None:
        if self.tty:
            filled = BAR_WIDTH * finished // max(self.total, 1)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            sys.stderr.write(f"\rcollect [{bar}] {finished}/{self.total} jobs finished")
            sys.stderr.flush()
        elif time.monotonic() - self.last >= PLAIN_PROGRESS_EVERY_S:
            self.last = time.monotonic()
            print(f"collect: {finished}/{self.total} jobs finished", file=sys.stderr)

    def done(self, finished: int) -> None:
        if self.tty:
            self.show(finished)
            sys.stderr.write("\n")
