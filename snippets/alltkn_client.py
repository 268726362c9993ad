"""The ALLTKN client, configured from the environment (sync and async).

When to use: you add ALLTKN to a service that already exists and want the client built the way
the generated project builds it: `base_url` and `api_key` always passed explicitly (left out,
the SDK would read `OPENAI_BASE_URL` / `OPENAI_API_KEY` and could send your key elsewhere),
a timeout and a retry budget from the environment, an `X-Client-Name` header so the gateway's
logs show which service called, and no retries of the gateway's permanent 503
`model_not_found`. Make one client per process and reuse it; every other snippet imports
`make_client()` / `make_async_client()` from this file.

Run: `python alltkn_client.py` lists the models the key can use. The key is read from
ALLTKN_API_KEY.
"""

from __future__ import annotations

import os
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
    hooks = {"response": [_no_retry_without_channel]}
    return OpenAI(**client_options(), http_client=DefaultHttpx2Client(event_hooks=hooks))


def make_async_client() -> AsyncOpenAI:
    hooks = {"response": [_ano_retry_without_channel]}
    return AsyncOpenAI(**client_options(), http_client=DefaultAsyncHttpx2Client(event_hooks=hooks))


def _no_retry_without_channel(response: httpx2.Response) -> None:
    """The gateway answers 503 `model_not_found` when no channel serves the model; the SDK
    retries every 5xx, which here only adds latency, so tell it not to."""
    if response.status_code == 503:
        response.read()
        if b"model_not_found" in response.content:
            response.headers["x-should-retry"] = "false"


async def _ano_retry_without_channel(response: httpx2.Response) -> None:
    if response.status_code == 503:
        await response.aread()
        if b"model_not_found" in response.content:
            response.headers["x-should-retry"] = "false"


if __name__ == "__main__":
    with make_client() as client:
        print(" ".join(model.id for model in client.models.list()))
