"""`doctor`'s checks of the callers: the callers file, and where their limits are counted.

Mixed into the doctor (`doctor._Doctor`), whose table runs them before `base_url` and the calls
to the gateway. Same contract as its other checks: one row each, no key, no password.
"""

from __future__ import annotations

import os
import time
from concurrent import futures
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .callers import Caller, CallersError, read
from .limiter import REDIS_ERRORS
from .settings import Settings
from .support import Check

CALLER_CHECKS = {  # id: (title, the checks it needs), as in doctor.CHECKS
    "callers": ("callers file", ("settings",)),
    "limits": ("limits store", ("callers",)),
}
# The workers the production server starts when WEB_CONCURRENCY is not set.
DEFAULT_WORKERS = {{ 2 if cookiecutter.framework == "flask" else 1 }}
NO_RETRY = Retry(NoBackoff(), 0)  # one PING: its error, not a retry's wait
REDIS_HINT = (
    "Check the host, port and password in ALLTKN_LIMITS_REDIS_URL, and that Redis runs: "
    "the service refuses every chat request (limiter_unavailable) while it cannot reach it."
)


class CallerChecks:
    """`check_<id>` for each of CALLER_CHECKS, with the doctor's settings and time bound."""

    settings: Settings
    timeout_s: float
    deadline: float
    callers: dict[str, Caller]

    def check_callers(self) -> Check:
        try:
            self.callers = read(self.settings.callers_file)
        except CallersError as exc:  # one line, with its fix
            return Check("fail", str(exc), "The service would refuse to start with it too.")
        if not self.callers:
            hint = f"Create one: python -m {__package__} keys create NAME"
            return Check("warn", f"no callers in {self.settings.callers_file}: all get 401", hint)
        count, limited = len(self.callers), sum(c.limited for c in self.callers.values())
        return Check("pass", f"{count} caller{'s' * (count > 1)}, {limited} with limits")

    def check_limits(self) -> Check:
        if (secret := self.settings.limits_redis_url) is not None:
            return self._ping(secret.get_secret_value())
        if not (limited := sorted(n for n, caller in self.callers.items() if caller.limited)):
            return Check("pass", "no caller has limits (ALLTKN_LIMITS_REDIS_URL not set)")
        raw = os.environ.get("WEB_CONCURRENCY", "").strip()
        workers, given = (int(raw), f"={raw}") if raw.isdigit() else (DEFAULT_WORKERS, " unset")
        if workers > 1:  # each would count alone: the service refuses to start so
            detail = (
                f"{workers} workers (WEB_CONCURRENCY{given}) would each count the limits of "
                f"caller {limited[0]} alone: ALLTKN_LIMITS_REDIS_URL is not set"
            )
            hint = (
                "Set ALLTKN_LIMITS_REDIS_URL (one Redis for every worker and replica), or "
                "WEB_CONCURRENCY=1: as it is, the service refuses to start."
            )
            return Check("fail", detail, hint)
        hint = "Set ALLTKN_LIMITS_REDIS_URL before running more workers or replicas."
        return Check("warn", "limits counted in this process only: one worker", hint)

    def _ping(self, redis_url: str) -> Check:
        """PING, in the doctor's time bound; Redis is named by host:port, never the password."""
        from .doctor import SHARES, _bounded  # loaded: the doctor is what calls this

        seconds = max(0.01, min(SHARES["step"] * self.timeout_s, self.deadline - time.monotonic()))
        options = {"socket_timeout": seconds, "socket_connect_timeout": seconds, "retry": NO_RETRY}
        url, started = urlsplit(redis_url), time.monotonic()  # its port: checked by Settings
        where = url.path if url.scheme == "unix" else f"{url.hostname}:{url.port or 6379}"
        try:
            with redis.Redis.from_url(redis_url, **options) as db:
                _bounded(seconds, db.ping)
        except (*REDIS_ERRORS, ValueError, futures.TimeoutError) as exc:  # ValueError: from_url's
            detail = f"cannot reach Redis at {where} ({type(exc).__name__})"
            return Check("fail", detail, REDIS_HINT)
        took = (time.monotonic() - started) * 1000
        return Check("pass", f"Redis at {where} answered PING in {took:.0f} ms: shared limits")
