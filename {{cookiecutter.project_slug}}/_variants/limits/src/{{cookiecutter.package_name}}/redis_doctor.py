"""`doctor`'s PING of a Redis (the callers' limits, the queue): one row, in the doctor's time
bound, Redis named by host:port (or its socket's path), never by its URL's password."""

from __future__ import annotations

import time
from concurrent import futures
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .limiter import REDIS_ERRORS
from .support import Check

NO_RETRY = Retry(NoBackoff(), 0)  # one PING: its error, not a retry's wait


def where(redis_url: str) -> str:
    """host:port, or the socket's path: what a row may show of a Redis URL."""
    url = urlsplit(redis_url)
    return url.path if url.scheme == "unix" else f"{url.hostname}:{url.port or 6379}"


def ping(redis_url: str, timeout_s: float, deadline: float, used_for: str, hint: str) -> Check:
    """PING within the doctor's step share of `timeout_s` (before its `deadline`): connect and
    answer, so a hung Redis cannot hold the doctor."""
    from .doctor import SHARES, _bounded  # loaded: the doctor is what calls this

    seconds = max(0.01, min(SHARES["step"] * timeout_s, deadline - time.monotonic()))
    options = {"socket_timeout": seconds, "socket_connect_timeout": seconds, "retry": NO_RETRY}
    shown, started = where(redis_url), time.monotonic()
    try:
        with redis.Redis.from_url(redis_url, **options) as db:
            _bounded(seconds, db.ping)
    except (*REDIS_ERRORS, ValueError, futures.TimeoutError) as exc:  # ValueError: from_url's
        return Check("fail", f"cannot reach Redis at {shown} ({type(exc).__name__})", hint)
    took = (time.monotonic() - started) * 1000
    return Check("pass", f"Redis at {shown} answered PING in {took:.0f} ms: {used_for}")
