"""The retry policy, in one place: what is retried, what falls back, how long to wait.

The SDK retries the request that opens a call (`ALLTKN_MAX_RETRIES`), but not knowing the
gateway it would retry a 503 "no channel serves this model", a 429 `insufficient_quota`, a 409,
and wait out a minute's `Retry-After`: the clients' response hook vetoes those (`veto`). Streams
that failed before their first delta, and batch rows, are retried with the pauses from here.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import random
import time
from collections.abc import Mapping

import httpx2

from . import metrics
from .errors import Category, GatewayError, category_for_response

# Failures that may pass if tried again.
RETRIED = frozenset(
    {Category.RATE_LIMITED, Category.UPSTREAM_UNAVAILABLE, Category.TIMEOUT, Category.CONNECTION}
)
# Failures another model may not have (ALLTKN_FALLBACK_MODELS); not auth, quota... (per key).
FALLBACK_ON = frozenset({Category.MODEL_NOT_FOUND, Category.UPSTREAM_UNAVAILABLE, Category.TIMEOUT})
{%- if cookiecutter.framework == "script" or cookiecutter.worker == "celery" %}
# Work nobody waits for (batch rows, queued jobs): how often it is tried, and a Retry-After longer
# than an interactive call's (ALLTKN_RETRY_AFTER_CAP_S) it waits out.
UNATTENDED_ATTEMPTS = {Category.RATE_LIMITED: 6}  # 4 for the others in RETRIED
UNATTENDED_RETRY_AFTER_CAP_S = 60.0
{%- endif %}


def backoff_s(attempt: int) -> float:
    """The pause before retry number `attempt` (1, 2, ...), like the SDK's: 0.5 s doubling, at
    most 8 s, up to a quarter less at random."""
    delay = min(0.5 * 2.0 ** (attempt - 1), 8.0)
    return delay * (1 - 0.25 * random.random())  # noqa: S311 (jitter, not a secret)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The server's requested delay in seconds (`retry-after-ms`, `Retry-After` as seconds or
    as an HTTP date), as the SDK reads it; None when absent or unreadable."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        with contextlib.suppress(ValueError):  # absent or not a number: the next one
            delay = float(headers.get(name) or "absent") / divisor
            return None if math.isnan(delay) else delay
    parsed = email.utils.parsedate_tz(headers.get("retry-after") or "")
    return None if parsed is None else email.utils.mktime_tz(parsed) - time.time()


def may_retry(category: Category, retry_after: float | None, cap_s: float) -> bool:
    """A `Retry-After` above the cap fails fast rather than waiting: the caller gets the 429
    and the gateway's delay, instead of a request hung for a minute."""
    return category in RETRIED and (retry_after is None or retry_after <= cap_s)
{%- if cookiecutter.framework == "script" or cookiecutter.worker == "celery" %}


def unattended_attempts(category: Category) -> int:
    return UNATTENDED_ATTEMPTS.get(category, 4)
{%- endif %}


def sdk_would_retry(status: int) -> bool:
    """The statuses the SDK retries on its own; every other answer is final anyway."""
    return status in (408, 409, 429) or status >= 500


def veto(response: httpx2.Response, cap_s: float) -> None:
    """For the clients' response hooks, on an answer the SDK would retry (body read): stop the
    retry the policy refuses, with the SDK's own `x-should-retry: false` header."""
    category = category_for_response(response)
    if not may_retry(category, retry_after_s(response.headers), cap_s):
        response.headers["x-should-retry"] = "false"


def review(response: httpx2.Response, cap_s: float, max_retries: int) -> None:
    """The clients' response hook, on an answer the SDK would retry (body read): `veto`, or
    count the retry the SDK is about to make (its header says how many it already made)."""
    veto(response, cap_s)
    if not metrics.recording() or response.headers.get("x-should-retry") == "false":
        return
    with contextlib.suppress(ValueError, AttributeError):  # not the JSON the service sent
        if int(response.request.headers.get("x-stainless-retry-count", "0")) < max_retries:
            model = json.loads(response.request.content).get("model")
            category = category_for_response(response).value
            metrics.add(metrics.RETRIES, gen_ai_request_model=metrics.model(model),
                        error_type=category)  # fmt: skip


class Attempts:
    """The order in which one call is tried: the requested model, retried while it fails with a
    category in `RETRIED` (at most `max_retries` times), then each fallback model while it
    fails with one in `FALLBACK_ON`."""

    def __init__(self, models: list[str], max_retries: int, retry_after_cap_s: float) -> None:
        self.models = models
        self._max_retries = max_retries
        self._cap_s = retry_after_cap_s
        self._index = self._retried = 0

    @property
    def model(self) -> str:
        return self.models[self._index]

    @property
    def fallback_from(self) -> str | None:
        """The model first asked for, when the current one is a fallback."""
        return self.models[0] if self._index else None

    def after(self, error: GatewayError, *, retry: bool = True) -> float | None:
        """Move on after `error`: the pause before the next attempt, or None if `error` is
        final. `retry=False` when the SDK has already retried this attempt."""
        wait = retry_after_s({"retry-after": error.retry_after}) if error.retry_after else None
        retry = retry and self._retried < self._max_retries
        if retry and may_retry(error.category, wait, self._cap_s):
            self._retried += 1
            return max(wait, 0.0) if wait is not None else backoff_s(self._retried)
        if error.category in FALLBACK_ON and self._index + 1 < len(self.models):
            self._index, self._retried = self._index + 1, 0
            return 0.0
        return None
