"""The error taxonomy: every failure of a gateway call maps to exactly one `Category`.

Clients get the category's fixed message and hint (safe to show, never the key); logs keep the
gateway's original text, which may be in Chinese, verbatim in `GatewayError.upstream_message`.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx2
import openai

from .settings import API_KEY_ENV


class Category(str, Enum):
    INVALID_REQUEST = "invalid_request"
    AUTH = "auth"
    QUOTA = "quota"
    PERMISSION = "permission"
    MODEL_NOT_FOUND = "model_not_found"
    BAD_BASE_URL = "bad_base_url"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    STREAM_INTERRUPTED = "stream_interrupted"


# category -> (message for clients, one-line hint for whoever operates the service)
_EXPLANATIONS: dict[Category, tuple[str, str]] = {
    Category.INVALID_REQUEST: (
        "The request was rejected as invalid.",
        "Check the messages and parameters; shorten the context if it is too long.",
    ),
    Category.AUTH: (
        "The gateway rejected the API key.",
        f"Check that {API_KEY_ENV} holds an active key; rotate it if it was revoked or used up.",
    ),
    Category.QUOTA: (
        "The gateway account has insufficient balance or quota.",
        "Top up the billing group's balance or ask the key owner to raise the key's quota.",
    ),
    Category.PERMISSION: (
        "The API key is not allowed to use this resource.",
        "Ask the key owner to grant the key's group access to this model.",
    ),
    Category.MODEL_NOT_FOUND: (
        "The requested model is not available on the gateway.",
        "Check the model name (ALLTKN_MODEL or the request's model) or switch to another model.",
    ),
    Category.BAD_BASE_URL: (
        "The gateway address is misconfigured.",
        "Set ALLTKN_BASE_URL to the /api/v1 root, without /chat/completions.",
    ),
    Category.RATE_LIMITED: (
        "The gateway is rate limiting requests.",
        "Retry after the delay in Retry-After, or lower the request rate.",
    ),
    Category.UPSTREAM_UNAVAILABLE: (
        "The gateway or its upstream provider is unavailable.",
        "Retry later, or switch to another model.",
    ),
    Category.TIMEOUT: (
        "The gateway did not answer in time.",
        "Retry with a shorter context, raise ALLTKN_TIMEOUT_S, or switch to a faster model.",
    ),
    Category.CONNECTION: (
        "Could not reach the gateway.",
        "Check ALLTKN_BASE_URL, DNS, proxy and firewall settings.",
    ),
    Category.STREAM_INTERRUPTED: (
        "The answer stream was interrupted after it started.",
        "Retry the request; if it keeps happening, check proxy buffering and read timeouts "
        "or disable streaming.",
    ),
}

_REQUEST_ID_SUFFIX = re.compile(r"\(request id: ?([A-Za-z0-9_.:-]+)\)")
_UPSTREAM_ID_HEADERS = ("x-oneapi-request-id", "x-request-id")
_MAX_UPSTREAM_MESSAGE = 500


@dataclass(eq=False)
class GatewayError(Exception):
    """A classified failure. `str()` is the safe client message.

    `detail` replaces the category's fixed message where the service itself refused the request
    and can say exactly why (e.g. the input limit); it never holds the gateway's text.
    """

    category: Category
    upstream_message: str = ""
    upstream_request_id: str | None = None
    retry_after: str | None = None
    detail: str | None = None
    # The HTTP status when the category's usual one does not fit (a refused parameter: 422).
    status: int | None = None

    def __str__(self) -> str:
        return self.message

    @property
    def message(self) -> str:
        return self.detail or _EXPLANATIONS[self.category][0]

    @property
    def hint(self) -> str:
        return _EXPLANATIONS[self.category][1]


class InStreamError(Exception):
    """An error event inside a stream that opened fine: `data: {"error": {"message": ...}}`."""

    @classmethod
    def from_event(cls, error: object) -> InStreamError:
        message = error.get("message") if isinstance(error, dict) else None
        return cls(message if isinstance(message, str) and message else "An error occurred")


def error_body(category: Category, message: str, hint: str, request_id: str) -> dict[str, Any]:
    """The one error body every endpoint answers with (and the SSE `error` event carries)."""
    return {
        "error": {
            "category": category.value,
            "message": message,
            "hint": hint,
            "request_id": request_id,
        }
    }


def classify(exc: BaseException, *, stream_started: bool = False) -> GatewayError:
    """Map an openai / httpx2 exception to a `GatewayError`.

    Once a stream has delivered content (`stream_started`), every failure is
    `stream_interrupted`: the client already has part of the answer, so "retry from scratch" is
    the only honest advice. Before that, a stream fails like any call (`timeout`, `connection`,
    `upstream_unavailable`...), and is retried and falls back like one.
    """
    if isinstance(exc, GatewayError):
        return exc
    text = upstream_text(exc)
    request_id = upstream_request_id(exc, text)
    if stream_started:
        category = Category.STREAM_INTERRUPTED
    elif isinstance(exc, openai.APIStatusError):
        category = category_for_status(exc.status_code, exc.code, text)
    elif isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)) and _timed_out(exc):
        category = Category.TIMEOUT
    elif isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
        category = Category.CONNECTION
    else:
        category = Category.UPSTREAM_UNAVAILABLE
    retry_after = None
    if isinstance(exc, openai.APIStatusError) and category is Category.RATE_LIMITED:
        retry_after = exc.response.headers.get("retry-after")
    return GatewayError(category, text, request_id, retry_after)


def _timed_out(exc: BaseException) -> bool:
    """False for a timeout the transport made up: the async client's aiohttp transport reports
    every aiohttp connection error (refused, reset, server gone) as `httpx2.ConnectTimeout`;
    the aiohttp error it wraps says whether anything timed out."""
    transport_error = _aiohttp_cause(exc)
    return transport_error is None or isinstance(transport_error, asyncio.TimeoutError)


def _aiohttp_cause(exc: BaseException) -> BaseException | None:
    cause = exc.__cause__
    while cause is not None:
        if type(cause).__module__.startswith("aiohttp"):
            return cause
        cause = cause.__cause__
    return None


def category_for_status(status: int, code: object, text: str) -> Category:
    """The category of an HTTP error answer: its status, the body's `code`, its message."""
    code = code if isinstance(code, str) else ""
    if status == 401:
        return Category.AUTH
    # one-api's no-balance code, and OpenAI's (sent with a 429, but not a rate limit).
    if status == 402 or code in ("insufficient_user_quota", "insufficient_quota"):
        return Category.QUOTA
    if status == 403:
        return Category.PERMISSION
    # one-api's answer to a wrong base path; checked first, as the path may say "models".
    if status == 404 and text.startswith("Invalid URL"):
        return Category.BAD_BASE_URL
    # The gateway's 404 for an unknown model, and its 503 when no channel serves the model.
    if code == "model_not_found" or (status == 404 and "model" in text.lower()):
        return Category.MODEL_NOT_FOUND
    if status == 404:
        # one-api answers a wrong base path with "Invalid URL (POST /...)"; any other 404
        # comes from whatever else is listening there. Both mean the URL, not the model.
        return Category.BAD_BASE_URL
    if status == 408:
        return Category.TIMEOUT
    if status == 429:
        return Category.RATE_LIMITED
    if status >= 500:
        return Category.UPSTREAM_UNAVAILABLE
    return Category.INVALID_REQUEST


def category_for_response(response: httpx2.Response) -> Category:
    """Like `classify`, for a raw error response whose body was read (the retry policy's view,
    before the SDK turns it into an exception)."""
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    error = data.get("error", data) if isinstance(data, dict) else None
    fields = error if isinstance(error, dict) else {}
    message = fields.get("message")
    text = message if isinstance(message, str) else response.text
    return category_for_status(response.status_code, fields.get("code"), text)


def upstream_text(exc: BaseException) -> str:
    """The gateway's own words for the failure, verbatim (for logs and support)."""
    if isinstance(exc, InStreamError):
        text = str(exc)
    elif isinstance(exc, openai.APIError):
        body = exc.body
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            text = body["message"]
        elif isinstance(body, str) and body:
            text = body
        elif isinstance(exc, openai.APITimeoutError) and not _timed_out(exc):
            text = "Connection error."  # the SDK's words for what did happen
        else:
            text = exc.message
        cause = _aiohttp_cause(exc) or exc.__cause__
        if isinstance(exc, openai.APIConnectionError) and cause is not None:
            # The SDK says only "Connection error." / "Request timed out."; the transport's
            # error says what failed (refused, reset, DNS, TLS, which timeout).
            reason = f": {cause}" if str(cause) else ""
            text = f"{text} ({type(cause).__name__}{reason})"
    else:
        source = _aiohttp_cause(exc) or exc
        text = f"{type(source).__name__}: {source}" if str(source) else type(source).__name__
    return str(text)[:_MAX_UPSTREAM_MESSAGE]


def upstream_request_id(exc: BaseException, text: str = "") -> str | None:
    if isinstance(exc, openai.APIStatusError) and (
        found := request_id_from_headers(exc.response.headers)
    ):
        return found
    match = _REQUEST_ID_SUFFIX.search(text or upstream_text(exc))
    return match.group(1) if match else None


def request_id_from_headers(headers: httpx2.Headers) -> str | None:
    for header in _UPSTREAM_ID_HEADERS:
        if value := headers.get(header):
            return value
    return None
