"""The callers' limits, each case against both stores: this process's (`memory`) and a real Redis
(`redis`, shared by every worker and replica). Reserve before a call, settle after it: a refused
request counts nothing, concurrent requests never overshoot, Redis down fails closed.

The limiter's clock is a fake one set a few seconds into a minute (the minute and the day are
part of the counters' names), so no case depends on when it runs."""

from __future__ import annotations

{% if cookiecutter.framework == "fastapi" -%}
import asyncio
{% endif -%}
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from {{ cookiecutter.package_name }} import limiter
from {{ cookiecutter.package_name }}.callers import Caller
from {{ cookiecutter.package_name }}.errors import Category, GatewayError
from {{ cookiecutter.package_name }}.limiter import {% if cookiecutter.framework == "fastapi" %}AsyncLimiter, {% endif %}Limiter, Plan, Reservation, day_of

from .redis_server import RedisServer, redis_server  # noqa: F401

MODEL = "gpt-4o-mini"
SECONDS_INTO_THE_MINUTE = 20.25


class Clock:
    """Stands in for the `time` module in limiter.py: `time()` is `now`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(time.time() // 60 * 60 + SECONDS_INTO_THE_MINUTE)
    monkeypatch.setattr(limiter, "time", fake)
    return fake


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, clock: Clock) -> Iterator[Limiter]:
    """A sync `Limiter` on each store (Redis flushed)."""
    if request.param == "memory":
        yield Limiter(None)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    opened = Limiter(server.url)
    yield opened
    opened.redis.close()


@pytest.fixture
def name() -> str:
    return f"caller-{uuid.uuid4().hex[:8]}"


def policy(**limits: Any) -> Caller:
    return Caller(key_sha256="0" * 64, key_prefix="ck_test", **limits)


def plan(name: str, caller: Caller, prompt: int = 10, output: int = 10, model: str = MODEL) -> Plan:
    return Plan.make(name, caller, model, prompt, output)


def refused(store: Limiter, planned: Plan) -> GatewayError:
    with pytest.raises(GatewayError) as refusal:
        store.reserve(planned)
    return refusal.value


def counter(store: Limiter, key: str) -> int | None:
    """A counter as stored (None: absent or expired)."""
    if store.memory is not None:
        value, expires = store.memory._counts.get(key, (0, 0.0))
        return value if expires > limiter.time.time() else None
    raw = store.redis.get(key)
    return None if raw is None else int(raw)


def mine(usage: dict[str, int], *names: str) -> dict[str, int]:
    return {field: n for field, n in usage.items() if field.split("|")[0] in names}


# --- each limit -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds_into_minute", "retry_after"),
    [
        pytest.param(SECONDS_INTO_THE_MINUTE, "40", id="mid-minute"),
        pytest.param(0.0, "60", id="minute-start"),
        pytest.param(59.9, "1", id="minute-end"),
    ],
)
def test_rpm_admits_exactly_n_then_refuses_until_the_next_minute(
    store: Limiter, clock: Clock, name: str, seconds_into_minute: float, retry_after: str
) -> None:
    clock.now = clock.now // 60 * 60 + seconds_into_minute
    caller = policy(rpm=3)
    remaining = [store.reserve(plan(name, caller)).headers for _ in range(3)]

    assert [h["x-ratelimit-remaining-requests"] for h in remaining] == ["2", "1", "0"]
    assert {h["x-ratelimit-limit-requests"] for h in remaining} == {"3"}
    error = refused(store, plan(name, caller))
    assert error.category is Category.CALLER_RATE_LIMITED
    assert error.retry_after == retry_after
    assert str(error) == (
        f"caller {name} is over its requests per minute limit; retry in {retry_after} s"
    )
    assert error.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
    }

    clock.now = clock.now // 60 * 60 + 60  # the next minute
    assert store.reserve(plan(name, caller)).headers["x-ratelimit-remaining-requests"] == "2"


def test_tpm_reserves_prompt_and_max_tokens_and_settling_frees_the_rest(
    store: Limiter, name: str
) -> None:
    caller = policy(tpm=100)
    first = store.reserve(plan(name, caller, prompt=10, output=50))
    assert first.tokens == 60
    assert first.headers == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "40",
    }

    error = refused(store, plan(name, caller, prompt=10, output=50))
    assert error.category is Category.CALLER_RATE_LIMITED
    assert "tokens per minute" in str(error)
    assert error.retry_after == str(math.ceil(60 - SECONDS_INTO_THE_MINUTE))

    store.settle(first, 20)  # the call used 20 of its 60
    again = store.reserve(plan(name, caller, prompt=10, output=50))
    assert again.headers["x-ratelimit-remaining-tokens"] == "20"
    store.settle(again, 90)  # more than reserved: counted too
    assert refused(store, plan(name, caller, prompt=1, output=1)).headers == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "0",
    }


def test_the_daily_budget_refuses_until_utc_midnight(
    store: Limiter, clock: Clock, name: str
) -> None:
    caller = policy(daily_tokens=100, rpm=50)
    store.settle(store.reserve(plan(name, caller, prompt=30, output=30)), 60)

    error = refused(store, plan(name, caller, prompt=30, output=30))
    assert error.category is Category.CALLER_BUDGET_EXHAUSTED
    assert "tokens per UTC day" in str(error)
    midnight = (clock.now // 86_400 + 1) * 86_400
    assert error.retry_after == str(math.ceil(midnight - clock.now))
    assert error.headers["x-ratelimit-remaining-tokens"] == "40"
    assert error.headers["x-ratelimit-limit-tokens"] == "100"  # the daily one: no tpm

    clock.now = midnight + 5  # a new UTC day
    next_day = store.reserve(plan(name, caller, prompt=30, output=30))
    assert next_day.headers["x-ratelimit-remaining-tokens"] == "40"


def test_a_day_held_by_running_calls_is_a_short_wait_not_an_exhausted_budget(
    store: Limiter, name: str
) -> None:
    caller = policy(daily_tokens=100, rpm=50)
    running = store.reserve(plan(name, caller, prompt=30, output=30))  # not settled yet

    error = refused(store, plan(name, caller, prompt=30, output=30))
    assert error.category is Category.CALLER_RATE_LIMITED
    assert "counting its running calls" in str(error)
    assert error.retry_after == "5"

    store.settle(running, 20)  # it used 20 of its 60: the next one fits
    store.reserve(plan(name, caller, prompt=30, output=30))


@pytest.mark.parametrize(
    ("limits", "headers"),
    [
        pytest.param({}, {}, id="no-limits"),
        pytest.param({"rpm": 5}, {"x-ratelimit-limit-requests": "5"}, id="rpm-only"),
        pytest.param(
            {"tpm": 500, "daily_tokens": 900}, {"x-ratelimit-limit-tokens": "500"}, id="tpm-first"
        ),
        pytest.param({"daily_tokens": 900}, {"x-ratelimit-limit-tokens": "900"}, id="daily-only"),
    ],
)
def test_the_headers_show_the_limits_a_caller_has(
    store: Limiter, name: str, limits: dict[str, int], headers: dict[str, str]
) -> None:
    shown = store.reserve(plan(name, policy(**limits))).headers
    assert {k: v for k, v in shown.items() if "-limit-" in k} == headers
    assert len(shown) == 2 * len(headers)  # each limit with its remaining count


def test_a_caller_without_limits_is_counted_and_never_refused(store: Limiter, name: str) -> None:
    for _ in range(30):
        store.settle(store.reserve(plan(name, policy(), prompt=500, output=4096)), 1)
    assert mine(store.usage(day_of(limiter.time.time())), name) == {
        f"{name}|{MODEL}|requests": 30,
        f"{name}|{MODEL}|tokens": 30,
    }


@pytest.mark.parametrize(
    ("limits", "first_cost", "refused_cost", "remaining_after"),
    [
        # the requests then the tokens left, after the refusal and one more admitted call of 10
        pytest.param({"rpm": 1, "tpm": 100}, 10, 10, None, id="by-rpm"),
        pytest.param({"rpm": 5, "tpm": 100}, 90, 20, ("3", "0"), id="by-tpm"),
        pytest.param({"rpm": 5, "daily_tokens": 100}, 90, 20, ("3", "0"), id="by-daily"),
    ],
)
def test_a_refused_reservation_counts_nothing(
    store: Limiter,
    name: str,
    limits: dict[str, int],
    first_cost: int,
    refused_cost: int,
    remaining_after: tuple[str, str] | None,
) -> None:
    caller = policy(**limits)
    before = store.reserve(plan(name, caller, prompt=first_cost, output=0)).headers

    error = refused(store, plan(name, caller, prompt=refused_cost, output=0))

    assert error.headers == before  # the refusal's own view: nothing added
    if remaining_after is not None:
        after = store.reserve(plan(name, caller, prompt=10, output=0)).headers
        assert (after["x-ratelimit-remaining-requests"], after["x-ratelimit-remaining-tokens"]) == (
            remaining_after
        )
    requests = mine(store.usage(day_of(limiter.time.time())), name)[f"{name}|{MODEL}|requests"]
    assert requests == (1 if remaining_after is None else 2)


@pytest.mark.parametrize(
    ("limits", "cost"),
    [
        pytest.param({"rpm": 10}, 1, id="rpm"),
        pytest.param({"tpm": 100}, 10, id="tpm"),
        pytest.param({"daily_tokens": 100}, 10, id="daily"),
    ],
)
def test_40_concurrent_reservations_against_a_limit_of_10_admit_10(
    store: Limiter, name: str, limits: dict[str, int], cost: int
) -> None:
    caller = policy(**limits)
    start = threading.Barrier(40)

    def attempt(_: int) -> bool:
        start.wait()
        try:
            store.reserve(plan(name, caller, prompt=cost, output=0))
        except GatewayError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=40) as pool:
        admitted = sum(pool.map(attempt, range(40)))

    assert admitted == 10


def test_two_limiters_on_one_redis_enforce_one_limit(
    redis_server: RedisServer,  # noqa: F811
    clock: Clock,
    name: str,
) -> None:
    """As two replicas do: 2 x 20 concurrent requests against an rpm of 10."""
    redis_server.flush()
    replicas = [Limiter(redis_server.url), Limiter(redis_server.url)]
    caller = policy(rpm=10)
    start = threading.Barrier(40)

    def attempt(number: int) -> bool:
        start.wait()
        try:
            replicas[number % 2].reserve(plan(name, caller))
        except GatewayError:
            return False
        return True

    try:
        with ThreadPoolExecutor(max_workers=40) as pool:
            assert sum(pool.map(attempt, range(40))) == 10
    finally:
        for replica in replicas:
            replica.redis.close()


def test_a_settle_after_the_minute_expired_leaves_no_negative_counter(
    store: Limiter, clock: Clock, name: str
) -> None:
    caller = policy(tpm=100, daily_tokens=1000)
    reservation = store.reserve(plan(name, caller, prompt=10, output=50))
    minute_key, day_key, *_ = reservation.keys
    if store.memory is not None:
        clock.now += limiter._MINUTE_TTL_S + 1  # in the same day: the fake clock is at :20
    else:
        store.redis.delete(minute_key, minute_key.replace(":tok", ":req"))  # as expiry does

    store.settle(reservation, 10)  # 50 fewer than reserved

    assert counter(store, minute_key) is None
    assert counter(store, day_key) == 10
    assert store.reserve(plan(name, caller, prompt=10, output=50)).headers == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "40",  # not 90: no -50 left behind
    }
    if store.memory is None:
        assert all(store.redis.ttl(key) > 0 for key in store.redis.keys("*")), "a key never expires"


def test_usage_counts_requests_and_tokens_per_caller_and_model(store: Limiter) -> None:
    team_a, team_b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    for who, model, used in [
        (team_a, "m1", 30),
        (team_a, "m1", 40),
        (team_a, "m2", 5),
        (team_b, "m1", 7),
    ]:
        store.settle(store.reserve(plan(who, policy(rpm=3), model=model)), used)
    refused(store, plan(team_a, policy(rpm=3), model="m1"))  # the fourth this minute
    store.settle(None, 99)  # nothing was reserved: nothing counted

    assert mine(store.usage(day_of(limiter.time.time())), team_a, team_b) == {
        f"{team_a}|m1|requests": 2,
        f"{team_a}|m1|tokens": 70,
        f"{team_a}|m2|requests": 1,
        f"{team_a}|m2|tokens": 5,
        f"{team_b}|m1|requests": 1,
        f"{team_b}|m1|tokens": 7,
    }
    assert store.usage("2000-01-01") == {}


@pytest.mark.parametrize(
    ("usage_total", "received", "used"),
    [
        pytest.param(42, "any text", 42, id="the-gateway-count"),
        pytest.param(0, "", 0, id="a-count-of-0"),
        pytest.param(None, "", 12, id="nothing-received-the-prompt"),
        pytest.param(None, "abcdefghi", 12 + 3, id="cut-stream-estimated"),
    ],
)
def test_what_a_call_used(usage_total: int | None, received: str, used: int) -> None:
    reservation = Reservation(("m", "d", "u", "h"), "x|m", tokens=100, prompt_tokens=12)
    assert reservation.used(usage_total, received) == used


# --- Redis down: fail closed ----------------------------------------------------------------


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_redis_refuses_with_limiter_unavailable(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-redis-password"  # pragma: allowlist secret
    store = Limiter(f"redis://:{secret}@127.0.0.1:{_unused_port()}/0")
    try:
        with caplog.at_level(logging.WARNING, logger=limiter.__name__):
            error = refused(store, plan(name, policy(rpm=5)))
    finally:
        store.redis.close()
    # No call line follows a refusal: the operator learns of it from this one.
    assert [r.getMessage() for r in caplog.records] == [
        "limits store unreachable, request refused: ConnectionError"
    ]
    assert error.category is Category.LIMITER_UNAVAILABLE
    assert "ConnectionError" in error.upstream_message
    assert secret not in f"{error} {error.upstream_message} {error!r}"


def test_redis_stopped_mid_run_fails_closed_then_recovers(
    redis_server: RedisServer,  # noqa: F811
    clock: Clock,
    name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_server.flush()
    store = Limiter(redis_server.url)
    caller = policy(rpm=5, tpm=1000)
    try:
        reservation = store.reserve(plan(name, caller))
        redis_server.stop()
        try:
            error = refused(store, plan(name, caller))
            with caplog.at_level(logging.WARNING, logger=limiter.__name__):
                store.settle(reservation, 5)  # does not raise: the answer is already out
        finally:
            redis_server.start()
        # A new server, its scripts not loaded yet, its counters empty.
        assert store.reserve(plan(name, caller)).headers["x-ratelimit-remaining-requests"] == "4"
    finally:
        store.redis.close()

    assert error.category is Category.LIMITER_UNAVAILABLE
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[-1] == (
        f"could not settle {name}|{MODEL}'s reservation of 20 tokens (ConnectionError); "
        "it stays counted"
    )
{%- if cookiecutter.framework == "fastapi" %}


# --- the async limiter (FastAPI) ------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def redis_url(request: pytest.FixtureRequest, clock: Clock) -> str | None:
    if request.param == "memory":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    return server.url


def test_async_rpm_and_tpm_as_the_sync_limiter(redis_url: str | None, name: str) -> None:
    async def run() -> None:
        store = AsyncLimiter(redis_url)
        try:
            caller = policy(rpm=3, tpm=100)
            first = await store.reserve(plan(name, caller, prompt=10, output=50))
            assert first.headers["x-ratelimit-remaining-tokens"] == "40"
            with pytest.raises(GatewayError) as over_tpm:
                await store.reserve(plan(name, caller, prompt=10, output=50))
            await store.settle(first, 20)
            await store.reserve(plan(name, caller, prompt=10, output=50))
            await store.reserve(plan(name, caller, prompt=1, output=1))
            with pytest.raises(GatewayError) as over_rpm:
                await store.reserve(plan(name, caller, prompt=1, output=1))
        finally:
            await store.aclose()
        assert over_tpm.value.category is Category.CALLER_RATE_LIMITED
        assert "tokens per minute" in str(over_tpm.value)
        assert over_rpm.value.headers["x-ratelimit-remaining-requests"] == "0"
        assert "requests per minute" in str(over_rpm.value)

    asyncio.run(run())


def test_async_40_concurrent_reservations_against_a_limit_of_10_admit_10(
    redis_url: str | None, name: str
) -> None:
    async def run() -> int:
        store = AsyncLimiter(redis_url)
        caller = policy(daily_tokens=100)

        async def attempt() -> bool:
            try:
                await store.reserve(plan(name, caller, prompt=10, output=0))
            except GatewayError:
                return False
            return True

        try:
            return sum(await asyncio.gather(*(attempt() for _ in range(40))))
        finally:
            await store.aclose()

    assert asyncio.run(run()) == 10


def test_async_redis_down_fails_closed_and_settle_only_warns(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    reservation = Reservation(("m", "d", "u", "h"), f"{name}|{MODEL}", tokens=20, prompt_tokens=10)

    async def run() -> GatewayError:
        store = AsyncLimiter(f"redis://127.0.0.1:{_unused_port()}/0")
        try:
            with pytest.raises(GatewayError) as refusal:
                await store.reserve(plan(name, policy(rpm=5)))
            with caplog.at_level(logging.WARNING, logger=limiter.__name__):
                await store.settle(reservation, 5)
        finally:
            await store.aclose()
        return refusal.value

    assert asyncio.run(run()).category is Category.LIMITER_UNAVAILABLE
    assert [r.getMessage() for r in caplog.records][-1] == (
        f"could not settle {name}|{MODEL}'s reservation of 20 tokens (ConnectionError); "
        "it stays counted"
    )
{%- endif %}
