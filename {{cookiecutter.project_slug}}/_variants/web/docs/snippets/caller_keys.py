"""Caller keys, a model allowlist and per-caller limits in Redis, for an app you already have.

When to use: your FastAPI or Flask service spends the gateway key on behalf of its callers, and
only known callers may, each within its limits (requests per minute, tokens per minute, tokens
per UTC day) that hold across every worker and replica. The rules of the generated project
(`caller_auth=keys`): a caller sends `Authorization: Bearer ck_...`; the callers file
(ALLTKN_CALLERS_FILE, default callers.json, mode 0600, never committed; the project's format)
keeps each key's SHA-256 and the caller's policy, never a key, and is re-read when it changes.
Before any upstream call, in this order: the key (401 `caller_auth`), the model (403
`model_not_allowed`), the limits (429 `caller_rate_limited` or `caller_budget_exhausted` with
Retry-After; 503 `limiter_unavailable` when Redis cannot be reached: fail closed). A call
reserves one request and its most tokens (prompt estimate + max_tokens) in one Lua script and
settles with the gateway's count in another, so concurrent calls never overshoot. Answers
carry OpenAI's `x-ratelimit-*` headers, errors `{"error": {"category", "message", "hint",
"request_id"}}`. caller_keys_fastapi.py and caller_keys_flask.py show the wiring.

Run: `python caller_keys.py create NAME [--models M1,M2] [--rpm N] [--tpm N] [--daily-tokens N]`
prints the new key once; `python caller_keys.py revoke NAME`. The service needs
ALLTKN_LIMITS_REDIS_URL (`redis://host:6379/0`) and `pip install redis`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis

KEY_PREFIX = "ck_"  # not `sk-`: a caller key is never taken for the gateway key
_KEY_SHAPE = re.compile(r"ck_[A-Za-z0-9_-]{40,64}")
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# category -> (status, hint): the generated project's.
ERRORS = {
    "invalid_request": (422, "Check the messages and parameters; shorten the context if it is "
                        "too long."),
    "caller_auth": (401, "Send Authorization: Bearer <caller key>; keys are made with "
                    "`keys create`."),
    "model_not_allowed": (403, "Use one of the models in ALLTKN_ALLOWED_MODELS (and in the "
                          "caller's list)."),
    "caller_rate_limited": (429, "Retry after the delay in Retry-After, or ask for a higher "
                            "limit."),
    "caller_budget_exhausted": (429, "Retry after midnight UTC (Retry-After), or ask for a "
                                "larger daily budget."),
    "limiter_unavailable": (503, "Check that ALLTKN_LIMITS_REDIS_URL points at a running Redis; "
                            "retry later."),
}  # fmt: skip
# KEYS: requests this minute, tokens this minute, tokens today. ARGV: rpm, tpm, daily tokens
# (0: no limit), this call's tokens, the minute's and the day's TTL.
RESERVE = """
local req = tonumber(redis.call('GET', KEYS[1]) or '0')
local tok = tonumber(redis.call('GET', KEYS[2]) or '0')
local day = tonumber(redis.call('GET', KEYS[3]) or '0')
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local daily, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
if rpm > 0 and req + 1 > rpm then return {1, req, tok, day} end
if tpm > 0 and tok + cost > tpm then return {2, req, tok, day} end
if daily > 0 and day + cost > daily then return {3, req, tok, day} end
req = redis.call('INCR', KEYS[1])
tok = redis.call('INCRBY', KEYS[2], cost)
day = redis.call('INCRBY', KEYS[3], cost)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
return {0, req, tok, day}
"""
# KEYS: the reservation's minute and day token counters. ARGV: used - reserved.
SETTLE = """
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[1]) end
end
"""


class Refused(Exception):
    """A request refused before any upstream call: answer `status`, `body()`, `headers`."""

    def __init__(self, category: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.category, self.message, self.headers = category, message, headers or {}
        self.status, self.hint = ERRORS[category]

    def body(self, request_id: str) -> dict[str, Any]:
        return {"error": {"category": self.category, "message": self.message, "hint": self.hint,
                          "request_id": request_id}}  # fmt: skip


def request_id_from(header_value: str | None) -> str:
    """Reuse a well-formed inbound X-Request-ID (so traces join up); otherwise make one."""
    if header_value and _VALID_REQUEST_ID.fullmatch(header_value):
        return header_value
    return uuid.uuid4().hex


# --- the callers file -------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    name: str
    key_sha256: str
    models: tuple[str, ...] | None = None  # None: every model the service allows
    rpm: int | None = None  # None: no limit
    tpm: int | None = None
    daily_tokens: int | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_callers(path: Path) -> dict[str, Any]:
    if path.stat().st_mode & 0o004:
        raise ValueError(f"callers file {path} is readable by every user: run chmod 600 {path}")
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("callers"), dict):
        raise ValueError(f'callers file {path}: expected an object with "callers" in it')
    return dict(document["callers"])


def create(path: Path, name: str, **policy: Any) -> str:
    """Add caller `name` with `policy` (models, rpm, tpm, daily_tokens); returns its key."""
    callers = read_callers(path) if path.exists() else {}
    if name in callers:
        raise ValueError(f"caller {name} exists: revoke it first, or choose another name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = {"key_sha256": hash_key(key), "key_prefix": key[:8], "created": created}
    callers[name] = entry | {field: value for field, value in policy.items() if value is not None}
    _write(path, callers)
    return key


def revoke(path: Path, name: str) -> None:
    callers = read_callers(path)
    if callers.pop(name, None) is None:
        raise ValueError(f"there is no caller {name} in {path}")
    _write(path, callers)


def _write(path: Path, callers: dict[str, Any]) -> None:
    """Atomically (a running service never reads half a file), mode 0600 (mkstemp's)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".callers-")
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump({"version": 1, "callers": callers}, file, indent=2)
    os.replace(temporary, path)


class Callers:
    """The callers in the file, re-read when it changes (looked at once a second); a file
    broken while running keeps the callers read before."""

    def __init__(self, path: Path) -> None:
        self.path, self._checked, self._stamp = path, time.monotonic(), path.stat().st_mtime_ns
        self._callers = self._load()

    def _load(self) -> dict[str, Caller]:
        loaded = {}
        for name, entry in read_callers(self.path).items():
            models = None if entry.get("models") is None else tuple(entry["models"])
            limits = {field: entry.get(field) for field in ("rpm", "tpm", "daily_tokens")}
            loaded[name] = Caller(name, entry["key_sha256"], models, **limits)
        return loaded

    def current(self) -> dict[str, Caller]:
        if time.monotonic() - self._checked >= 1.0:
            self._checked = time.monotonic()
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                if (stamp := self.path.stat().st_mtime_ns) != self._stamp:
                    self._callers, self._stamp = self._load(), stamp
        return self._callers

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller whose key `Authorization: Bearer <key>` holds, or 401."""
        scheme, _, key = (authorization or "").strip().partition(" ")
        if not authorization:
            why = "no caller key: send the header Authorization: Bearer <caller key>"
            raise Refused("caller_auth", why, {"WWW-Authenticate": "Bearer"})
        if scheme.lower() != "bearer" or not _KEY_SHAPE.fullmatch(key.strip()):
            why = f"the Authorization header is not 'Bearer {KEY_PREFIX}...': send your caller key"
            raise Refused("caller_auth", why, {"WWW-Authenticate": "Bearer"})
        digest, found = hash_key(key.strip()), None
        for caller in self.current().values():  # every entry compared: constant time
            if hmac.compare_digest(caller.key_sha256, digest):
                found = caller
        if found is None:
            why = "the caller key is unknown or was revoked: ask for a new one"
            raise Refused("caller_auth", why, {"WWW-Authenticate": "Bearer"})
        return found


# --- the limits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """An admitted call: what it reserved (settle it with `Guard.settle`), its limit headers."""

    caller: Caller
    tokens: int
    token_keys: tuple[str, str]
    headers: dict[str, str]


def estimate_tokens(text: str) -> int:
    """Generous (3 UTF-8 bytes a token); the settle step corrects it with the gateway's count."""
    return (len(text.encode()) + 2) // 3 + 4


class Guard:
    """Keys, models and limits. Blocking Redis I/O: call it from sync code (FastAPI runs plain
    `def` dependencies and routes in its thread pool)."""

    def __init__(self, callers: Callers, redis_url: str, allowed: frozenset[str] | None) -> None:
        self.callers, self.allowed = callers, allowed
        # Fail fast: a request waits at most this long for Redis before it is refused.
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._reserve = self.redis.register_script(RESERVE)
        self._settle = self.redis.register_script(SETTLE)

    @classmethod
    def from_env(cls) -> Guard:
        """ALLTKN_CALLERS_FILE, ALLTKN_LIMITS_REDIS_URL, ALLTKN_ALLOWED_MODELS (comma list;
        unset or `*`: any model)."""
        redis_url = os.environ.get("ALLTKN_LIMITS_REDIS_URL", "").strip()
        if not redis_url:
            raise ValueError("ALLTKN_LIMITS_REDIS_URL must be set: redis://host:6379/0")
        models = os.environ.get("ALLTKN_ALLOWED_MODELS", "*").strip() or "*"
        allowed = None if models == "*" else frozenset(m.strip() for m in models.split(","))
        path = Path(os.environ.get("ALLTKN_CALLERS_FILE", "callers.json"))
        return cls(Callers(path), redis_url, allowed)

    def authenticate(self, authorization: str | None) -> Caller:
        return self.callers.authenticate(authorization)

    def admit(self, caller: Caller, model: str, prompt: str, max_tokens: int) -> Admission:
        """Check the model (403) and reserve the call in the caller's limits (429, 503)."""
        allowed = self.allowed
        if caller.models is not None:
            mine = frozenset(caller.models)
            allowed = mine & allowed if allowed is not None else mine
        if allowed is not None and model not in allowed:
            shown = ", ".join(sorted(allowed)) or "none"
            raise Refused("model_not_allowed", f"model {model[:100]} is not allowed here; "
                          f"allowed: {shown}")  # fmt: skip
        prompt_tokens = estimate_tokens(prompt)
        cost = prompt_tokens + max_tokens
        budget = min((n for n in (caller.tpm, caller.daily_tokens) if n), default=cost)
        if cost > budget:  # a call the limits could never admit
            why = f"max_tokens: at most {budget - prompt_tokens} (caller {caller.name}'s limit)"
            raise Refused("invalid_request", why)
        now = time.time()
        base, day = f"alltkn:limits:{caller.name}", time.strftime("%Y-%m-%d", time.gmtime(now))
        keys = [f"{base}:m:{int(now // 60)}:req", f"{base}:m:{int(now // 60)}:tok"]
        keys.append(f"{base}:d:{day}:tok")
        limits = [caller.rpm or 0, caller.tpm or 0, caller.daily_tokens or 0]
        try:
            result = self._reserve(keys, [*limits, cost, 120, 2 * 86_400])
        except (redis.RedisError, OSError):
            why = "The service cannot check its limits right now."
            raise Refused("limiter_unavailable", why) from None
        refused, requests, minute_tokens, day_tokens = (int(value) for value in result)
        headers = limit_headers(caller, requests, minute_tokens, day_tokens)
        if refused:
            wait = 86_400 - now % 86_400 if refused == 3 else 60 - now % 60
            retry_after = str(max(1, math.ceil(wait)))
            what = {1: "requests per minute", 2: "tokens per minute", 3: "tokens per UTC day"}
            limit = what[refused]
            why = f"caller {caller.name} is over its {limit} limit; retry in {retry_after} s"
            category = "caller_budget_exhausted" if refused == 3 else "caller_rate_limited"
            raise Refused(category, why, {**headers, "Retry-After": retry_after})
        return Admission(caller, cost, (keys[1], keys[2]), headers)

    def settle(self, admission: Admission, used_tokens: int) -> None:
        """Count what the call used instead of what it reserved (0: it failed before any
        answer). Never raises: the answer is out; if Redis fails, the reservation stays."""
        with contextlib.suppress(redis.RedisError, OSError):
            self._settle(list(admission.token_keys), [used_tokens - admission.tokens])


def limit_headers(caller: Caller, requests: int, minute: int, day: int) -> dict[str, str]:
    """OpenAI's rate-limit headers, so callers' SDKs back off by themselves."""
    headers = {}
    if caller.rpm:
        headers["x-ratelimit-limit-requests"] = str(caller.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, caller.rpm - requests))
    limit, used = (caller.tpm, minute) if caller.tpm else (caller.daily_tokens, day)
    if limit:
        headers["x-ratelimit-limit-tokens"] = str(limit)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, limit - used))
    return headers


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("a whole number above 0")
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description="caller keys (ALLTKN_CALLERS_FILE)")
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("create", help="make a caller key (printed once)")
    made.add_argument("name")
    made.add_argument("--models", help="models it may use, comma-separated (default: all)")
    for limit in ("--rpm", "--tpm", "--daily-tokens"):
        made.add_argument(limit, type=positive)
    commands.add_parser("revoke").add_argument("name")
    args = parser.parse_args()
    path = Path(os.environ.get("ALLTKN_CALLERS_FILE", "callers.json"))
    if args.command == "revoke":
        revoke(path, args.name)
        return 0
    models = args.models.split(",") if args.models else None
    limits = {"rpm": args.rpm, "tpm": args.tpm, "daily_tokens": args.daily_tokens}
    print(create(path, args.name, models=models, **limits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
