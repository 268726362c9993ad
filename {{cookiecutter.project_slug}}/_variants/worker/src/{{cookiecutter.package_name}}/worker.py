"""The queue's worker: a Celery app on ALLTKN_QUEUE_URL (broker and result backend) whose `chat`
task answers one job with the service's own sync chat service (its settings, fallbacks, logs and
metrics; no event loop per task).

    python -m <package> worker [--concurrency N] [--pool threads|prefork]

- Delivery: a message is acknowledged once its job has finished (`acks_late`), and given back
  when the process running it dies (`reject_on_worker_lost`); one a worker holds longer than
  ALLTKN_QUEUE_VISIBILITY_TIMEOUT_S is delivered again, so that timeout must be longer than the
  worst call (`worst_call_s`, checked at start). A job already finished is not sent to the gateway
  again (`jobs.JobStore.finish`). Every half visibility timeout one worker re-sends the jobs whose
  message was lost (`sweep`).
- Retries: the SDK makes none (`max_retries=0`), so they never multiply. A failure whose
  category `retry.py` retries is tried again by Celery after the gateway's Retry-After (at most
  ALLTKN_QUEUE_RETRY_AFTER_CAP_S), else after `retry.backoff_s`, `retry.unattended_attempts`
  times in all; any other category fails the job at once, with its error body.
- Rate: ALLTKN_QUEUE_RPM and ALLTKN_QUEUE_TPM hold for all workers together, through the queue's
  Redis (`limiter.Pacer`); not Celery's `rate_limit`, which is per worker.
- Metrics and spans: the same as the service's, exported over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT);
  a worker serves no /metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery, Task, bootsteps, signals
from kombu.exceptions import OperationalError

from . import heartbeat, retry, telemetry
from .chat import CallInfo
from .chat_sync import ChatService, create_client
from .errors import GatewayError, error_body
from .jobs import (
    JOB_TTL_S,
    PREFIX,
    QUEUE,
    JobStore,
    QueueSettings,
    QueueUnavailable,
)
from .limiter import REDIS_ERRORS, REDIS_TIMEOUT_S, Pacer, prompt_tokens
from .logs import configure_logging
from .request import ChatRequest
from .settings import ConfigError, Settings, build, load_settings_or_exit

TASK = f"{__package__}.chat"
# A call waits this long at most for its moment under ALLTKN_QUEUE_RPM / _TPM; a later moment is
# asked for again from a Celery countdown, so a worker never holds a slot idle for long.
PACE_WAIT_S = 10.0
MAX_CONCURRENCY = 256
ANNOUNCE_S = 10.0  # how often a running worker renews its key (`announce`)
logger = logging.getLogger(__name__)
app = Celery(__package__, set_as_current=False)


def configure(queue: QueueSettings) -> Celery:
    """The app on the queue's Redis; every process that enqueues or works calls it once."""
    url = queue.queue_url.get_secret_value()
    vt = queue.visibility_timeout_s
    # kombu gives back a lost worker's messages vt seconds on, looking every tenth of vt (at
    # most every minute; by default only every 100 s).
    every = int(min(max(vt / 10, 1), 60))
    transport = {"visibility_timeout": vt, "unacked_restore_interval": every,
                 "unacked_restore_throttle": 1}  # fmt: skip
    app.conf.update(
        broker_url=url,
        result_backend=url,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": vt},
        result_expires=JOB_TTL_S,
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker takes no more jobs than it runs
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False,  # no broadcast queues in Redis
        worker_hijack_root_logger=False,  # the service's JSON log lines
        worker_redirect_stdouts=False,
    )
    return app


def load_queue_settings_or_exit() -> QueueSettings:
    try:
        return build(QueueSettings)
    except ConfigError as exc:
        print(f"error[config]: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def worst_call_s(settings: Settings, queue: QueueSettings) -> float:
    """The longest a worker may hold a job's message: the longest countdown, the longest wait
    for its moment, then an attempt on each model that may be tried, each up to the timeout."""
    models = 1 + len(settings.fallback_model_list)
    return queue.retry_after_cap_s + PACE_WAIT_S + models * settings.timeout_s


def visibility_problem(settings: Settings, queue: QueueSettings) -> str | None:
    """Why the visibility timeout is too short for the worst call (one line), or None: the
    worker refuses to start with one, `doctor` fails its row."""
    worst, timeout = worst_call_s(settings, queue), queue.visibility_timeout_s
    if timeout > worst:
        return None
    return (
        f"ALLTKN_QUEUE_VISIBILITY_TIMEOUT_S is {timeout:g} s, not longer than the worst call "
        f"({worst:g} s: ALLTKN_QUEUE_RETRY_AFTER_CAP_S + {PACE_WAIT_S:g} s + ALLTKN_TIMEOUT_S "
        "per model); raise it, or jobs still running would be delivered again"
    )


def enqueue(
    store: JobStore,
    request: ChatRequest,
    owner: str | None = None,
    line_id: str | int | None = None,
    models: frozenset[str] | None = None,
) -> str:
    """Record a job and send its message; its id. `QueueUnavailable` if Redis is down."""
    try:
        job_id = store.create(request, owner, line_id, models)
    except REDIS_ERRORS as exc:
        raise QueueUnavailable(exc) from None
    try:
        chat.apply_async(args=[job_id], task_id=job_id)
    except (OperationalError, *REDIS_ERRORS) as exc:
        store.drop(job_id)
        raise QueueUnavailable(exc) from None
    return job_id


@dataclass
class _Runtime:
    """What a worker process's tasks share: made at its first task (in each prefork child)."""

    settings: Settings
    queue: QueueSettings
    service: ChatService
    store: JobStore
    pacer: Pacer
    pid: int


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> _Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            # No SDK retries: Celery retries, so attempts never multiply.
            settings = build(Settings).model_copy(update={"max_retries": 0})
            queue = build(QueueSettings)
            url = queue.queue_url.get_secret_value()
            service = ChatService(create_client(settings), settings)
            pacer = Pacer(url, queue.rpm, queue.tpm)
            _runtime = _Runtime(settings, queue, service, JobStore(url), pacer, os.getpid())
        return _runtime


@app.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)  # type: ignore[untyped-decorator]
def chat(self: Task, job_id: str, attempt: int = 1) -> str:
    """Answer one job: its state ("done", "failed"), or a Celery retry."""
    return run(self, job_id, attempt)


def run(task: Task, job_id: str, attempt: int) -> str:
    rt = runtime()
    job = rt.store.get(job_id)
    if job is None:
        logger.warning("job %s is gone (expired or removed); nothing sent", job_id)
        return "gone"
    if job.state != "pending":  # delivered again after it finished: never billed twice
        return job.state
    request = ChatRequest.model_validate_json(job.request)
    tokens = prompt_tokens(request) + (request.max_tokens or rt.settings.max_output_tokens)
    try:
        taken, wait = rt.pacer.reserve(tokens, PACE_WAIT_S)
    except REDIS_ERRORS as exc:
        logger.warning("job %s: the queue's Redis failed (%s); retrying", job_id, exc)
        raise task.retry(args=[job_id, attempt], countdown=retry.backoff_s(attempt)) from None
    if not taken:
        raise task.retry(args=[job_id, attempt], countdown=wait)
    time.sleep(wait)
{%- if cookiecutter.caller_auth == "keys" %}
    models = frozenset(job.models) if job.models is not None else None
    info = CallInfo(job_id, request.user, request.task, caller=job.owner, models=models)
{%- else %}
    info = CallInfo(job_id, request.user, request.task)
{%- endif %}
    started = time.perf_counter()
    try:
        result = rt.service.complete(request, info)
    except GatewayError as error:
        rt.pacer.settle(tokens, 0)
        delay = _retry_delay(error, attempt, rt.queue.retry_after_cap_s)
        if delay is not None:
            raise task.retry(args=[job_id, attempt + 1], countdown=delay) from None
        body = error_body(error.category, error.message, error.hint, job_id)
        rt.store.finish(job_id, "failed", body)
        return "failed"
    rt.pacer.settle(tokens, result.usage.total_tokens if result.usage else tokens)
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    rt.store.finish(job_id, "done", {**asdict(result), "duration_ms": duration_ms})
    return "done"


def _retry_delay(error: GatewayError, attempt: int, cap_s: float) -> float | None:
    """The countdown before the job's next attempt: at least the gateway's Retry-After, else
    `retry.backoff_s`; None when the job fails now."""
    after = retry.retry_after_s({"retry-after": error.retry_after or ""})
    last = attempt >= retry.unattended_attempts(error.category)
    if last or not retry.may_retry(error.category, after, cap_s):
        return None
    return retry.backoff_s(attempt) if after is None else max(after, 0.0)


def sweep(queue: QueueSettings, stop: threading.Event) -> None:
    """Every half visibility timeout, one worker (a Redis lock) re-sends the jobs pending for
    longer than the visibility timeout that have no message left (`JobStore.lost`)."""
    store, every = JobStore(queue.queue_url.get_secret_value()), queue.visibility_timeout_s / 2
    while True:
        try:
            if store.redis.set(f"{PREFIX}:sweep", os.getpid(), nx=True, px=int(every * 1000)):
                lost = set(store.lost(queue.visibility_timeout_s))
                if lost and not stop.wait(1.0):  # a message in transit shows up by then
                    for job_id in lost & set(store.lost(queue.visibility_timeout_s)):
                        chat.apply_async(args=[job_id], task_id=job_id)
                        store.sent(job_id)
                        logger.warning("job %s: its message was lost; sent again", job_id)
        except (OperationalError, *REDIS_ERRORS) as exc:
            logger.warning("sweep for lost jobs failed: %s", type(exc).__name__)
        if stop.wait(every):
            return


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Touches WORKER_HEARTBEAT_FILE every `heartbeat.EVERY_S` from the worker's event loop (its
    timer fires only while the loop runs), for the probes of `heartbeat.py`."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.target, self.timer = heartbeat.path(), None

    def start(self, parent: Any) -> None:
        if self.target is not None:
            heartbeat.touch(self.target)
            every, args = heartbeat.EVERY_S, (self.target,)
            self.timer = parent.timer.call_repeatedly(every, heartbeat.touch, args, priority=10)

    def stop(self, parent: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()


def announce(queue: QueueSettings, name: str, concurrency: int, stop: threading.Event) -> None:
    """While the worker runs, its key in Redis, renewed every ANNOUNCE_S and living three times
    as long: `doctor` counts the workers running from them."""
    store = JobStore(queue.queue_url.get_secret_value())
    while not stop.is_set():
        with contextlib.suppress(*REDIS_ERRORS):
            store.announce(name, concurrency, 3 * ANNOUNCE_S)
        stop.wait(ANNOUNCE_S)
    with contextlib.suppress(*REDIS_ERRORS):
        store.retire(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help=f"jobs at once (default: WORKER_CONCURRENCY, else 8; at most {MAX_CONCURRENCY})",
    )
    parser.add_argument(
        "--pool",
        choices=("threads", "prefork"),
        default="threads",
        help="threads (default: calls wait on the network) or prefork (processes)",
    )


def main(args: argparse.Namespace) -> int:
    """`worker`: check the settings and the queue, then run Celery's worker until stopped."""
    settings, queue = load_settings_or_exit(), load_queue_settings_or_exit()
    raw = str(args.concurrency or os.environ.get("WORKER_CONCURRENCY", "").strip() or 8)
    if not (raw.isdigit() and 1 <= int(raw) <= MAX_CONCURRENCY):
        print(f"error[config]: --concurrency / WORKER_CONCURRENCY must be 1 to "
              f"{MAX_CONCURRENCY}", file=sys.stderr)  # fmt: skip
        return 2
    if problem := visibility_problem(settings, queue):
        print(f"error[config]: {problem}", file=sys.stderr)
        return 2
    try:
        JobStore(queue.queue_url.get_secret_value()).check()
    except QueueUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, secrets=settings.secret_values)
    if args.pool == "threads":
        telemetry.start_or_exit(settings)
    else:  # exporters do not survive a fork: each child starts its own
        signals.worker_process_init.connect(_start_telemetry, weak=False)
    configure(queue)
    stop, name = threading.Event(), f"{__package__}-{os.getpid()}@{socket.gethostname()}"
    announcing = threading.Thread(target=announce, args=(queue, name, int(raw), stop), daemon=True)

    def ready(**_: Any) -> None:
        threading.Thread(target=sweep, args=(queue, stop), daemon=True).start()
        announcing.start()
        logger.info("worker ready: %s jobs at once (%s), queue %s", raw, args.pool, QUEUE)

    signals.worker_ready.connect(ready, weak=False)
    if heartbeat.path() is not None:
        app.steps["worker"].add(Heartbeat)
    argv = ["--quiet", "worker", f"--concurrency={raw}", f"--pool={args.pool}", f"--queues={QUEUE}",
            f"--hostname={name}", f"--loglevel={settings.log_level}",
            "--without-gossip", "--without-mingle",
            "--without-heartbeat"]  # fmt: skip
    try:
        app.worker_main(argv)
    finally:
        stop.set()
        if announcing.is_alive():
            announcing.join(timeout=REDIS_TIMEOUT_S)
        telemetry.stop()
    return 0


def _start_telemetry(**_: Any) -> None:
    telemetry.start_or_exit(build(Settings))
