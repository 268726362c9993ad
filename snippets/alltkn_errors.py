"""A chat completion with every gateway failure sorted into one category.

When to use: you call the gateway without streaming and want each failure to tell you what to
do: a bad or exhausted key (`auth`), no balance (`quota`), an unknown model (`model_not_found`,
also the gateway's 503 form), a wrong base path (`bad_base_url`), rate limits, timeouts and so
on. Users get the category's fixed message; your logs keep the gateway's own words (often
Chinese) and its request id, which is what support asks for, never the key.

Run: `python alltkn_errors.py "Say hello" [model]`; on failure it prints
`error[<category>]: <message> (hint: ...)` and exits 1 (a bad setting: `error[config]: ...`,
exit 2). Needs alltkn_client.py next to it.
"""

from __future__ import annotations

import asyncio
import re
import sys

import httpx2
import openai
from alltkn_client import DEFAULT_MODEL, KEY_ENV_VAR, SettingsError, make_client
from openai import OpenAI
from openai.types.chat import ChatCompletion

# category -> (message safe to show a user, hint for whoever runs the service)
CATEGORIES: dict[str, tuple[str, str]] = {
    "invalid_request": (
        "The request was rejected as invalid.",
        "Check the messages and parameters; shorten the context if it is too long.",
    ),
    "auth": (
        "The gateway rejected the API key.",
        f"Check that {KEY_ENV_VAR} holds an active key; rotate it if it was revoked or used up.",
    ),
    "quota": (
        "The gateway account has insufficient balance or quota.",
        "Top up the billing group's balance or ask the key owner to raise the key's quota.",
    ),
    "permission": (
        "The API key is not allowed to use this resource.",
        "Ask the key owner to grant the key's group access to this model.",
    ),
    "model_not_found": (
        "The requested model is not available on the gateway.",
        "Check the model name (ALLTKN_MODEL or the request's model) or switch to another model.",
    ),
    "bad_base_url": (
        "The gateway address is misconfigured.",
        "Set ALLTKN_BASE_URL to the /api/v1 root, without /chat/completions.",
    ),
    "rate_limited": (
        "The gateway is rate limiting requests.",
        "Retry after the delay in Retry-After, or lower the request rate.",
    ),
    "upstream_unavailable": (
        "The gateway or its upstream provider is unavailable.",
        "Retry later, or switch to another model.",
    ),
    "timeout": (
        "The gateway did not answer in time.",
        "Retry with a shorter context, raise ALLTKN_TIMEOUT_S, or switch to a faster model.",
    ),
    "connection": (
        "Could not reach the gateway.",
        "Check ALLTKN_BASE_URL, DNS, proxy and firewall settings.",
    ),
    "stream_interrupted": (
        "The answer stream was interrupted after it started.",
        "Retry the request; if it keeps happening, check proxy buffering and read timeouts "
        "or disable streaming.",
    ),
}
# What the SDK and its transport raise; ValueError: a 200 answer that is not JSON.
UPSTREAM_ERRORS = (openai.OpenAIError, httpx2.HTTPError, ValueError)
_REQUEST_ID_SUFFIX = re.compile(r"\(request id: ?([A-Za-z0-9_.:-]+)\)")


class NotJsonAnswer(ValueError):
    """A 200 answer that is not JSON (a proxy's or captive portal's page), with its headers."""

    def __init__(self, message: str, headers: httpx2.Headers) -> None:
        super().__init__(message)
        self.headers = headers


def classify(exc: BaseException, *, stream_started: bool = False) -> str:
    """The category of a failed call; after a stream began, always `stream_interrupted`."""
    if stream_started:
        return "stream_interrupted"
    if isinstance(exc, openai.APIStatusError):
        status, code = exc.status_code, exc.code or ""
        if status == 401:
            return "auth"
        if status == 402 or code in ("insufficient_user_quota", "insufficient_quota"):
            return "quota"
        if status == 403:
            return "permission"
        if code == "model_not_found" or (status == 404 and "model" in upstream_text(exc).lower()):
            return "model_not_found"
        if status == 404:  # one-api's "Invalid URL (POST /...)": the base path is wrong
            return "bad_base_url"
        if status == 408:
            return "timeout"
        if status == 429:
            return "rate_limited"
        return "upstream_unavailable" if status >= 500 else "invalid_request"
    if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)) and _timed_out(exc):
        return "timeout"
    if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
        return "connection"
    return "upstream_unavailable"


def _timed_out(exc: BaseException) -> bool:
    """The SDK's aiohttp transport (make_async_client) reports a refused or dropped connection
    as a connect timeout; the aiohttp error it wraps says whether anything timed out."""
    cause = exc.__cause__
    while cause is not None and not type(cause).__module__.startswith("aiohttp"):
        cause = cause.__cause__
    return cause is None or isinstance(cause, asyncio.TimeoutError)


def upstream_text(exc: BaseException) -> str:
    """The gateway's own words for the failure, verbatim (for logs, never for users)."""
    body = exc.body if isinstance(exc, openai.APIError) else None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(exc) or type(exc).__name__


def upstream_request_id(exc: BaseException) -> str | None:
    """The gateway's request id for a support ticket: a header, or the message's suffix."""
    headers = exc.response.headers if isinstance(exc, openai.APIStatusError) else None
    if isinstance(exc, NotJsonAnswer):
        headers = exc.headers
    for header in ("x-oneapi-request-id", "x-request-id"):
        if headers is not None and (found := headers.get(header)):
            return found
    match = _REQUEST_ID_SUFFIX.search(upstream_text(exc))
    return match.group(1) if match else None


def ask(client: OpenAI, prompt: str, model: str = DEFAULT_MODEL) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}]
    )
    completion = raw.parse()
    if not isinstance(completion, ChatCompletion):  # the SDK hands back the page's text
        text = f"the gateway answered 200 with a non-JSON body: {completion!s:.200}"
        raise NotJsonAnswer(text, raw.headers)
    return completion.choices[0].message.content or ""


def main(argv: list[str]) -> int:
    prompt = argv[0] if argv else "Say hello in one short sentence."
    try:
        client = make_client()
    except SettingsError as exc:  # a bad setting is not a gateway failure
        print(f"error[config]: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            print(ask(client, prompt, *argv[1:2]))
        except UPSTREAM_ERRORS as exc:
            category = classify(exc)
            message, hint = CATEGORIES[category]
            print(f"error[{category}]: {message} (hint: {hint})", file=sys.stderr)
            # For your logs and a support ticket: the gateway's own words and its request id.
            print(f"request id for support: {upstream_request_id(exc)}", file=sys.stderr)
            print(f"gateway said: {upstream_text(exc)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
