"""The one OpenAI-SDK client per process, pointed at the gateway.

`base_url` and `api_key` are always passed explicitly: left out, the SDK would silently read
`OPENAI_BASE_URL` / `OPENAI_API_KEY` and could send the request, or a different key, elsewhere.
"""

from __future__ import annotations

import httpx2
from openai import AsyncOpenAI, DefaultAsyncHttpx2Client, DefaultHttpx2Client, OpenAI

from . import __version__
from .settings import Settings

CLIENT_NAME = {{ cookiecutter.project_slug | tojson }}
# Lets the gateway's logs and support tell which service made a call.
CLIENT_HEADERS = {"X-Client-Name": f"{CLIENT_NAME}/{__version__}"}
_NO_CHANNEL_STATUS = 503


def create_client(settings: Settings) -> OpenAI:
    return OpenAI(
        base_url=settings.base_url,
        api_key=settings.api_key.get_secret_value(),
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
        default_headers=CLIENT_HEADERS,
        http_client=DefaultHttpx2Client(event_hooks={"response": [_mark_permanent_503]}),
    )


def create_async_client(settings: Settings) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=settings.base_url,
        api_key=settings.api_key.get_secret_value(),
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
        default_headers=CLIENT_HEADERS,
        http_client=DefaultAsyncHttpx2Client(event_hooks={"response": [_amark_permanent_503]}),
    )


def _mark_permanent_503(response: httpx2.Response) -> None:
    """The gateway answers 503 `model_not_found` when no channel serves the model.

    The SDK retries every 5xx; retrying this one only adds latency, so tell the SDK not to.
    """
    if response.status_code == _NO_CHANNEL_STATUS:
        response.read()
        _flag_if_no_channel(response)


async def _amark_permanent_503(response: httpx2.Response) -> None:
    if response.status_code == _NO_CHANNEL_STATUS:
        await response.aread()
        _flag_if_no_channel(response)


def _flag_if_no_channel(response: httpx2.Response) -> None:
    if b"model_not_found" in response.content:
        response.headers["x-should-retry"] = "false"
