"""{% if cookiecutter.caller_auth == "keys" %}Per-caller limits: requests per minute, tokens per minute, tokens per UTC day.

A call reserves before it starts: one request, and its prompt (estimated) plus the most tokens it
may generate. It settles after, with the tokens the gateway counted (or, for a stream cut short,
an estimate of what was sent and received). A reservation checks and counts all three limits at
once, so a refused request costs nothing and concurrent requests never overshoot.

With ALLTKN_LIMITS_REDIS_URL the counters live in Redis: one Lua script per step, atomic for
every worker and replica. Without it, in this process only (`MemoryStore`), which is right for a
single process; the service refuses to start several workers on it (`admission.py`).
{%- endif %}
{%- if cookiecutter.worker == "celery" %}{% if cookiecutter.caller_auth == "keys" %}

{% endif %}The queue's pace (`Pacer`, for `worker.py`): ALLTKN_QUEUE_RPM and ALLTKN_QUEUE_TPM for every
worker at once, in the queue's Redis. Each call is given the moment it may start (virtual
scheduling, GCRA): calls are spaced 60/rpm seconds apart and a call of n tokens holds the next
one back n * 60/tpm seconds, so no 60 seconds, wherever they start, hold more than the limit
plus one call (counters per calendar minute allow twice the limit across a minute's boundary).
{%- endif %}
"""

from __future__ import annotations
{% if cookiecutter.caller_auth == "keys" %}
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
{%- endif %}
from typing import Any

import redis
{%- if cookiecutter.framework == "fastapi" and cookiecutter.caller_auth == "keys" %}
import redis.asyncio
import redis.asyncio.retry
{%- endif %}
import redis.retry
from redis.backoff import NoBackoff
{% if cookiecutter.caller_auth == "keys" %}
from .callers import Caller
from .errors import Category, GatewayError
{%- endif %}
from .request import ChatRequest

PREFIX = "alltkn"


def estimate_tokens(text: str) -> int:
    """A generous token count for `text` (3 UTF-8 bytes a token: over for English, about right
    for Chinese); reservations are settled with the gateway's own count."""
    return (len(text.encode()) + 2) // 3


def prompt_tokens(request: ChatRequest) -> int:
    if request.prompt is not None:
        return estimate_tokens(request.prompt) + 4
    return sum(estimate_tokens(m.content) + 4 for m in request.messages or [])


REDIS_ERRORS = (redis.RedisError, OSError)


# Redis slower than this fails a request closed (503 limiter_unavailable). Not much shorter: a
# saturated machine (100 streams on 2 cores) schedules a connect or a reply 0.5 s late now and
# then, and each would be a refused request.
REDIS_TIMEOUT_S = 2.0
# Connections per process, opened as needed and kept; a request waits for a free one (at most
# REDIS_TIMEOUT_S) instead of opening one more in a burst.
REDIS_CONNECTIONS = 32


def redis_options(retry: object) -> dict[str, Any]:
    timeouts = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
    pool = {"max_connections": REDIS_CONNECTIONS, "timeout": REDIS_TIMEOUT_S}
    # `retry` of no retries: a reservation sent twice would count twice; failing closed is quick.
    return {**timeouts, **pool, "retry": retry, "decode_responses": True}


{%- if cookiecutter.caller_auth == "keys" %}


USAGE_DAYS = 8  # how long `keys usage` can look back
logger = logging.getLogger(__name__)
_MINUTE_TTL_S = 120  # a minute's counters outlive it, so a late settle finds them
# KEYS: requests this minute, tokens this minute, tokens today, today's usage hash, tokens today
# still reserved by running calls. ARGV: rpm, tpm, daily tokens (0: no limit), cost, minute and
# day TTLs, the usage field's prefix, the usage hash's TTL.
# Returns {refused, requests, minute tokens, day tokens}; refused: 0 no, 1 rpm, 2 tpm, 3 the
# day's tokens are used up, 4 they would fit once the running calls have settled.
RESERVE = """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local daily, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local req = tonumber(redis.call('GET', KEYS[1]) or '0')
local tok = tonumber(redis.call('GET', KEYS[2]) or '0')
local day = tonumber(redis.call('GET', KEYS[3]) or '0')
local held = tonumber(redis.call('GET', KEYS[5]) or '0')
local refused = 0
if rpm > 0 and req + 1 > rpm then refused = 1
elseif tpm > 0 and tok + cost > tpm then refused = 2
elseif daily > 0 and day - held + cost > daily then refused = 3
elseif daily > 0 and day + cost > daily then refused = 4 end
if refused == 0 then
  req = redis.call('INCR', KEYS[1])
  tok = redis.call('INCRBY', KEYS[2], cost)
  day = redis.call('INCRBY', KEYS[3], cost)
  redis.call('INCRBY', KEYS[5], cost)
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
  redis.call('EXPIRE', KEYS[5], ARGV[6])
  redis.call('HINCRBY', KEYS[4], ARGV[7] .. '|requests', 1)
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
return {refused, req, tok, day}
"""
# KEYS: the reservation's minute and day token counters, its usage hash, the day's reserved.
# ARGV: used - reserved, used, the usage field's prefix, reserved.
SETTLE = """
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[1]) end
end
redis.call('HINCRBY', KEYS[3], ARGV[3] .. '|tokens', ARGV[2])
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('DECRBY', KEYS[4], ARGV[4]) end
"""
_REFUSALS = {
    1: (Category.CALLER_RATE_LIMITED, "requests per minute"),
    2: (Category.CALLER_RATE_LIMITED, "tokens per minute"),
    3: (Category.CALLER_BUDGET_EXHAUSTED, "tokens per UTC day"),
    4: (Category.CALLER_RATE_LIMITED, "tokens per UTC day (counting its running calls)"),
}
RUNNING_CALLS_WAIT_S = 5  # Retry-After when the day's tokens are held by running calls


@dataclass(frozen=True)
class Reservation:
    """What one admitted call holds until it settles."""

    keys: tuple[str, str, str, str]  # minute tokens, day tokens, usage hash, day reserved
    usage_field: str
    tokens: int
    prompt_tokens: int
    headers: dict[str, str] = field(default_factory=dict)

    def used(self, usage_total: int | None, received_text: str) -> int:
        """Tokens the call used: the gateway's count, else prompt plus what was received."""
        if usage_total is not None:
            return usage_total
        return self.prompt_tokens + estimate_tokens(received_text)


@dataclass(frozen=True)
class Plan:
    """The keys and arguments of one reservation (no I/O: the drivers run it)."""

    name: str
    caller: Caller
    keys: list[str]
    argv: list[Any]  # RESERVE's ARGV
    prompt_tokens: int
    now: float

    @classmethod
    def make(cls, name: str, caller: Caller, model: str, prompt: int, output: int) -> Plan:
        now = time.time()
        minute, day = int(now // 60), day_of(now)
        base = f"{PREFIX}:limits:{name}"
        keys = [
            f"{base}:m:{minute}:req",
            f"{base}:m:{minute}:tok",
            f"{base}:d:{day}:tok",
            f"{PREFIX}:usage:{day}",
            f"{base}:d:{day}:held",
        ]
        limits = [caller.rpm or 0, caller.tpm or 0, caller.daily_tokens or 0]
        ttls = [_MINUTE_TTL_S, 2 * 86_400]
        argv = [*limits, prompt + output, *ttls, f"{name}|{model}", USAGE_DAYS * 86_400]
        return cls(name, caller, keys, argv, prompt, now)

    def decide(self, result: list[Any]) -> Reservation:
        """The reservation, or the refusal (429 with Retry-After and the limit headers)."""
        refused, requests, minute_tokens, day_tokens = (int(value) for value in result)
        headers = self._headers(requests, minute_tokens, day_tokens)
        if refused:
            category, limit = _REFUSALS[refused]
            wait = {3: _seconds_to_utc_midnight(self.now), 4: RUNNING_CALLS_WAIT_S}.get(
                refused, 60 - self.now % 60
            )
            retry_after = str(max(1, math.ceil(wait)))
            why = f"caller {self.name} is over its {limit} limit; retry in {retry_after} s"
            raise GatewayError(category, detail=why, retry_after=retry_after, headers=headers)
        _, minute_tokens_key, day_tokens_key, usage_key, held_key = self.keys
        keys = (minute_tokens_key, day_tokens_key, usage_key, held_key)
        cost, usage_field = self.argv[3], self.argv[6]
        return Reservation(keys, usage_field, cost, self.prompt_tokens, headers)

    def _headers(self, requests: int, minute_tokens: int, day_tokens: int) -> dict[str, str]:
        """OpenAI's rate-limit headers, so callers' SDKs back off by themselves."""
        caller, headers = self.caller, {}
        if caller.rpm:
            headers["x-ratelimit-limit-requests"] = str(caller.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, caller.rpm - requests))
        token_limit, used = (
            (caller.tpm, minute_tokens) if caller.tpm else (caller.daily_tokens, day_tokens)
        )
        if token_limit:
            headers["x-ratelimit-limit-tokens"] = str(token_limit)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, token_limit - used))
        return headers


def settle_args(reservation: Reservation, used: int) -> tuple[list[str], list[int | str]]:
    delta = used - reservation.tokens
    return list(reservation.keys), [delta, used, reservation.usage_field, reservation.tokens]


def day_of(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")


def _seconds_to_utc_midnight(now: float) -> float:
    return 86_400 - now % 86_400


class MemoryStore:
    """The two scripts' effect, in this process (one worker; tests without Redis)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (value, expires at)
        self.usage: dict[str, dict[str, int]] = {}

    def _get(self, key: str, now: float) -> int:
        value, expires = self._counts.get(key, (0, 0.0))
        return value if expires > now else 0

    def reserve(self, keys: list[str], args: list[Any]) -> list[int]:
        rpm, tpm, daily, cost, minute_ttl, day_ttl, prefix, _ = args
        now = time.time()
        with self._lock:
            req, tok, day, held = (self._get(key, now) for key in (*keys[:3], keys[4]))
            refused = 0
            if rpm and req + 1 > rpm:
                refused = 1
            elif tpm and tok + cost > tpm:
                refused = 2
            elif daily and day - held + cost > daily:
                refused = 3
            elif daily and day + cost > daily:
                refused = 4
            if not refused:
                req, tok, day, held = req + 1, tok + cost, day + cost, held + cost
                counts = (req, tok, day, held)
                ttls = (minute_ttl, minute_ttl, day_ttl, day_ttl)
                for key, value, ttl in zip((*keys[:3], keys[4]), counts, ttls, strict=True):
                    self._counts[key] = (value, now + ttl)
                self._add(keys[3], f"{prefix}|requests", 1)
            if len(self._counts) > 10_000:  # forget expired windows
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        return [refused, req, tok, day]

    def settle(self, keys: list[str], args: list[Any]) -> None:
        delta, used, prefix, reserved = args
        now = time.time()
        with self._lock:
            for key, change in ((keys[0], delta), (keys[1], delta), (keys[3], -reserved)):
                value, expires = self._counts.get(key, (0, 0.0))
                if expires > now:
                    self._counts[key] = (value + change, expires)
            self._add(keys[2], f"{prefix}|tokens", used)

    def _add(self, usage_key: str, name: str, amount: int) -> None:
        fields = self.usage.setdefault(usage_key, {})
        fields[name] = fields.get(name, 0) + amount


def unavailable(exc: BaseException) -> GatewayError:
    """Fail closed; logged here, since no call line follows (Redis's errors hold no password)."""
    logger.warning("limits store unreachable, request refused: %s", type(exc).__name__)
    return GatewayError(Category.LIMITER_UNAVAILABLE, f"{type(exc).__name__}: {exc}"[:300])


def _settle_failed(exc: BaseException, reservation: Reservation) -> None:
    logger.warning(
        "could not settle %s's reservation of %d tokens (%s); it stays counted",
        reservation.usage_field,
        reservation.tokens,
        type(exc).__name__,
    )


class Limiter:
    """The limits for blocking code (Flask, the `keys` command)."""

    def __init__(self, redis_url: str | None) -> None:
        self.memory = None if redis_url else MemoryStore()
        if redis_url:
            options = redis_options(redis.retry.Retry(NoBackoff(), 0))
            pool = redis.BlockingConnectionPool.from_url(redis_url, **options)
            self.redis = redis.Redis.from_pool(pool)
            self._reserve = self.redis.register_script(RESERVE)
            self._settle = self.redis.register_script(SETTLE)

    def reserve(self, plan: Plan) -> Reservation:
        try:
            if self.memory is not None:
                return plan.decide(self.memory.reserve(plan.keys, plan.argv))
            return plan.decide(self._reserve(plan.keys, plan.argv))
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from None

    def settle(self, reservation: Reservation | None, used: int) -> None:
        """Count what an admitted call used (None: nothing was reserved). Never raises: the
        answer is out; a Redis failure here is logged."""
        if reservation is None:
            return
        keys, args = settle_args(reservation, used)
        try:
            if self.memory is not None:
                self.memory.settle(keys, args)
            else:
                self._settle(keys, args)
        except REDIS_ERRORS as exc:
            _settle_failed(exc, reservation)

    def usage(self, day: str) -> dict[str, int]:
        """Today's (or `day`'s) counters: `{"caller|model|requests": n, ...|tokens: n}`."""
        key = f"{PREFIX}:usage:{day}"
        if self.memory is not None:
            return dict(self.memory.usage.get(key, {}))
        return {str(name): int(value) for name, value in self.redis.hgetall(key).items()}
{%- if cookiecutter.framework == "fastapi" %}


class AsyncLimiter:
    """The limits on an event loop (FastAPI): the same scripts through `redis.asyncio`."""

    def __init__(self, redis_url: str | None) -> None:
        self.memory = None if redis_url else MemoryStore()
        if redis_url:
            options = redis_options(redis.asyncio.retry.Retry(NoBackoff(), 0))
            pool = redis.asyncio.BlockingConnectionPool.from_url(redis_url, **options)
            self.redis = redis.asyncio.Redis.from_pool(pool)
            self._reserve = self.redis.register_script(RESERVE)
            self._settle = self.redis.register_script(SETTLE)

    async def reserve(self, plan: Plan) -> Reservation:
        try:
            if self.memory is not None:
                return plan.decide(self.memory.reserve(plan.keys, plan.argv))
            return plan.decide(await self._reserve(plan.keys, plan.argv))
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from None

    async def settle(self, reservation: Reservation | None, used: int) -> None:
        if reservation is None:
            return
        keys, args = settle_args(reservation, used)
        try:
            if self.memory is not None:
                self.memory.settle(keys, args)
            else:
                await self._settle(keys, args)
        except REDIS_ERRORS as exc:
            _settle_failed(exc, reservation)

    async def aclose(self) -> None:
        if self.memory is None:
            await self.redis.aclose()
{%- endif %}
{%- endif %}
{%- if cookiecutter.worker == "celery" %}


# KEYS: the next free moment (ms) for a request, for a token. ARGV: ms per request, ms per
# token (0: no limit), the call's tokens, the longest wait (ms) worth taking a moment for.
# Returns the wait in ms; -1 - the wait when it is longer (nothing taken).
PACE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local per_req, per_tok = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, longest = tonumber(ARGV[3]), tonumber(ARGV[4])
local start = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'),
  tonumber(redis.call('GET', KEYS[2]) or '0'))
local wait = start - now
if wait > longest then return -1 - math.floor(wait) end
local next_req, next_tok = start + per_req, start + cost * per_tok
local ttl = math.ceil(math.max(next_req, next_tok) - now) + 60000
if per_req > 0 then redis.call('SET', KEYS[1], string.format('%.3f', next_req), 'PX', ttl) end
if per_tok > 0 then redis.call('SET', KEYS[2], string.format('%.3f', next_tok), 'PX', ttl) end
return math.floor(wait)
"""
# KEYS: the tokens' next free moment. ARGV: (used - reserved tokens) * ms per token.
REPACE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBYFLOAT', KEYS[1], ARGV[1]) end
"""


class Pacer:
    """The queue's rate for every worker: `reserve` before a call, `settle` after it. Without
    ALLTKN_QUEUE_RPM and ALLTKN_QUEUE_TPM it paces nothing (and never touches Redis)."""

    def __init__(self, redis_url: str, rpm: int | None, tpm: int | None) -> None:
        self.ms_per_request = 60_000 / rpm if rpm else 0.0
        self.ms_per_token = 60_000 / tpm if tpm else 0.0
        base = f"{PREFIX}:queue:pace"
        self.keys = [f"{base}:requests", f"{base}:tokens"]
        self.active = bool(rpm or tpm)
        if self.active:
            options = redis_options(redis.retry.Retry(NoBackoff(), 0))
            pool = redis.BlockingConnectionPool.from_url(redis_url, **options)
            self.redis = redis.Redis.from_pool(pool)
            self._pace = self.redis.register_script(PACE)
            self._repace = self.redis.register_script(REPACE)

    def reserve(self, tokens: int, longest_s: float) -> tuple[bool, float]:
        """Ask for the next free moment for a call of `tokens`: (taken, seconds until it). Not
        taken when it is more than `longest_s` away. Raises `REDIS_ERRORS`."""
        if not self.active:
            return True, 0.0
        argv = [self.ms_per_request, self.ms_per_token, tokens, int(longest_s * 1000)]
        wait_ms = int(self._pace(self.keys, argv))
        return (True, wait_ms / 1000) if wait_ms >= 0 else (False, (-1 - wait_ms) / 1000)

    def settle(self, reserved: int, used: int) -> None:
        """Give back (or take) the tokens a call did not use (or used beyond its reservation)."""
        if self.active and self.ms_per_token and used != reserved:
            self._repace(self.keys[1:], [(used - reserved) * self.ms_per_token])
{%- endif %}
