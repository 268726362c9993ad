"""`doctor`'s checks of the queue: ALLTKN_QUEUE_URL, its Redis, the visibility timeout against
the worst call (the check `worker` makes at start: `worker.visibility_problem`), and the workers
running (each keeps a key in Redis: `worker.announce`; Celery's `inspect ping` would need remote
control, which the workers run without).

Mixed into the doctor (`doctor._Doctor`) like the callers' checks: one row each, no password.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .jobs import JobStore, QueueSettings
from .limiter import REDIS_ERRORS
from .redis_doctor import ping, where
from .settings import ConfigError, Settings, build
from .support import Check
from .worker import ANNOUNCE_S, visibility_problem, worst_call_s

WORKER_CHECKS = {  # id: (title, the checks it needs), as in doctor.CHECKS
    "queue_url": ("queue URL", ()),
    "queue": ("queue Redis", ("queue_url",)),
    "visibility": ("visibility timeout", ("settings", "queue_url")),
    "workers": ("workers running", ("queue",)),
}
QUEUE_HINT = (
    "Check the host, port and password in ALLTKN_QUEUE_URL, and that Redis runs: workers, "
    "enqueue and collect refuse to start without it."
)
LOCAL_HINT = (
    "Fine on this machine; workers on other hosts and the processes that enqueue need one "
    "Redis they all reach: set ALLTKN_QUEUE_URL (docs/WORKER.md)."
)


class WorkerChecks:
    """`check_<id>` for each of WORKER_CHECKS, with the doctor's settings and time bound."""

    settings: Settings
    timeout_s: float
    deadline: float
    queue: QueueSettings

    def check_queue_url(self) -> Check:
        try:
            self.queue = build(QueueSettings)
        except (ConfigError, OSError, ValueError) as exc:  # one line naming the variable
            return Check("fail", str(exc), "The worker, enqueue and collect refuse it too.")
        raw = self.queue.queue_url.get_secret_value()
        url = urlsplit(raw)
        shown = f"{url.scheme}://{where(raw)}" + ("" if url.scheme == "unix" else url.path)
        if "queue_url" not in self.queue.model_fields_set:
            return Check("warn", f"ALLTKN_QUEUE_URL is not set: the queue is {shown}", LOCAL_HINT)
        with_password = " (with a password, not shown)" if url.password else ""
        return Check("pass", f"{shown}{with_password}")

    def check_queue(self) -> Check:
        url = self.queue.queue_url.get_secret_value()
        return ping(url, self.timeout_s, self.deadline, "the queue", QUEUE_HINT)

    def check_visibility(self) -> Check:
        if problem := visibility_problem(self.settings, self.queue):
            return Check("fail", problem, "The worker refuses to start with it.")
        worst = worst_call_s(self.settings, self.queue)
        detail = f"{self.queue.visibility_timeout_s:g} s, longer than the worst call ({worst:g} s)"
        return Check("pass", detail)

    def check_workers(self) -> Check:
        try:
            seen = JobStore(self.queue.queue_url.get_secret_value()).workers()
        except REDIS_ERRORS as exc:
            return Check("warn", f"the workers could not be counted ({type(exc).__name__})")
        if not seen:
            detail = f"no worker seen in the last {3 * ANNOUNCE_S:g} s: queued jobs wait for one"
            return Check("warn", detail, f"Start one: python -m {__package__} worker")
        count = f"{len(seen)} worker{'s' * (len(seen) > 1)}"
        return Check("pass", f"{count} running, {sum(seen)} jobs at once in all")
