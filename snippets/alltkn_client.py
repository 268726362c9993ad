"""The ALLTKN client, configured from the environment (sync and async).

When to use: you add ALLTKN to a service that already exists and want the client built the way
the generated project builds it: `base_url` and `api_key` always passed explicitly (left out,
the SDK would read `OPENAI_BASE_URL` / `OPENAI_API_KEY` and could send your key elsewhere),
a timeout and a retry budget from the environment, an `X-Client-Name` header so the gateway's
logs show which service called, and no retries of answers the gateway means as final (its
503 `model_not_found`, no balance) or of a `Retry-After` longer than you want to wait. Make one
client per process and reuse it; every other snippet imports `make_client()` /
`make_async_client()` from this file.

Run: `python alltkn_client.py` lists the models the key can use. The key is read from
ALLTKN_API_KEY.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import time
from typing import Any

import httpx2
from openai import AsyncOpenAI, DefaultAsyncHttpx2Client, DefaultHttpx2Client, OpenAI

API_KEY_ENV = "ALLTKN_API_KEY"
DEFAULT_BASE_URL = "https://api.alltkn.com/api/v1"
DEFAULT_MODEL = "gpt-4o-mini"
# Your service's name and version, so the gateway's logs and support can tell who called.
CLIENT_HEADERS = {"X-Client-Name": "alltkn-service/0.1.0"}


def client_options() -> dict[str, Any]:
    """Read the settings now (not at import), failing with one line that names the variable."""
    api_key = os.environ.get(API_KEY_ENV, "").strip()
    if not api_key:
        raise RuntimeError(f"{API_KEY_ENV} is not set: export the gateway key (server side only)")
    base_url = os.environ.get("ALLTKN_BASE_URL", DEFAULT_BASE_URL).strip().rstrip("/")
    if not base_url.startswith(("https://", "http://")) or base_url.endswith("/chat/completions"):
        raise RuntimeError("ALLTKN_BASE_URL must be the gateway's /api/v1 root")
    return {
        "base_url": base_url,
        "api_key": api_key,
        "timeout": float(os.environ.get("ALLTKN_TIMEOUT_S", "60")),
        "max_retries": int(os.environ.get("ALLTKN_MAX_RETRIES", "1")),
        "default_headers": CLIENT_HEADERS,
    }


def make_client() -> OpenAI:
    hooks = {"response": [_veto_pointless_retry]}
    return OpenAI(**client_options(), http_client=DefaultHttpx2Client(event_hooks=hooks))


def make_async_client() -> AsyncOpenAI:
    hooks = {"response": [_aveto_pointless_retry]}
    return AsyncOpenAI(**client_options(), http_client=DefaultAsyncHttpx2Client(event_hooks=hooks))


def _veto_pointless_retry(response: httpx2.Response) -> None:
    if response.status_code in _SDK_RETRIED or response.status_code >= 500:
        response.read()
        if not _worth_retrying(response):
            response.headers["x-should-retry"] = "false"  # the SDK obeys this header first


async def _aveto_pointless_retry(response: httpx2.Response) -> None:
    if response.status_code in _SDK_RETRIED or response.status_code >= 500:
        await response.aread()
        if not _worth_retrying(response):
            response.headers["x-should-retry"] = "false"


_SDK_RETRIED = frozenset({408, 409, 429})  # plus every 5xx


def _worth_retrying(response: httpx2.Response) -> bool:
    """The SDK retries all of the above; the gateway means some as final: its 503
    `model_not_found` (no channel serves the model), a 429 for no balance, a 409. And a
    `Retry-After` longer than ALLTKN_RETRY_AFTER_CAP_S fails fast instead of waiting."""
    status, body = response.status_code, response.content
    final_codes = (b"model_not_found", b"insufficient_quota", b"insufficient_user_quota")
    if status == 409 or any(code in body for code in final_codes):
        return False
    cap = float(os.environ.get("ALLTKN_RETRY_AFTER_CAP_S", "5"))
    delay = _retry_after_s(response.headers)
    return delay is None or not delay > cap  # NaN: unreadable, let the SDK decide


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
    with make_client() as client:
        print(" ".join(model.id for model in client.models.list()))
