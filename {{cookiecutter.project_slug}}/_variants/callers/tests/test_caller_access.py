"""Who may spend the key, as clients see it: caller keys (401), the model allowlist (403), the
output caps (422) and the callers' limits (429, 503), on real server processes against the fake
gateway, whose recorded requests prove that a refused request never reached it. The limits are
counted in a real Redis (`redis_server.py`), shared by two server processes of two workers each
where the test is about sharing.

Each caller in `POLICIES` serves one test, so no test sees another's counters. The per-minute
windows are fixed UTC minutes: a test counting requests in one first makes sure the minute will
not end under it (`fresh_minute`).
"""

from __future__ import annotations

import http.client
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from {{ cookiecutter.package_name }} import callers, limiter
from {{ cookiecutter.package_name }}.request import ChatRequest

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway
from .live_server import PROJECT_ROOT, Server, free_port, parse_events, run_server, server_env
from .redis_server import RedisServer, redis_server  # noqa: F401
from .server import server_command

PATHS = ["/v1/chat", "/v1/chat/stream"]
JSON = "application/json"
MAX_OUTPUT_TOKENS = 512
HI = {"prompt": "hi"}  # 1 word at the fake: its usage is 1 + 6 deltas = 7 tokens
# The callers of the module's server, one (or one pair) per test.
POLICIES: dict[str, dict[str, Any]] = {
    "open": {},
    "mini": {"models": ["gpt-4o-mini"]},
    "pinned": {"models": ["gpt-4o-mini"]},
    "capped": {"daily_tokens": 100},
    "thrifty": {"rpm": 2, "daily_tokens": 1000},
    "rpm-chat": {"rpm": 1},
    "rpm-stream": {"rpm": 1},
    "daily": {"daily_tokens": 60},
    "metered": {"rpm": 100, "tpm": 100_000},
    "leaving": {},
    "revoked": {},
    "outage": {"rpm": 1000},
}


@dataclass
class Keys:
    """A callers file and the keys `callers.add` printed for it."""

    file: Path
    keys: dict[str, str]

    @classmethod
    def make(cls, directory: Path, policies: dict[str, dict[str, Any]]) -> Keys:
        file = directory / "callers.json"
        return cls(file, {name: callers.add(file, name, **p) for name, p in policies.items()})

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def assert_in_none_of(self, text: str) -> None:
        for key in (*self.keys.values(), SENTINEL_KEY):
            assert key not in text
            assert key[3:23] not in text  # nor a piece no mask could hold


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys.make(tmp_path_factory.mktemp("callers"), POLICIES)


@pytest.fixture(scope="module")
def server(
    gateway: FakeGateway,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,  # noqa: F811
    keys: Keys,
) -> Iterator[Server]:
    """One worker counting in the session's Redis. No ALLTKN_ALLOWED_MODELS: the default
    allowlist, ALLTKN_MODEL (gpt-4o-mini) and the fallback model (gpt-4o)."""
    with run_server(
        gateway,
        tmp_path_factory.mktemp("caller-access"),
        ALLTKN_CALLERS_FILE=str(keys.file),
        ALLTKN_LIMITS_REDIS_URL=redis_server.url,
        ALLTKN_ALLOWED_MODELS="",
        ALLTKN_FALLBACK_MODELS="gpt-4o",
        ALLTKN_MAX_OUTPUT_TOKENS=str(MAX_OUTPUT_TOKENS),
        ALLTKN_DEV_UI="on",  # the demo page too
    ) as running:
        yield running
    keys.assert_in_none_of(running.output())
    for seen in running.seen:
        keys.assert_in_none_of(seen)


def fresh_minute(needed_s: float = 5.0) -> None:
    """Wait for the next UTC minute when fewer than `needed_s` seconds are left in this one
    (the per-minute counters are per UTC minute; a day ends with a minute too)."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.05)


def prompt_cost(body: dict[str, Any]) -> int:
    """What the service reserves for the prompt of `body` (limiter.py's estimate)."""
    return limiter.prompt_tokens(ChatRequest.model_validate(body))


def assert_error(response: httpx2.Response, status: int, category: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert set(response.json()) == {"error"}
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"category", "message", "hint", "request_id"}
    assert error["category"] == category
    assert error["message"]
    assert "\n" not in error["message"]
    assert error["hint"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def post_as_sent(server: Server, path: str, headers: dict[str, str]) -> httpx2.Response:
    """POST `HI` with `headers` exactly as given (httpx2 refuses to send some bad ones)."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Content-Type": "application/json", **headers}
        connection.request("POST", path, body=json.dumps(HI), headers=headers)
        answer = connection.getresponse()
        content, status, received = answer.read(), answer.status, answer.getheaders()
    finally:
        connection.close()
    response = httpx2.Response(status, headers=received, content=content)
    server.remember(response, response.text)
    return response


def chat_requests(gateway: FakeGateway) -> list[Any]:
    return [r for r in gateway.requests if r.path.endswith("/chat/completions")]


# -- 401: the caller key -------------------------------------------------------------------


BAD_AUTHORIZATIONS = [
    pytest.param(None, id="missing"),
    pytest.param("Basic x", id="basic"),
    pytest.param("Bearer", id="bearer-alone"),
    pytest.param("Bearer  ", id="bearer-blank"),
    pytest.param(f"Bearer {SENTINEL_KEY}", id="the-gateway-key"),
    pytest.param("Bearer ck_" + secrets.token_urlsafe(32), id="an-unknown-caller-key"),
    pytest.param("{key}", id="a-key-without-bearer"),
    pytest.param("Bearer {key}x", id="a-key-one-character-longer"),
    pytest.param("Bearer {key_start}", id="the-start-of-a-key"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("authorization", BAD_AUTHORIZATIONS)
def test_no_valid_caller_key_is_a_401_without_an_upstream_call(
    server: Server, gateway: FakeGateway, keys: Keys, path: str, authorization: str | None
) -> None:
    headers = {}
    if authorization is not None:
        key = keys.keys["open"]
        headers["Authorization"] = authorization.format(key=key, key_start=key[:20])
    response = post_as_sent(server, path, headers)

    error = assert_error(response, 401, "caller_auth")
    assert "Authorization: Bearer" in error["hint"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert gateway.requests == []


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(json.dumps(HI).encode(), "text/plain", id="not-declared-json"),
        pytest.param(b"x" * 1_100_000, JSON, id="over-the-body-limit"),
        pytest.param(b"{not json", JSON, id="not-json"),
        pytest.param(b"[" * 5000, JSON, id="nested-too-deep"),
        pytest.param(b"{}", JSON, id="no-prompt"),
        pytest.param(
            b'{"prompt": "hi", "model": "gpt-4.5-preview"}', JSON, id="a-model-not-allowed"
        ),
        pytest.param(b'{"prompt": "hi", "max_tokens": 1000000000}', JSON, id="max-tokens-too-high"),
    ],
)
def test_the_key_is_checked_before_the_body(
    server: Server, gateway: FakeGateway, path: str, body: bytes, content_type: str
) -> None:
    """Without a key, nothing about the request is looked at: no body errors to learn from."""
    response = server.request("POST", path, content=body, headers={"Content-Type": content_type})
    assert_error(response, 401, "caller_auth")
    assert gateway.requests == []


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        pytest.param(b'{"model": "gpt-4.5-preview", "prompt": "hi"}', "text/plain", 415, id="415"),
        pytest.param(b'{"model": "gpt-4.5-preview", "prompt": "', JSON, 400, id="400"),
    ],
)
def test_the_headers_and_the_parse_come_before_the_model(
    server: Server,
    gateway: FakeGateway,
    keys: Keys,
    path: str,
    body: bytes,
    ctype: str,
    status: int,
) -> None:
    """415 and 400 before the 403 the model the body names would get."""
    headers = {**keys.auth("open"), "Content-Type": ctype}
    response = server.request("POST", path, content=body, headers=headers)
    assert_error(response, status, "invalid_request")
    assert gateway.requests == []


@pytest.mark.parametrize("path", ["/healthz", "/"])
def test_the_health_check_and_the_demo_page_need_no_key(server: Server, path: str) -> None:
    response = server.request("GET", path)
    assert response.status_code == 200


def test_a_revoked_key_is_refused_within_2_seconds(
    server: Server, gateway: FakeGateway, keys: Keys
) -> None:
    assert server.post("/v1/chat", HI, headers=keys.auth("revoked")).status_code == 200

    callers.remove(keys.file, "revoked")  # what `keys revoke revoked` does
    revoked = time.monotonic()
    while True:
        response = server.post("/v1/chat", HI, headers=keys.auth("revoked"))
        if response.status_code != 200 or time.monotonic() - revoked > 3:
            break
        time.sleep(0.05)
    assert_error(response, 401, "caller_auth")
    assert time.monotonic() - revoked < 2.0
    assert server.post("/v1/chat", HI, headers=keys.auth("open")).status_code == 200


# -- 403: the model ------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("caller", "model"),
    [
        pytest.param("open", "gpt-4.5-preview", id="unknown-model"),
        pytest.param("open", "fake-slow", id="a-model-the-gateway-has-but-not-allowed"),
        pytest.param("mini", "gpt-4o", id="allowed-but-not-in-the-callers-list"),
    ],
)
def test_a_model_not_allowed_is_a_403_without_an_upstream_call(
    server: Server, gateway: FakeGateway, keys: Keys, path: str, caller: str, model: str
) -> None:
    response = server.post(path, {"prompt": "hi", "model": model}, headers=keys.auth(caller))

    error = assert_error(response, 403, "model_not_allowed")
    assert model in error["message"]
    assert "gpt-4o-mini" in error["message"]  # what is allowed
    assert gateway.requests == []


@pytest.mark.parametrize("path", PATHS)
def test_the_model_is_checked_before_the_rest_of_the_body(
    server: Server, gateway: FakeGateway, keys: Keys, path: str
) -> None:
    body = {"prompt": "hi", "model": "gpt-4.5-preview", "temperature": 5, "colour": "red"}
    response = server.post(path, body, headers=keys.auth("open"))

    assert_error(response, 403, "model_not_allowed")
    assert gateway.requests == []


@pytest.mark.parametrize(
    ("caller", "model"),
    [
        pytest.param("open", None, id="ALLTKN_MODEL"),
        pytest.param("open", "gpt-4o", id="a-fallback-model"),
        pytest.param("mini", "gpt-4o-mini", id="in-the-callers-list"),
    ],
)
def test_the_default_allowlist_is_the_model_and_the_fallback_models(
    server: Server, gateway: FakeGateway, keys: Keys, caller: str, model: str | None
) -> None:
    body = {"prompt": "hi", "model": model} if model else HI
    response = server.post("/v1/chat", body, headers=keys.auth(caller))

    assert response.status_code == 200, response.text
    assert response.json()["model"] == (model or "gpt-4o-mini")
    assert len(chat_requests(gateway)) == 1


def test_no_fallback_to_a_model_outside_the_callers_list(
    server: Server, gateway: FakeGateway, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpt-4o-mini times out; the service's fallback, gpt-4o, is not among this caller's."""
    monkeypatch.setattr(gateway, "first_token_delay", 1.5)  # past the server's 1 s timeout
    response = server.post("/v1/chat", HI, headers=keys.auth("pinned"))

    assert_error(response, 504, "timeout")
    assert [r.body["model"] for r in chat_requests(gateway)] == ["gpt-4o-mini"]


# -- 422: the output caps ------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("max_tokens", "names"),
    [
        pytest.param(0, "max_tokens", id="0"),
        pytest.param(-1, "max_tokens", id="-1"),
        pytest.param(10**9, "ALLTKN_MAX_OUTPUT_TOKENS", id="10**9"),
        pytest.param(MAX_OUTPUT_TOKENS + 1, "ALLTKN_MAX_OUTPUT_TOKENS", id="cap+1"),
        pytest.param("a string", "max_tokens", id="a-string"),
    ],
)
def test_a_bad_max_tokens_is_a_422_without_an_upstream_call(
    server: Server, gateway: FakeGateway, keys: Keys, path: str, max_tokens: Any, names: str
) -> None:
    body = {"prompt": "hi", "max_tokens": max_tokens}
    response = server.post(path, body, headers=keys.auth("open"))

    error = assert_error(response, 422, "invalid_request")
    assert names in error["message"]
    assert gateway.requests == []


def test_max_tokens_above_the_callers_own_cap_is_a_422(
    server: Server, gateway: FakeGateway, keys: Keys
) -> None:
    """A caller with 100 tokens a day can ask for at most 100 less its prompt."""
    cap = POLICIES["capped"]["daily_tokens"] - prompt_cost(HI)
    over = server.post("/v1/chat", {**HI, "max_tokens": cap + 1}, headers=keys.auth("capped"))

    error = assert_error(over, 422, "invalid_request")
    assert f"at most {cap} (caller capped's token limit" in error["message"]
    assert gateway.requests == []
    at_cap = server.post("/v1/chat", {**HI, "max_tokens": cap}, headers=keys.auth("capped"))
    assert at_cap.status_code == 200, at_cap.text
    assert chat_requests(gateway)[0].body["max_tokens"] == cap


# -- 429: the limits -----------------------------------------------------------------------


def test_refused_requests_count_against_no_limit(
    server: Server, gateway: FakeGateway, keys: Keys
) -> None:
    """401, 403, 400 and 422 first: the caller's 2 requests a minute and its tokens are intact."""
    fresh_minute()
    auth, key = keys.auth("thrifty"), keys.keys["thrifty"]
    refusals = [
        ({"Authorization": f"Bearer {key}x"}, HI, 401),
        (auth, {"prompt": "hi", "model": "gpt-4.5-preview"}, 403),
        (auth, {"prompt": "hi", "max_tokens": 0}, 422),
        (auth, {"prompt": "hi", "max_tokens": 10**9}, 422),
        (auth, {"prompt": "hi", "max_tokens": 1000}, 422),  # over the caller's own cap
        (auth, {"prompt": "hi", "temperature": 5}, 422),
    ]
    for headers, body, status in refusals * 2:
        assert server.post("/v1/chat", body, headers=headers).status_code == status
    not_json = {**auth, "Content-Type": "application/json"}
    assert server.request("POST", "/v1/chat", content=b"{", headers=not_json).status_code == 400

    body = {"prompt": "hi", "max_tokens": 10}
    first = server.post("/v1/chat", body, headers=auth)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - prompt_cost(body) - 10)
    second = server.post("/v1/chat/stream", body, headers=auth)
    assert second.status_code == 200, second.text
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert_error(server.post("/v1/chat", body, headers=auth), 429, "caller_rate_limited")
    assert len(chat_requests(gateway)) == 2


@pytest.mark.parametrize("path", PATHS)
def test_over_its_requests_per_minute_a_caller_gets_429_with_retry_after(
    server: Server, gateway: FakeGateway, keys: Keys, path: str
) -> None:
    fresh_minute()
    auth = keys.auth(f"rpm-{path.rsplit('/', 1)[-1]}")
    assert server.post(path, HI, headers=auth).status_code == 200

    refused = server.post(path, HI, headers=auth)
    error = assert_error(refused, 429, "caller_rate_limited")
    assert "requests per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "1"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(chat_requests(gateway)) == 1


def test_out_of_its_daily_tokens_a_caller_gets_429_until_midnight_utc(
    server: Server, gateway: FakeGateway, keys: Keys
) -> None:
    fresh_minute()
    daily, auth = POLICIES["daily"]["daily_tokens"], keys.auth("daily")
    first = server.post("/v1/chat", {**HI, "max_tokens": 10}, headers=auth)
    assert first.status_code == 200, first.text
    used = first.json()["usage"]["total_tokens"]  # settled: the gateway's count
    assert first.headers["x-ratelimit-limit-tokens"] == str(daily)

    # The most this caller may ask for, which no longer fits beside what it used.
    most = {**HI, "max_tokens": daily - prompt_cost(HI)}
    refused = server.post("/v1/chat", most, headers=auth)

    error = assert_error(refused, 429, "caller_budget_exhausted")
    assert "tokens per UTC day" in error["message"]
    to_midnight = 86_400 - time.time() % 86_400
    assert abs(int(refused.headers["retry-after"]) - to_midnight) <= 5
    assert refused.headers["x-ratelimit-remaining-tokens"] == str(daily - used)
    assert len(chat_requests(gateway)) == 1


def test_answers_carry_the_callers_limit_headers(
    server: Server,
    gateway: FakeGateway,
    keys: Keys,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Reserved: the prompt's estimate and max_tokens; settled: the gateway's usage (a stream's
    from its last event, once it is closed)."""
    fresh_minute()
    auth, body = keys.auth("metered"), {"prompt": "say hello please", "max_tokens": 50}
    reserved = prompt_cost(body) + 50

    answer = server.post("/v1/chat", body, headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-ratelimit-limit-requests"] == "100"
    assert answer.headers["x-ratelimit-remaining-requests"] == "99"
    assert answer.headers["x-ratelimit-limit-tokens"] == "100000"  # tpm before daily tokens
    assert answer.headers["x-ratelimit-remaining-tokens"] == str(100_000 - reserved)

    used = answer.json()["usage"]["total_tokens"]
    stream = server.post("/v1/chat/stream", body, headers=auth)
    assert stream.status_code == 200, stream.text
    name, done = parse_events(stream.text)[-1]
    assert name == "done"
    assert stream.headers["x-ratelimit-remaining-requests"] == "98"
    assert stream.headers["x-ratelimit-remaining-tokens"] == str(100_000 - used - reserved)
    settled = used + done["usage"]["total_tokens"]
    store, day = limiter.Limiter(redis_server.url), limiter.day_of(time.time())
    deadline = time.monotonic() + 3
    while store.usage(day).get("metered|gpt-4o-mini|tokens") != settled:
        assert time.monotonic() < deadline, store.usage(day)
        time.sleep(0.02)
    store.redis.close()

    unlimited = server.post("/v1/chat", body, headers=keys.auth("open"))
    assert unlimited.status_code == 200
    assert not [name for name in unlimited.headers if name.startswith("x-ratelimit")]


def test_a_stream_its_client_abandons_settles_what_was_used(
    server: Server,
    gateway: FakeGateway,
    keys: Keys,
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reserved: the prompt and ALLTKN_MAX_OUTPUT_TOKENS. Settled, once the client left after
    one delta: the prompt and the few deltas relayed, not the reservation, not the answer."""
    deltas = tuple(f"tok{i:02d} " for i in range(20))
    monkeypatch.setattr(gateway, "deltas", deltas)
    monkeypatch.setattr(gateway, "delta_interval", 0.1)
    fresh_minute()
    with server.stream(HI, headers=keys.auth("leaving")) as response:
        assert response.status_code == 200
        first = next(line for line in response.iter_lines() if line.startswith("data: "))
    assert first == 'data: {"delta":"tok00 "}'
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=3)

    day, field = limiter.day_of(time.time()), "leaving|gpt-4o-mini|tokens"
    store = limiter.Limiter(redis_server.url)
    deadline = time.monotonic() + 3
    while field not in (usage := store.usage(day)) and time.monotonic() < deadline:
        time.sleep(0.02)
    prompt = prompt_cost(HI)
    assert usage[field] >= prompt + limiter.estimate_tokens(deltas[0])
    assert usage[field] < prompt + limiter.estimate_tokens("".join(deltas))  # not all of it
    assert usage["leaving|gpt-4o-mini|requests"] == 1
    # The day's counter holds what was used: the rest of the reservation was given back.
    assert int(store.redis.get(f"alltkn:limits:leaving:d:{day}:tok")) == usage[field]
    store.redis.close()


# -- the call log --------------------------------------------------------------------------


def test_the_call_log_names_the_caller_and_holds_no_key(server: Server, keys: Keys) -> None:
    key = keys.keys["open"]
    response = server.post(
        "/v1/chat",
        {"prompt": f"is {key} a key?"},
        params={"key": key},
        headers={**keys.auth("open"), "X-Request-ID": "caller-named"},
    )

    assert response.status_code == 200
    entry = server.call_log("caller-named")
    assert entry["caller"] == "open"
    keys.assert_in_none_of(server.output())


# -- Redis ---------------------------------------------------------------------------------


def test_without_redis_requests_fail_closed_and_recover_when_it_is_back(
    gateway: FakeGateway, keys: Keys, tmp_path: Path
) -> None:
    """Its own Redis (the session's stays up), stopped under a running service: 503 and no
    upstream call, then answers again once Redis is back on the same port."""
    own = RedisServer(tmp_path).start()
    try:
        with run_server(
            gateway,
            tmp_path,
            ALLTKN_CALLERS_FILE=str(keys.file),
            ALLTKN_LIMITS_REDIS_URL=own.url,
        ) as server:
            auth = keys.auth("outage")
            assert server.post("/v1/chat", HI, headers=auth).status_code == 200
            own.stop()
            for path in PATHS:
                refused = server.post(path, HI, headers=auth)
                error = assert_error(refused, 503, "limiter_unavailable")
                assert "ALLTKN_LIMITS_REDIS_URL" in error["hint"]
            assert len(chat_requests(gateway)) == 1

            own.start()
            deadline = time.monotonic() + 5
            while (back := server.post("/v1/chat", HI, headers=auth)).status_code != 200:
                assert time.monotonic() < deadline, back.text
                time.sleep(0.05)
            keys.assert_in_none_of(server.output())
    finally:
        own.stop()


# -- two processes of two workers, one Redis -----------------------------------------------

# 12 one-letter words: 12 words at the fake, and 12 tokens in the service's estimate.
BURST_BODY = {"prompt": " ".join(["a"] * 12), "max_tokens": 20}
BURST_COST = prompt_cost(BURST_BODY) + 20  # one request's reservation
BURST_POLICIES = {"budget": {"daily_tokens": 10 * BURST_COST}, "burst": {"rpm": 30}}


@pytest.fixture(scope="module")
def replicas(
    gateway: FakeGateway,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,  # noqa: F811
) -> Iterator[tuple[list[Server], Keys]]:
    """Two service processes, as two replicas would be, each with two worker processes
    ({{ "gunicorn --workers 2" if cookiecutter.framework == "flask" else "`serve`, WEB_CONCURRENCY=2" }}), all counting in one Redis."""
    keys = Keys.make(tmp_path_factory.mktemp("replica-callers"), BURST_POLICIES)
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                run_server(
                    gateway,
                    tmp_path_factory.mktemp(f"replica-{index}"),
                    workers=2,
                    ALLTKN_CALLERS_FILE=str(keys.file),
                    ALLTKN_LIMITS_REDIS_URL=redis_server.url,
                    ALLTKN_ALLOWED_MODELS="gpt-4o-mini",
                    ALLTKN_TIMEOUT_S="10",  # slow under load is not refused
                )
            )
            for index in range(2)
        ]
        yield servers, keys
    for server in servers:
        keys.assert_in_none_of(server.output())


def fire(servers: list[Server], headers: dict[str, str], count: int) -> list[httpx2.Response]:
    """`count` requests at once, spread over `servers`, each from its own thread."""
    limits = httpx2.Limits(max_connections=count)
    clients = [
        httpx2.Client(base_url=server.url, headers=headers, timeout=30, limits=limits)
        for server in servers
    ]
    start = threading.Barrier(count)

    def one(index: int) -> httpx2.Response:
        start.wait(timeout=30)
        return clients[index % len(clients)].post("/v1/chat", json=BURST_BODY)

    try:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(one, range(count)))
    finally:
        for client in clients:
            client.close()


def test_a_daily_budget_holds_across_processes_under_concurrent_requests(
    replicas: tuple[list[Server], Keys],
    gateway: FakeGateway,
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """40 requests at once; the budget fits 10 reservations. The fake reports exactly what was
    reserved (12 prompt tokens, then one token per delta), so no settle frees room for an 11th."""
    words = len(BURST_BODY["prompt"].split())
    monkeypatch.setattr(gateway, "deltas", ("x",) * (BURST_COST - words))
    assert BURST_COST - words <= BURST_BODY["max_tokens"]
    servers, keys = replicas
    fresh_minute()

    responses = fire(servers, keys.auth("budget"), 40)

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 10 + [429] * 30, statuses
    # Refused while the admitted ones ran: a short wait (their reservations may come back);
    # once they have settled, the day's budget is used up.
    refused = {r.json()["error"]["category"] for r in responses if r.status_code == 429}
    assert refused <= {"caller_rate_limited", "caller_budget_exhausted"}, refused
    after = fire(servers, keys.auth("budget"), 1)[0]
    assert after.json()["error"]["category"] == "caller_budget_exhausted"
    sent = chat_requests(gateway)
    assert len(sent) == 10
    budget = BURST_POLICIES["budget"]["daily_tokens"]
    # The fake's usage: the words of the messages it received, and one token per delta.
    counted = sum(len(r.body["messages"][0]["content"].split()) + len(gateway.deltas) for r in sent)
    reported = sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)
    assert reported == counted <= budget
    usage = limiter.Limiter(redis_server.url).usage(limiter.day_of(time.time()))
    assert usage["budget|gpt-4o-mini|requests"] == 10
    assert usage["budget|gpt-4o-mini|tokens"] == counted


def test_a_requests_per_minute_limit_holds_across_processes(
    replicas: tuple[list[Server], Keys], gateway: FakeGateway
) -> None:
    servers, keys = replicas
    fresh_minute(10)  # the 60 requests all in one minute

    responses = fire(servers, keys.auth("burst"), 60)

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 30 + [429] * 30, statuses
    refused = [r for r in responses if r.status_code == 429]
    assert {r.json()["error"]["category"] for r in refused} == {"caller_rate_limited"}
    assert len(chat_requests(gateway)) == 30


# -- start-up ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "problem", ["missing", "empty", "not-json", "world-readable", "limits-without-redis"]
)
def test_the_server_refuses_to_start_with_one_line(
    gateway: FakeGateway, tmp_path: Path, problem: str
) -> None:
    file, workers, names = tmp_path / "callers.json", 1, str(tmp_path / "callers.json")
    if problem != "missing":
        callers.add(file, "someone", rpm=10 if problem == "limits-without-redis" else None)
    if problem == "empty":
        file.write_text("")
    elif problem == "not-json":
        file.write_text("{not json")
    elif problem == "world-readable":
        file.chmod(0o644)
    elif problem == "limits-without-redis":
        workers, names = 2, "ALLTKN_LIMITS_REDIS_URL"
    env = server_env(
        gateway,
        ALLTKN_CALLERS_FILE=str(file),
        ALLTKN_LIMITS_REDIS_URL="",
        WEB_CONCURRENCY=str(workers),
    )
{%- if cookiecutter.framework == "flask" %}
    env["WEB_CONCURRENCY"] = "1"  # the workers from gunicorn's command line: --workers 2
{%- endif %}
    done = subprocess.run(
        server_command(free_port(), workers),
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
{%- if cookiecutter.framework == "flask" %}
    # gunicorn logs its start (a JSON line) before it counts the workers (on_starting).
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert {entry["level"] for entry in logged} <= {"INFO"}, done.stderr
    lines = [line for line in lines if not line.startswith("{")]
{%- endif %}
    assert len(lines) == 1, done.stderr
    assert names in lines[0]
