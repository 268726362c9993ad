"""The ALLTKN client, configured from the environment (sync and async).

When to use: you add ALLTKN to a service that already exists and want the client built the way
the generated project builds it: `base_url` and `api_key` always passed explicitly (left out,
the SDK would read `OPENAI_BASE_URL` / `OPENAI_API_KEY` and could send your key elsewhere),
a timeout and a retry budget from the environment, an `X-Client-Name` header so the gateway's
logs show which service called, and no retries of answers the gateway means as final (its
503 `model_not_found`, no balance) or of a `Retry-After` longer than you want to wait. Make one
client per process and reuse it; every other snippet imports `make_client()` /
`make_async_client()` from this file. The async client talks through aiohttp
(`pip install "openai[aiohttp]"`): measured relaying streams, about half the CPU per stream of
the SDK's default transport.

Run: `python alltkn_client.py` lists the models the key can use. The key is read from
{{ cookiecutter.api_key_env_var }}. A missing or malformed setting stops it with one line,
`error[config]: <the variable and what it must be>`, and exit status 2.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
from openai import AsyncOpenAI, DefaultAioHttpClient, DefaultHttpx2Client, OpenAI

KEY_ENV_VAR = {{ cookiecutter.api_key_env_var | tojson }}
DEFAULT_BASE_URL = {{ cookiecutter.alltkn_base_url | tojson }}
DEFAULT_MODEL = {{ cookiecutter.default_model | tojson }}
# Your service's name and version, so the gateway's logs and support can tell who called.
CLIENT_HEADERS = {"X-Client-Name": {{ (cookiecutter.project_slug ~ "/0.1.0") | tojson }}}


class SettingsError(RuntimeError):
    """A missing or malformed setting; the message names the variable and what it must be."""


def env_seconds(name: str, default: float, high: float, *, allow_zero: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = math.nan
    above_low = value >= 0 if allow_zero else value > 0
    if not (above_low and value <= high):  # NaN fails both
        low = "from 0" if allow_zero else "above 0"
        raise SettingsError(f"{name} must be a number of seconds {low} up to {high:g}")
    return value


def env_count(name: str, default: int, high: int) -> int:
    raw = os.environ.get(name, "").strip()
    if raw and not (raw.isdigit() and int(raw) <= high):
        raise SettingsError(f"{name} must be a whole number from 0 to {high}")
    return int(raw) if raw else default


def client_options() -> dict[str, Any]:
    """Read and check every setting now (not at import), before any request: a bad one raises
    SettingsError with one line that names the variable."""
    api_key = os.environ.get(KEY_ENV_VAR, "").strip()
    if not api_key:
        raise SettingsError(f"{KEY_ENV_VAR} is not set: export the gateway key (server side only)")
    base_url = os.environ.get("ALLTKN_BASE_URL", DEFAULT_BASE_URL).strip().rstrip("/")
    if not base_url.startswith(("https://", "http://")) or base_url.endswith("/chat/completions"):
        raise SettingsError("ALLTKN_BASE_URL must be the gateway's /api/v1 root")
    return {
        "base_url": base_url,
        "api_key": api_key,
        "timeout": env_seconds("ALLTKN_TIMEOUT_S", 60, high=3600),
        "max_retries": env_count("ALLTKN_MAX_RETRIES", 1, high=10),
        "default_headers": CLIENT_HEADERS,
        # Not the SDK's: a Retry-After longer than this fails fast instead of waiting.
        "retry_after_cap_s": env_seconds("ALLTKN_RETRY_AFTER_CAP_S", 5, high=120, allow_zero=True),
    }


def make_client() -> OpenAI:
    options = client_options()
    hooks = {"response": [_veto_pointless_retry(options.pop("retry_after_cap_s"))]}
    return OpenAI(**options, http_client=DefaultHttpx2Client(event_hooks=hooks))


def make_async_client() -> AsyncOpenAI:
    options = client_options()
    hooks = {"response": [_aveto_pointless_retry(options.pop("retry_after_cap_s"))]}
    return AsyncOpenAI(**options, http_client=DefaultAioHttpClient(event_hooks=hooks))


def _veto_pointless_retry(cap_s: float) -> Callable[[httpx2.Response], None]:
    def veto(response: httpx2.Response) -> None:
        if response.status_code in _SDK_RETRIED or response.status_code >= 500:
            response.read()
            if not _worth_retrying(response, cap_s):
                response.headers["x-should-retry"] = "false"  # the SDK obeys this header first

    return veto


def _aveto_pointless_retry(cap_s: float) -> Callable[[httpx2.Response], Awaitable[None]]:
    async def veto(response: httpx2.Response) -> None:
        if response.status_code in _SDK_RETRIED or response.status_code >= 500:
            await response.aread()
            if not _worth_retrying(response, cap_s):
                response.headers["x-should-retry"] = "false"

    return veto


_SDK_RETRIED = frozenset({408, 409, 429})  # plus every 5xx


def _worth_retrying(response: httpx2.Response, cap_s: float) -> bool:
    """The SDK retries all of the above; the gateway means some as final: its 503
    `model_not_found` (no channel serves the model), a 429 for no balance, a 409. And a
    `Retry-After` longer than `cap_s` fails fast instead of waiting."""
    status, body = response.status_code, response.content
    final_codes = (b"model_not_found", b"insufficient_quota", b"insufficient_user_quota")
    if status == 409 or any(code in body for code in final_codes):
        return False
    delay = _retry_after_s(response.headers)
    return delay is None or not delay > cap_s  # NaN: unreadable, let the SDK decide


def _retry_after_s(headers: httpx2.Headers) -> float | None:
    if ms := headers.get("retry-after-ms"):
        with contextlib.suppress(ValueError):
            return float(ms) / 1000
    value = headers.get("retry-after", "")
    with contextlib.suppress(ValueError):
        return float(value)
    date = email.utils.parsedate_tz(value)
    return None if date is None else email.utils.mktime_tz(date) - time.time()


if __name__ == "__main__":
    try:
        client = make_client()
    except SettingsError as exc:
        print(f"error[config]: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    with client:
        print(" ".join(model.id for model in client.models.list()))
