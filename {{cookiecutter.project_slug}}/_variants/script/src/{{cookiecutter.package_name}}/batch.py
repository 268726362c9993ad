"""Batch jobs: every prompt of a JSONL file through the gateway, a bounded number at a time.

    python -m <package> batch INPUT.jsonl OUTPUT.jsonl [--concurrency N] [--model M] [--resume]
                                                       [--metrics-file METRICS.json]

Input, one JSON object per line: an ``"id"`` and a `request.ChatRequest` (``"prompt"`` or
``"messages"``, ``"model"``, ``"user"``, ``"task"``, ``"max_tokens"``, ``"temperature"``...);
other fields are ignored (named once on stderr). Output, one line per input line, in the order
the rows finish, appended and flushed one by one: ``{"id", "content", "model", "usage",
"duration_ms"}`` or ``{"id", "error": {"category", "message"}}``. A malformed input line becomes
an ``invalid_input`` error row that also names its ``line`` (its ``id`` is null if it has none,
or repeats an earlier one).

- The input is streamed; memory grows only with the set of ids (for duplicate detection).
- At most ``--concurrency`` requests are in flight. The client is built without SDK retries, so
  every attempt is made, counted and logged here, by the policy of `retry.py`: ``rate_limited``
  waits for Retry-After (at most a minute) and pauses every row,
  ``upstream_unavailable``/``timeout``/``connection`` back off, and the permanent categories are
  never retried. ``auth``, ``quota`` and ``bad_base_url`` would fail every row, so they stop the
  batch instead of filling the output with error rows. The rollback switches (docs/RUNBOOK.md)
  apply: each attempt tries the ALLTKN_FALLBACK_MODELS before the row is retried.
- ``--resume`` skips rows already in OUTPUT; a partial last line (a crash mid-write) is removed.
- SIGINT or SIGTERM stops taking rows, waits up to ``GRACE_S`` for those in flight (a second
  signal stops at once), and rows that never finished are left for ``--resume``.
- The summary on stdout counts rows, then the upstream calls from the instruments
  (`call_summary.py`): errors by category, retries, tokens by model, duration p50/p95;
  ``--metrics-file`` writes those as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from signal import SIGINT, SIGTERM
from typing import IO

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from . import metrics, retry
from .call_summary import CallSummary, check_writable, write
from .chat import CallInfo
from .chat_async import AsyncChatService, create_async_client
from .errors import Category, GatewayError
from .rows import BatchLine, Lines, Row, error_row, read_lines, result_row, row_key
from .settings import Settings

GRACE_S = 5.0
PLAIN_PROGRESS_EVERY_S = 10.0
# Failures of the key, the account or the URL: every other row would fail the same way.
FATAL = frozenset({Category.AUTH, Category.QUOTA, Category.BAD_BASE_URL})


class BatchUsageError(Exception):
    """Bad input path, output path or option; the message is one line with the fix."""


def open_output(args: argparse.Namespace) -> tuple[IO[bytes], set[str]]:
    """OUTPUT, open for appending rows, and the keys of those already in it (--resume)."""
    output: Path = args.output
    if output.exists() and output.resolve() == args.input.resolve():
        raise BatchUsageError("OUTPUT is the INPUT file; write the results to another path")
    if not args.resume and output.is_file() and output.stat().st_size > 0:
        raise BatchUsageError(f"OUTPUT {output} already has rows; pass --resume or a new path")
    rows, complete_bytes = _open(output, "a+b" if args.resume else "wb", "OUTPUT"), 0
    done: set[str] = set()
    if args.resume:
        rows.seek(0)  # to read the rows there; appends still go to the end
    for number, raw in enumerate(rows if args.resume else (), 1):
        if not raw.endswith(b"\n"):  # a crash in the middle of a write
            rows.truncate(complete_bytes)
            print("batch: removed a partial last row (an earlier crash)", file=sys.stderr)
        elif raw.strip():
            try:
                done.add(row_key(json.loads(raw)))
            except (ValueError, TypeError, KeyError):
                rows.close()
                raise BatchUsageError(
                    f"OUTPUT {output} line {number} is not a result row; remove that line "
                    "or write to a new file"
                ) from None
        complete_bytes += len(raw)
    return rows, done


def _open(path: Path, mode: str, role: str) -> IO[bytes]:
    try:
        return path.open(mode)
    except OSError as exc:
        fix = "pass the path of a JSONL file" if role == "INPUT" else "choose a writable file path"
        raise BatchUsageError(f"{role} {path}: {exc.strerror or exc}; {fix}") from None


class Tally:
    """The counts of a run, and its progress on stderr: a plain line every
    `PLAIN_PROGRESS_EVERY_S` (for logs and pipes) or, on a terminal, a rich bar with the notes
    and log lines scrolling above it (unwrapped, so a JSON log line stays one line)."""

    def __init__(self, total: int, already: int) -> None:
        self.total, self.ok, self.skipped, self.failed = total, 0, 0, Counter[str]()
        self.started = time.perf_counter()
        console = Console(file=sys.stderr, soft_wrap=True)
        columns = TextColumn("batch"), BarColumn(), TextColumn("{task.description}")
        plain = not sys.stderr.isatty()
        self._bar = Progress(*columns, TimeRemainingColumn(), console=console, disable=plain)
        self._task = self._bar.add_task(self._line(), total=total, completed=min(already, total))
        self._bar.start()  # from here, what is written to stderr shows above the bar
        if self._bar.disable:
            every = f"progress every {PLAIN_PROGRESS_EVERY_S:.0f} s"
            self.note(f"batch: {total} rows in INPUT, {already} already in OUTPUT; {every}")

    @property
    def finished(self) -> int:
        return self.ok + self.failed.total()

    @property
    def rate(self) -> float:
        return self.finished / max(time.perf_counter() - self.started, 1e-9)

    def count(self, row: Row) -> None:
        """A row was written."""
        if "error" in row:
            self.failed[row["error"]["category"]] += 1
        else:
            self.ok += 1
        if not self._bar.disable:
            self._bar.update(self._task, advance=1, description=self._line())

    def tick(self) -> None:
        """Every `PLAIN_PROGRESS_EVERY_S` seconds while the batch runs (the bar needs none)."""
        if self._bar.disable:
            left = self.total - self.finished - self.skipped
            self.note(f"batch: {self._line()} {f'{left / self.rate:.0f} s' if self.rate else '?'}")

    def _line(self) -> str:
        done, failed = self.finished + self.skipped, self.failed.total()
        return f"{done}/{self.total} rows, {failed} failed, {self.rate:.1f} rows/s, ETA"

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)  # above the bar, if there is one

    def summary(self, calls: CallSummary) -> str:
        """Stops the bar; the lines of the summary: the rows, then the upstream calls."""
        self._bar.stop()
        wall = max(time.perf_counter() - self.started, 1e-9)
        failures = ", ".join(f"{name} {count}" for name, count in sorted(self.failed.items()))
        failed = f"{self.failed.total()} failed" + (f" ({failures})" if failures else "")
        rates = f"{self.finished / wall:.1f} rows/s, {len(calls.durations) / wall:.1f} calls/s"
        return (
            f"batch: {self.ok} done, {failed}, {self.skipped} skipped (already in OUTPUT), "
            f"{self.total} rows in INPUT\n{calls.lines()}\nwall time {wall:.2f} s, {rates}"
        )


class _Batch:
    """One run: at most `--concurrency` rows in flight, a rate-limit pause they share, OUTPUT."""

    def __init__(self, args: argparse.Namespace, output: IO[bytes], tally: Tally) -> None:
        self.args, self.output, self.tally = args, output, tally
        self.signum: int | None = None  # the signal that stopped the batch
        self.fatal: GatewayError | None = None  # the failure that stopped it
        self.write_error: str | None = None
        self._ignored: set[str] = set()
        self._paused_until = 0.0

    async def run(self, settings: Settings, done: set[str]) -> None:
        # No SDK retries: every attempt is decided, counted and logged by the batch itself.
        model = self.args.model or settings.model
        settings = settings.model_copy(update={"max_retries": 0, "model": model})
        client = create_async_client(settings)
        self._service = AsyncChatService(client, settings)
        self._stop, self._slots = anyio.Event(), anyio.Semaphore(self.args.concurrency)
        self._feeding = anyio.CancelScope()
        try:
            async with anyio.create_task_group() as self._tasks:
                self._tasks.start_soon(self._watch_signals)
                self._tasks.start_soon(self._tick)
                with self._feeding, self.args.input.open("rb") as lines:
                    await self._feed(read_lines(lines), done)
                for _ in range(self.args.concurrency):  # until every row has finished
                    await self._slots.acquire()
                self._tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()

    async def _feed(self, lines: Lines, done: set[str]) -> None:
        for key, line in lines:
            if key in done:
                self.tally.skipped += 1
            elif isinstance(line, dict):
                self.tally.note(f"batch: {line['error']['message']}; written as an error row")
                self._write(line)
            else:
                if line.model_extra and (new := line.model_extra.keys() - self._ignored):
                    self._ignored |= new
                    names = ", ".join(f'"{name}"' for name in sorted(new))
                    self.tally.note(f"batch: ignoring {names} (id {key}): not request fields")
                await self._slots.acquire()  # the in-flight bound
                self._tasks.start_soon(self._process, line)

    async def _process(self, line: BatchLine) -> None:
        started, call = time.perf_counter(), CallInfo(user=line.user, task=line.task)
        delay: float | None = 0.0
        try:
            for attempt in itertools.count(1):
                if delay is None or not await self._wait(delay):
                    return  # done (an error row), or stopping (left for --resume)
                try:
                    result = await self._service.complete(line, call)
                except GatewayError as error:
                    delay = self._retry_delay(line, error, attempt)
                    continue
                duration_ms = round((time.perf_counter() - started) * 1000, 1)
                self._write(result_row(line.id, result, duration_ms))
                return
        finally:
            self._slots.release()

    def _retry_delay(self, line: BatchLine, error: GatewayError, attempt: int) -> float | None:
        """The pause before the row's next attempt; None once its error row is written or the
        batch stops. What is retried, and how long to wait, is `retry.py`'s; how often, ours."""
        after = retry.retry_after_s({"retry-after": error.retry_after or ""})
        after = None if after is None else min(max(after, 0.0), retry.UNATTENDED_RETRY_AFTER_CAP_S)
        last = attempt >= retry.unattended_attempts(error.category)
        if error.category in FATAL:
            self._stop_batch(fatal=error)
        elif last or not retry.may_retry(error.category, after, retry.UNATTENDED_RETRY_AFTER_CAP_S):
            self._write(error_row(line.id, error.category.value, error.message))
        else:
            model = metrics.model(line.model or self._service.settings.model)
            category = error.category.value
            metrics.add(metrics.RETRIES, gen_ai_request_model=model, error_type=category)
            delay = retry.backoff_s(attempt) if after is None else after
            if error.category is not Category.RATE_LIMITED:
                return delay
            self._paused_until = max(self._paused_until, time.monotonic() + delay)  # all rows
            return 0.0
        return None

    async def _wait(self, seconds: float) -> bool:
        """Sleep `seconds`, and while rows are paused (rate_limited); False if the batch stops."""
        until = time.monotonic() + seconds
        while not self._stop.is_set():
            if (left := max(until, self._paused_until) - time.monotonic()) <= 0:
                return True
            with anyio.move_on_after(left):
                await self._stop.wait()
        return False

    def _write(self, row: Row) -> None:
        """Append a finished row, flushed at once so that a crash loses none; a failed write
        (disk full, say) stops the batch."""
        try:
            self.output.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
            self.output.flush()
        except OSError as exc:
            self._failed_to_write(exc)
            self._stop_batch()
            self._tasks.cancel_scope.cancel()  # nothing more can be recorded
        else:
            self.tally.count(row)

    def close(self) -> None:
        try:
            self.output.flush()
            os.fsync(self.output.fileno())
        except OSError as exc:
            self._failed_to_write(exc)
        finally:
            with contextlib.suppress(OSError):
                self.output.close()

    def _failed_to_write(self, exc: OSError) -> None:
        self.write_error = self.write_error or (
            f"cannot write OUTPUT {self.args.output} ({exc.strerror or exc}); "
            "make room or fix it, then rerun with --resume"
        )

    def _stop_batch(self, *, signum: int | None = None, fatal: GatewayError | None = None) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._feeding.cancel()
            self.signum, self.fatal = signum, fatal

    async def _tick(self) -> None:
        while True:
            await anyio.sleep(PLAIN_PROGRESS_EVERY_S)
            self.tally.tick()

    async def _watch_signals(self) -> None:
        """First SIGINT/SIGTERM: stop feeding, grace period; second (or grace over): cancel."""
        with contextlib.ExitStack() as stack:
            try:
                signals = stack.enter_context(anyio.open_signal_receiver(SIGINT, SIGTERM))
            except (NotImplementedError, ValueError, RuntimeError):
                return  # no signal handling here (not the main thread, or not on this OS)
            self._stop_batch(signum=await anext(signals))
            grace = f"waiting up to {GRACE_S:.0f} s for the rows in flight"
            self.tally.note(f"batch: stopping; {grace} (press Ctrl-C again to stop now)")
            with anyio.move_on_after(GRACE_S):
                await anext(signals)
        self._tasks.cancel_scope.cancel()


def _write_metrics(batch: _Batch, path: Path, calls: CallSummary) -> None:
    try:
        write(path, calls)
    except OSError as exc:
        batch.write_error = batch.write_error or f"cannot write --metrics-file {path}: {exc}"


def concurrency(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 256")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n", 1)[0]
    add = parser.add_argument
    add("input", type=Path, metavar="INPUT.jsonl", help="prompts: one JSON request a line")
    add("output", type=Path, metavar="OUTPUT.jsonl", help="results, one JSON line per input line")
    add("--concurrency", type=concurrency, default=8, metavar="N", help="rows in flight (1-256)")
    add("--model", metavar="M", help="for rows that name none (default: ALLTKN_MODEL)")
    add("--resume", action="store_true", help="skip rows already in OUTPUT and append the rest")
    add("--metrics-file", type=Path, metavar="METRICS.json", help="write the call summary as JSON")


def main(args: argparse.Namespace, settings: Settings) -> int:
    """`batch` for the CLI (settings loaded, logging configured): progress on stderr, the
    summary on stdout; returns the exit code."""
    try:
        with _open(args.input, "rb", "INPUT") as lines:  # a quick pass: the progress total
            total = sum(1 for raw in lines if raw.strip())
        if args.metrics_file and (problem := check_writable(args.metrics_file)):
            raise BatchUsageError(problem)
        output, done = open_output(args)
    except BatchUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tally, calls = Tally(total, len(done)), CallSummary()
    batch = _Batch(args, output, tally)
    metrics.configure(settings.model_copy(update={"model": args.model or settings.model}))
    metrics.install(calls)
    try:
        anyio.run(batch.run, settings, done)
    except KeyboardInterrupt:
        batch.signum = SIGINT
    finally:
        metrics.uninstall(calls)
        batch.close()
        print(tally.summary(calls), flush=True)
        if args.metrics_file:
            _write_metrics(batch, args.metrics_file, calls)
    if batch.signum is not None:
        print("interrupted: rows not finished are not in OUTPUT; rerun with --resume")
    elif (fatal := batch.fatal) is not None:
        print("stopped: the remaining rows were not sent; fix the problem and rerun with --resume")
        print(f"error[{fatal.category.value}]: {fatal} (hint: {fatal.hint})", file=sys.stderr)
    if batch.write_error is not None:
        print(f"error: {batch.write_error}", file=sys.stderr)
    if batch.signum is not None:
        return 128 + batch.signum
    return 1 if batch.fatal or batch.write_error or tally.failed else 0
