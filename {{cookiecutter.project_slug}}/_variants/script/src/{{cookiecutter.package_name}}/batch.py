"""Batch jobs: every prompt of a JSONL file through the gateway, a bounded number at a time.

    python -m <package> batch INPUT.jsonl OUTPUT.jsonl [--concurrency N] [--model M] [--resume]

Input, one JSON object per line: ``{"id", "prompt" | "messages", "model"?, "user"?, "task"?}``.
Output, one line per input line, in the order the rows finish, appended and flushed one by one:
``{"id", "content", "model", "usage", "duration_ms"}`` or ``{"id", "error": {"category",
"message"}}``. A malformed input line becomes an ``invalid_input`` error row that also names its
``line`` (its ``id`` is null if it has none, or repeats an earlier one).

- The input is streamed; memory grows only with the set of ids (for duplicate detection).
- At most ``--concurrency`` requests are in flight. The client is built without SDK retries, so
  every attempt is made, counted and logged here: ``rate_limited`` waits for Retry-After (capped)
  and pauses every worker, ``upstream_unavailable``/``timeout``/``connection`` back off, and the
  permanent categories are never retried. ``auth``, ``quota`` and ``bad_base_url`` would fail
  every row, so they stop the batch instead of filling the output with error rows.
- ``--resume`` skips rows already in OUTPUT; a partial last line (a crash mid-write) is removed.
- SIGINT or SIGTERM stops taking rows, waits up to ``GRACE_S`` for those in flight (a second
  signal stops at once), and rows that never finished are left for ``--resume``.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import email.utils
import io
import itertools
import json
import logging
import math
import os
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from openai.types.chat import ChatCompletionMessageParam
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

from .chat import AsyncChatService, CallInfo, ChatResult, Rollback
from .client import create_async_client
from .errors import Category, GatewayError
from .settings import Settings

DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 256
GRACE_S = 5.0
PLAIN_PROGRESS_EVERY_S = 10.0
INVALID_INPUT = "invalid_input"
# Failures of the key, the account or the URL: every other row would fail the same way.
FATAL = frozenset({Category.AUTH, Category.QUOTA, Category.BAD_BASE_URL})
TRANSIENT = frozenset({Category.UPSTREAM_UNAVAILABLE, Category.TIMEOUT, Category.CONNECTION})

RowId = str | int
Row = dict[str, Any]
_jitter = secrets.SystemRandom()
_P = TypeVar("_P", bound=argparse.ArgumentParser)


class BatchUsageError(Exception):
    """Bad input path, output path or option; the message is one line with the fix."""


@dataclass(frozen=True)
class BatchOptions:
    input: Path
    output: Path
    concurrency: int = DEFAULT_CONCURRENCY
    model: str | None = None
    resume: bool = False


# -- input -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One valid input line."""

    id: RowId
    line: int
    messages: list[ChatCompletionMessageParam]
    model: str | None = None
    user: str | None = None
    task: str | None = None

    @property
    def key(self) -> str:
        return id_key(self.id)


@dataclass(frozen=True)
class BadLine:
    """A malformed input line; ``id`` is None when it has no usable (or only a repeated) id."""

    line: int
    id: RowId | None
    reason: str

    @property
    def key(self) -> str:
        return id_key(self.id) if self.id is not None else line_key(self.line)


def id_key(row_id: RowId) -> str:
    return json.dumps(row_id)  # keeps 1 and "1" apart


def line_key(line: int) -> str:
    return f"line:{line}"


def read_rows(lines: Iterable[bytes]) -> Iterator[Job | BadLine]:
    """Parse the input lazily, one line at a time; blank lines are skipped."""
    first_line_of: dict[str, int] = {}
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            yield parse_row(number, raw, first_line_of)


def parse_row(number: int, raw: bytes, first_line_of: dict[str, int]) -> Job | BadLine:
    try:
        data = json.loads(raw.removeprefix(codecs.BOM_UTF8).rstrip(b"\r\n"))
    except UnicodeDecodeError:
        return BadLine(number, None, "not UTF-8 text")
    except json.JSONDecodeError as exc:
        return BadLine(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(data, dict):
        return BadLine(number, None, "not a JSON object")
    row_id = data.get("id")
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)) or row_id == "":
        return BadLine(number, None, 'no "id" (a non-empty string or an integer)')
    key = id_key(row_id)
    if key in first_line_of:
        return BadLine(number, None, f"duplicate id {key} (first on line {first_line_of[key]})")
    first_line_of[key] = number
    return _job_from(number, row_id, data)


def _job_from(number: int, row_id: RowId, data: dict[str, Any]) -> Job | BadLine:
    messages, problem = _messages_of(data)
    for name in ("model", "user", "task"):
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problem = problem or f'"{name}" must be a non-empty string'
    if problem:
        return BadLine(number, row_id, problem)
    return Job(row_id, number, messages, data.get("model"), data.get("user"), data.get("task"))


def _messages_of(data: dict[str, Any]) -> tuple[list[ChatCompletionMessageParam], str]:
    prompt, messages = data.get("prompt"), data.get("messages")
    if prompt is not None and messages is not None:
        return [], 'has both "prompt" and "messages"; give one'
    if messages is not None:
        if not isinstance(messages, list) or not messages or not all(map(_is_message, messages)):
            return [], '"messages" must be a non-empty list of {"role", "content"} objects'
        return cast("list[ChatCompletionMessageParam]", messages), ""
    if not isinstance(prompt, str) or not prompt.strip():
        return [], 'empty prompt (give a non-empty "prompt" or "messages")'
    return [{"role": "user", "content": prompt}], ""


def _is_message(value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("role"), str) and "content" in value


def count_rows(path: Path) -> int:
    """Non-blank lines of the input (a quick streaming pass, for the progress total)."""
    with _open(path, "rb", "INPUT") as lines:
        return sum(1 for raw in lines if raw.strip())


# -- output ----------------------------------------------------------------------------------


def result_row(job: Job, result: ChatResult, duration_ms: float) -> Row:
    usage = asdict(result.usage) if result.usage else None
    return {
        "id": job.id,
        "content": result.content,
        "model": result.model,
        "usage": usage,
        "duration_ms": duration_ms,
    }


def error_row(row_id: RowId | None, category: str, message: str, line: int | None = None) -> Row:
    row: Row = {"id": row_id}
    if line is not None:
        row["line"] = line
    row["error"] = {"category": category, "message": message}
    return row


@dataclass
class Resumed:
    """What an earlier run left in OUTPUT."""

    keys: set[str] = field(default_factory=set)
    dropped_partial: bool = False


def load_output(path: Path) -> Resumed:
    """Keys of the rows already in OUTPUT; a partial last line is cut off the file."""
    resumed = Resumed()
    if not path.exists():
        return resumed
    complete_bytes = 0
    with _open(path, "r+b", "OUTPUT") as rows:
        for number, raw in enumerate(rows, 1):
            if not raw.endswith(b"\n"):
                rows.truncate(complete_bytes)
                resumed.dropped_partial = True
                break
            complete_bytes += len(raw)
            if raw.strip():
                resumed.keys.add(_row_key(path, number, raw))
    return resumed


def _row_key(path: Path, number: int, raw: bytes) -> str:
    try:
        row = json.loads(raw)
        if row["id"] is not None:
            return id_key(row["id"])
        return line_key(int(row["line"]))
    except (ValueError, TypeError, KeyError):
        raise BatchUsageError(
            f"OUTPUT {path} line {number} is not a result row; remove that line "
            "or write to a new file"
        ) from None


def _open(path: Path, mode: str, role: str) -> IO[bytes]:
    try:
        return path.open(mode)
    except FileNotFoundError:
        problem = "does not exist" if role == "INPUT" else "is in a directory that does not exist"
    except IsADirectoryError:
        problem = "is a directory"
    except OSError as exc:
        problem = f"cannot be opened ({exc.strerror or type(exc).__name__})"
    fix = "pass the path of a JSONL file" if role == "INPUT" else "choose a writable file path"
    raise BatchUsageError(f"{role} {path} {problem}; {fix}")


class ResultSink:
    """Appends one JSON line per finished row, flushed at once so a crash loses none of them.

    A failed write (disk full, say) is kept in `error` for the caller to stop on.
    """

    def __init__(self, file: IO[bytes], path: Path) -> None:
        self._file = file
        self._path = path
        self.error: str | None = None

    def write(self, row: Row) -> bool:
        try:
            self._file.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
            self._file.flush()
        except OSError as exc:
            self._failed(exc)
            return False
        return True

    def close(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._failed(exc)
        finally:
            with contextlib.suppress(OSError):
                self._file.close()

    def _failed(self, exc: OSError) -> None:
        self.error = self.error or (
            f"cannot write OUTPUT {self._path} ({exc.strerror or exc}); "
            "make room or fix it, then rerun with --resume"
        )


def open_output(options: BatchOptions) -> tuple[ResultSink, Resumed]:
    if options.output.exists() and options.output.resolve() == options.input.resolve():
        raise BatchUsageError("OUTPUT is the INPUT file; write the results to another path")
    if options.resume:
        resumed = load_output(options.output)
        return ResultSink(_open(options.output, "ab", "OUTPUT"), options.output), resumed
    if options.output.is_file() and options.output.stat().st_size > 0:
        raise BatchUsageError(
            f"OUTPUT {options.output} already has rows; pass --resume to continue it "
            "or choose a new path"
        )
    return ResultSink(_open(options.output, "wb", "OUTPUT"), options.output), Resumed()


# -- retries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before the next attempt of a row, or None to give up on it."""

    rate_limited_attempts: int = 6
    transient_attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0

    def delay(self, error: GatewayError, attempt: int) -> float | None:
        if error.category is Category.RATE_LIMITED and attempt < self.rate_limited_attempts:
            after = parse_retry_after(error.retry_after)
            return self.backoff(attempt) if after is None else min(after, self.max_retry_after_s)
        if error.category in TRANSIENT and attempt < self.transient_attempts:
            return self.backoff(attempt)
        return None

    def backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter so workers that failed together retry apart."""
        return min(self.max_backoff_s, self.backoff_s * 2.0 ** (attempt - 1)) * _jitter.uniform(
            0.5, 1.0
        )


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (an HTTP date is accepted too); None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


# -- bookkeeping and progress ------------------------------------------------------------------


@dataclass
class Tally:
    total: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def finished(self) -> int:
        return self.ok + self.failed.total()

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    def add_usage(self, result: ChatResult) -> None:
        if result.usage:
            self.prompt_tokens += result.usage.prompt_tokens
            self.completion_tokens += result.usage.completion_tokens

    def summary(self) -> list[str]:
        wall = max(self.wall_s, 1e-9)
        failures = ", ".join(f"{name} {count}" for name, count in sorted(self.failed.items()))
        return [
            f"batch: {self.ok} done, {self.failed.total()} failed"
            + (f" ({failures})" if failures else "")
            + f", {self.skipped} skipped (already in OUTPUT), {self.total} rows in INPUT",
            f"tokens: {self.prompt_tokens} prompt + {self.completion_tokens} completion "
            f"= {self.prompt_tokens + self.completion_tokens}",
            f"wall time {wall:.2f} s, {self.finished / wall:.1f} rows/s, "
            f"{self.requests / wall:.1f} requests/s ({self.requests} requests, "
            f"{self.retries} retries)",
        ]


class Progress:
    """Plain periodic lines on stderr (for logs and pipes); `TerminalProgress` draws a bar."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def start(self, already: int) -> None:
        self.note(
            f"batch: {self.tally.total} rows in INPUT, {already} already in OUTPUT; "
            f"progress every {PLAIN_PROGRESS_EVERY_S:.0f} s"
        )

    def advance(self) -> None:
        """A row was written; plain lines only report on `tick`."""

    def tick(self) -> None:
        """Called every `PLAIN_PROGRESS_EVERY_S` seconds while the batch runs."""
        self.note(self._line())

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def stop(self) -> None:
        """Nothing to tear down for plain lines."""

    def _line(self) -> str:
        tally = self.tally
        rate = tally.finished / max(tally.wall_s, 1e-9)
        left = tally.total - tally.finished - tally.skipped
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        return (
            f"batch: {tally.finished + tally.skipped}/{tally.total} rows, "
            f"{tally.failed.total()} failed, {rate:.1f} rows/s, ETA {eta}"
        )


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:.1f} rows/s", style="progress.data.speed")


class _AboveTheBar(io.TextIOBase):
    """Stands in for stderr while the bar is shown: each whole line is printed above the bar,
    unwrapped, so a JSON log line stays one line."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._pending = ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._console.print(Text(line), soft_wrap=True)
        return len(text)

    def close(self) -> None:
        if self._pending:
            self.write("\n")
        super().close()


class TerminalProgress(Progress):
    """A rich progress bar on stderr; log lines and notes scroll above it."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(tally)
        self._bar = RichProgress(
            TextColumn("batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            _RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            redirect_stderr=False,  # done below, without wrapping long lines
        )
        self._task = self._bar.add_task("batch", total=tally.total, failed=0, start=False)
        self._stderr = sys.stderr
        self._above = _AboveTheBar(self._bar.console)
        self._log_handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    def start(self, already: int) -> None:
        self._bar.update(self._task, completed=min(already, self.tally.total))
        self._bar.start()
        self._bar.start_task(self._task)
        # The bar redraws on stderr: anything written past it (log lines) would tear it.
        sys.stderr = self._above
        for handler in logging.getLogger().handlers:  # handlers that kept the real stderr
            if isinstance(handler, logging.StreamHandler) and handler.stream is self._stderr:
                self._log_handlers.append((handler, handler.setStream(self._above)))

    def advance(self) -> None:
        self._bar.update(self._task, advance=1, failed=self.tally.failed.total())

    def tick(self) -> None:
        """The bar refreshes itself."""

    def note(self, text: str) -> None:
        self._bar.console.print(Text(text))

    def stop(self) -> None:
        self._above.close()
        self._bar.stop()
        sys.stderr = self._stderr
        for handler, stream in self._log_handlers:
            handler.setStream(stream)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    tally: Tally
    signum: int | None = None  # the signal that stopped the batch
    fatal: GatewayError | None = None  # the failure that stopped it (auth, quota, bad_base_url)
    write_error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.signum is not None:
            return 128 + self.signum
        return 1 if self.fatal or self.write_error or self.tally.failed else 0


class _Batch:
    """The async engine: one feeder, `concurrency` workers, a shared rate-limit pause."""

    def __init__(
        self,
        service: AsyncChatService,
        options: BatchOptions,
        sink: ResultSink,
        progress: Progress,
        resumed: Resumed,
    ) -> None:
        self._service = service
        self._options = options
        self._sink = sink
        self._progress = progress
        self._done = resumed.keys
        self._policy = RetryPolicy()
        self.outcome = Outcome(progress.tally)
        self._stop = anyio.Event()
        self._feeding = anyio.CancelScope()
        self._working = anyio.CancelScope()
        self._paused_until = 0.0

    @property
    def _tally(self) -> Tally:
        return self.outcome.tally

    async def run(self, rows: Iterator[Job | BadLine]) -> None:
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(self._watch_signals)
            watchers.start_soon(self._tick)
            with self._working:
                await self._run_workers(rows)
            watchers.cancel_scope.cancel()

    async def _run_workers(self, rows: Iterator[Job | BadLine]) -> None:
        send, receive = anyio.create_memory_object_stream[Job]()
        async with anyio.create_task_group() as workers:
            with receive:
                for _ in range(self._options.concurrency):
                    workers.start_soon(self._work, receive.clone())
            async with send:
                with self._feeding:
                    await self._feed(rows, send)

    async def _feed(self, rows: Iterator[Job | BadLine], send: ObjectSendStream[Job]) -> None:
        """Hand rows to the workers; waits while all of them are busy (the in-flight bound)."""
        for row in rows:
            if row.key in self._done:
                self._tally.skipped += 1
            elif isinstance(row, BadLine):
                self._reject(row)
            else:
                await send.send(row)

    async def _work(self, jobs: ObjectReceiveStream[Job]) -> None:
        async with jobs:
            async for job in jobs:
                await self._process(job)

    async def _process(self, job: Job) -> None:
        started = time.perf_counter()
        call = CallInfo(user=job.user, task=job.task)
        for attempt in itertools.count(1):
            if not await self._wait_for_pause():
                return  # stopping: left for --resume
            self._tally.requests += 1
            try:
                result = await self._service.complete(job.messages, model=job.model, call=call)
            except GatewayError as error:
                if not await self._may_retry(job, error, attempt):
                    return
                continue
            if self._finish(result_row(job, result, _ms_since(started)), failed=None):
                self._tally.add_usage(result)
            return

    async def _may_retry(self, job: Job, error: GatewayError, attempt: int) -> bool:
        """Decide after a failed attempt: wait and retry (True), or record the outcome."""
        if error.category in FATAL:
            self._stop_batch(fatal=error)
            return False
        delay = self._policy.delay(error, attempt)
        if delay is None:
            row = error_row(job.id, error.category.value, error.message)
            self._finish(row, failed=error.category.value)
            return False
        self._tally.retries += 1
        if error.category is Category.RATE_LIMITED:
            self._paused_until = max(self._paused_until, time.monotonic() + delay)
            return True
        return not await self._stopped_within(delay)

    async def _wait_for_pause(self) -> bool:
        """Wait out a rate-limit pause; False if the batch is stopping."""
        while (left := self._paused_until - time.monotonic()) > 0:
            if await self._stopped_within(left):
                return False
        return not self._stop.is_set()

    async def _stopped_within(self, seconds: float) -> bool:
        with anyio.move_on_after(seconds):
            await self._stop.wait()
        return self._stop.is_set()

    def _reject(self, bad: BadLine) -> None:
        message = f"line {bad.line}: {bad.reason}"
        self._progress.note(f"batch: {message}; written as an error row")
        self._finish(error_row(bad.id, INVALID_INPUT, message, bad.line), failed=INVALID_INPUT)

    def _finish(self, row: Row, *, failed: str | None) -> bool:
        """Write a finished row and count it; False (and the batch stops) if it can't be written."""
        if not self._sink.write(row):
            self._stop_batch()
            self._working.cancel()  # nothing more can be recorded
            return False
        if failed:
            self._tally.failed[failed] += 1
        else:
            self._tally.ok += 1
        self._progress.advance()
        return True

    def _stop_batch(self, *, signum: int | None = None, fatal: GatewayError | None = None) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._feeding.cancel()
        self.outcome.signum, self.outcome.fatal = signum, fatal

    async def _tick(self) -> None:
        while True:
            await anyio.sleep(PLAIN_PROGRESS_EVERY_S)
            self._progress.tick()

    async def _watch_signals(self) -> None:
        """First SIGINT/SIGTERM: stop feeding, grace period; second (or grace over): cancel."""
        with contextlib.ExitStack() as stack:
            try:
                signals = stack.enter_context(
                    anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
                )
            except (NotImplementedError, ValueError, RuntimeError):
                return  # no signal handling here (not the main thread, or not on this OS)
            self._stop_batch(signum=await anext(signals))
            self._progress.note(
                f"batch: stopping; waiting up to {GRACE_S:.0f} s for the rows in flight "
                "(press Ctrl-C again to stop now)"
            )
            with anyio.move_on_after(GRACE_S):
                await anext(signals)
        self._working.cancel()


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


async def _run_async(
    settings: Settings,
    options: BatchOptions,
    sink: ResultSink,
    progress: Progress,
    resumed: Resumed,
) -> Outcome:
    # No SDK retries: every attempt is decided, counted and logged by the batch itself.
    client = create_async_client(settings).with_options(max_retries=0)
    # The rollback switches (docs/RUNBOOK.md) apply to batches too: fallbacks, input limit.
    service = AsyncChatService(
        client, options.model or settings.model, Rollback.from_settings(settings)
    )
    batch = _Batch(service, options, sink, progress, resumed)
    try:
        with options.input.open("rb") as lines:
            await batch.run(read_rows(lines))
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()
    return batch.outcome


def run_batch(options: BatchOptions, settings: Settings) -> Outcome:
    """Run the whole batch; prints progress on stderr and the summary on stdout.

    Raises `BatchUsageError` (before any request) for a bad input or output path.
    """
    tally = Tally(total=count_rows(options.input))
    sink, resumed = open_output(options)
    if resumed.dropped_partial:
        print("batch: removed a partial last row from OUTPUT (an earlier crash)", file=sys.stderr)
    progress = TerminalProgress(tally) if sys.stderr.isatty() else Progress(tally)
    progress.start(len(resumed.keys))
    try:
        outcome = anyio.run(_run_async, settings, options, sink, progress, resumed)
    finally:
        progress.stop()
        sink.close()
    outcome.write_error = sink.error
    print("\n".join(outcome.tally.summary()), flush=True)
    if outcome.signum is not None:
        print("interrupted: rows not finished are not in OUTPUT; rerun with --resume")
    elif outcome.fatal is not None:
        print("stopped: the remaining rows were not sent; fix the problem and rerun with --resume")
    return outcome


# -- command line ----------------------------------------------------------------------------


def concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number from 1 to {MAX_CONCURRENCY}"
        )
    return value


def add_parser(commands: argparse._SubParsersAction[_P]) -> None:
    batch = commands.add_parser(
        "batch",
        help="run every prompt of a JSONL file, writing one JSON result line per prompt",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    batch.add_argument(
        "input",
        type=Path,
        metavar="INPUT.jsonl",
        help='one JSON object a line: {"id", "prompt" or "messages", "model"?, "user"?, "task"?}',
    )
    batch.add_argument(
        "output", type=Path, metavar="OUTPUT.jsonl", help="results, one JSON line per input line"
    )
    batch.add_argument(
        "--concurrency",
        type=concurrency,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight at once (1-{MAX_CONCURRENCY}, default {DEFAULT_CONCURRENCY})",
    )
    batch.add_argument(
        "--model", metavar="M", help="model for rows that name none (default: ALLTKN_MODEL)"
    )
    batch.add_argument(
        "--resume", action="store_true", help="skip rows already in OUTPUT and append the rest"
    )


def options_from(args: argparse.Namespace) -> BatchOptions:
    return BatchOptions(args.input, args.output, args.concurrency, args.model, args.resume)
