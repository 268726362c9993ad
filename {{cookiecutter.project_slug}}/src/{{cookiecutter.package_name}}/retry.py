"""The retry policy: which failures are retried, and which fall back to another model.

The openai SDK's own retry loop does the retrying (`ALLTKN_MAX_RETRIES` is its `max_retries`):
it already backs off exponentially with jitter (0.5 s doubling, at most 8 s), honours
`Retry-After` / `retry-after-ms`, retries timeouts and connection errors, and only ever retries
the request that opens a call, so a stream whose first byte arrived is never retried. What it
does not know is the gateway: it would retry a 503 that means "no channel serves this model",
OpenAI's 429 `insufficient_quota`, a 409, and wait out any `Retry-After` up to two minutes.
So the client's response hook (`client.py`) classifies every answer the SDK would retry and
vetoes the retry with the SDK's `x-should-retry: false` header unless the policy below allows
it. One policy, in one place, for every caller of `create_client()`.
"""

from __future__ import annotations

import email.utils
import math
import time

import httpx2

from .errors import Category, category_for_response

# Failures that may pass if tried again: retried before any byte was streamed.
RETRIED = frozenset(
    {Category.RATE_LIMITED, Category.UPSTREAM_UNAVAILABLE, Category.TIMEOUT, Category.CONNECTION}
)
# Failures another model may not have (ALLTKN_FALLBACK_MODELS); never auth, quota and the like,
# which every model on the same key shares.
FALLBACK_ON = frozenset({Category.MODEL_NOT_FOUND, Category.UPSTREAM_UNAVAILABLE, Category.TIMEOUT})
# The statuses the SDK retries on its own; every other answer is final anyway.
_SDK_RETRIED_STATUSES = frozenset({408, 409, 429})


def sdk_would_retry(status: int) -> bool:
    return status in _SDK_RETRIED_STATUSES or status >= 500


def retry_after_s(headers: httpx2.Headers) -> float | None:
    """The server's requested delay in seconds (`retry-after-ms`, `Retry-After` as seconds or
    as an HTTP date), as the SDK reads it; None when absent or unreadable."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            continue
    parsed = email.utils.parsedate_tz(headers.get("retry-after", ""))
    if parsed is None:
        return None
    return email.utils.mktime_tz(parsed) - time.time()


def should_retry(response: httpx2.Response, retry_after_cap_s: float) -> bool:
    """Whether an error answer (body already read) may be retried.

    A `Retry-After` above the cap fails fast rather than waiting the cap: retrying before the
    gateway's delay is over would most likely be refused again and spend a request of the rate
    limit, and the caller gets the 429 with the gateway's `Retry-After` to schedule its own retry.
    """
    if category_for_response(response) not in RETRIED:
        return False
    delay = retry_after_s(response.headers)
    return delay is None or math.isnan(delay) or delay <= retry_after_cap_s
