"""`doctor`'s checks of the callers: the callers file, and where their limits are counted.

Mixed into the doctor (`doctor._Doctor`), whose table runs them before `base_url` and the calls
to the gateway. Same contract as its other checks: one row each, no key, no password.
"""

from __future__ import annotations

import os

from .callers import Caller, CallersError, read
from .redis_doctor import ping
from .settings import Settings
from .support import Check

CALLER_CHECKS = {  # id: (title, the checks it needs), as in doctor.CHECKS
    "callers": ("callers file", ("settings",)),
    "limits": ("limits store", ("callers",)),
}
# The workers the production server starts when WEB_CONCURRENCY is not set.
DEFAULT_WORKERS = {{ 2 if cookiecutter.framework == "flask" else 1 }}
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
            url = secret.get_secret_value()
            return ping(url, self.timeout_s, self.deadline, "shared limits", REDIS_HINT)
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
