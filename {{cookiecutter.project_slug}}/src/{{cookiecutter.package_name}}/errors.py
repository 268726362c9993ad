"""The error taxonomy: each failed gateway call maps to one `Category`, whose fixed message and
hint clients get (never the key); logs keep the gateway's own words in `upstream_message`."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import httpx2
import openai

from .settings import KEY_ENV_VAR


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
{%- if cookiecutter.framework != "script" %}
    # The service's own refusals, before any upstream call (admission.py).
    MODEL_NOT_ALLOWED = "model_not_allowed"
    METRICS_AUTH = "metrics_auth"  # `GET /metrics` without ALLTKN_METRICS_TOKEN
    SERVER_BUSY = "server_busy"  # a worker's ALLTKN_MAX_STREAMS chat requests in flight
    HOST_NOT_ALLOWED = "host_not_allowed"  # a Host header outside ALLTKN_ALLOWED_HOSTS
{%- endif %}
{%- if cookiecutter.caller_auth == "keys" %}
    CALLER_AUTH = "caller_auth"
    CALLER_RATE_LIMITED = "caller_rate_limited"
    CALLER_BUDGET_EXHAUSTED = "caller_budget_exhausted"
    LIMITER_UNAVAILABLE = "limiter_unavailable"
{%- endif %}
{%- if cookiecutter.worker == "celery" and cookiecutter.framework != "script" %}
    JOB_NOT_FOUND = "job_not_found"  # `GET /v1/jobs/{id}`: no such job for this caller
    QUEUE_UNAVAILABLE = "queue_unavailable"  # the queue's Redis (ALLTKN_QUEUE_URL) is down
{%- endif %}


# category -> (message for clients, one-line hint for whoever operates the service)
_EXPLANATIONS: dict[Category, tuple[str, str]] = {
    Category.INVALID_REQUEST: ("The request was rejected as invalid.",
        "Check the messages and parameters; shorten the context if it is too long."),
    Category.AUTH: ("The gateway rejected the API key.",
        f"Check that {KEY_ENV_VAR} holds an active key; rotate it if it was revoked or used up."),
    Category.QUOTA: ("The gateway account has insufficient balance or quota.",
        "Top up the billing group's balance or ask the key owner to raise the key's quota."),
    Category.PERMISSION: ("The API key is not allowed to use this resource.",
        "Ask the key owner to grant the key's group access to this model."),
    Category.MODEL_NOT_FOUND: ("The requested model is not available on the gateway.",
        "Check the model name (ALLTKN_MODEL or the request's model) or switch to another model."),
    Category.BAD_BASE_URL: ("The gateway address is misconfigured.",
        "Set ALLTKN_BASE_URL to the /api/v1 root, without /chat/completions."),
    Category.RATE_LIMITED: ("The gateway is rate limiting requests.",
        "Retry after the delay in Retry-After, or lower the request rate."),
    Category.UPSTREAM_UNAVAILABLE: ("The gateway or its upstream provider is unavailable.",
        "Retry later, or switch to another model."),
    Category.TIMEOUT: ("The gateway did not answer in time.",
        "Retry with a shorter context, raise ALLTKN_TIMEOUT_S, or switch to a faster model."),
    Category.CONNECTION: ("Could not reach the gateway.",
        "Check ALLTKN_BASE_URL, DNS, proxy and firewall settings."),
    Category.STREAM_INTERRUPTED: ("The answer stream was interrupted after it started.",
        "Retry the request; if it keeps happening, check proxy buffering and read timeouts "
        "or disable streaming."),
{%- if cookiecutter.framework != "script" %}
    Category.MODEL_NOT_ALLOWED: ("This service does not allow that model.",
        "Use one of the models in ALLTKN_ALLOWED_MODELS (and in the caller's list)."),
    Category.METRICS_AUTH: ("A valid metrics token is required.",
        "Scrape with Authorization: Bearer <ALLTKN_METRICS_TOKEN> (Prometheus: authorization)."),
    Category.HOST_NOT_ALLOWED: ("This service does not answer to that host name.",
        "Call the service by one of its names; operators: list them in ALLTKN_ALLOWED_HOSTS."),
    Category.SERVER_BUSY: ("The service is serving as many requests as it can.",
        "Retry after the delay in Retry-After; operators: add workers or replicas, or raise "
        "ALLTKN_MAX_STREAMS."),
{%- endif %}
{%- if cookiecutter.caller_auth == "keys" %}
    Category.CALLER_AUTH: ("A valid caller key is required.",
        "Send Authorization: Bearer <caller key>; keys are made with `keys create`."),
    Category.CALLER_RATE_LIMITED: ("The caller is over its rate limit.",
        "Retry after the delay in Retry-After, or ask for a higher limit."),
    Category.CALLER_BUDGET_EXHAUSTED: ("The caller has used its tokens for today (UTC).",
        "Retry after midnight UTC (Retry-After), or ask for a larger daily budget."),
    Category.LIMITER_UNAVAILABLE: ("The service cannot check its limits right now.",
        "Check that ALLTKN_LIMITS_REDIS_URL points at a running Redis; retry later."),
{%- endif %}
{%- if cookiecutter.worker == "celery" and cookiecutter.framework != "script" %}
    Category.JOB_NOT_FOUND: ("There is no such job.",
        "Use a job id that POST /v1/jobs returned to this caller; jobs are kept 7 days."),
    Category.QUEUE_UNAVAILABLE: ("The service cannot reach its job queue right now.",
        "Retry later; operators: check that ALLTKN_QUEUE_URL points at a running Redis."),
{%- endif %}
}  # fmt: skip
_BY_STATUS = {404: Category.BAD_BASE_URL, 408: Category.TIMEOUT, 429: Category.RATE_LIMITED}
_REQUEST_ID_SUFFIX = re.compile(r"\(request id: ?([A-Za-z0-9_.:-]+)\)")


@dataclass(eq=False)
class GatewayError(Exception):
    """A classified failure; `str()` is the safe client message. `detail`: the service's own
    reason for a refusal (never the gateway's text); `status`: overrides the category's (422);
    `headers`: sent with the error answer (a limit's state); `from_gateway`: a failed gateway
    call (`classify`), not a request the service refused before any call."""

    category: Category
    upstream_message: str = ""
    upstream_request_id: str | None = None
    retry_after: str | None = None
    detail: str | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    from_gateway: bool = False

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
    error = {"category": category.value, "message": message, "hint": hint, "request_id": request_id}
    return {"error": error}


def classify(exc: BaseException, *, stream_started: bool = False) -> GatewayError:
    """Map an openai / httpx2 exception to a `GatewayError`. Once a stream has delivered content,
    every failure is `stream_interrupted` (only a retry from scratch helps); before that a stream
    fails, is retried and falls back like any call."""
    if isinstance(exc, GatewayError):
        return exc
    text = upstream_text(exc)
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
    request_id = upstream_request_id(exc, text)
    return GatewayError(category, text, request_id, retry_after, from_gateway=True)


def _timed_out(exc: BaseException) -> bool:
    """False for a made-up timeout: the aiohttp transport reports every connection error
    (refused, reset, server gone) as `httpx2.ConnectTimeout`; the aiohttp cause tells."""
    transport_error = _aiohttp_cause(exc)
    return transport_error is None or isinstance(transport_error, asyncio.TimeoutError)


def _aiohttp_cause(exc: BaseException) -> BaseException | None:
    cause = exc.__cause__
    while cause is not None and not type(cause).__module__.startswith("aiohttp"):
        cause = cause.__cause__
    return cause


def category_for_status(status: int, code: object, text: str) -> Category:
    """The category of an HTTP error answer: its status, the body's `code`, its message."""
    code = code if isinstance(code, str) else ""
    if status == 401:
        return Category.AUTH
    if status == 402 or code in ("insufficient_user_quota", "insufficient_quota"):  # OpenAI's: 429
        return Category.QUOTA
    if status == 403:
        return Category.PERMISSION
    if status == 404 and text.startswith("Invalid URL"):  # one-api's wrong path, may say "models"
        return Category.BAD_BASE_URL
    # The gateway's 404 for an unknown model, and its 503 when no channel serves the model.
    if code == "model_not_found" or (status == 404 and "model" in text.lower()):
        return Category.MODEL_NOT_FOUND
    if status >= 500:
        return Category.UPSTREAM_UNAVAILABLE
    # Any other 404 comes from whatever else listens there: the URL is wrong, not the model.
    return _BY_STATUS.get(status, Category.INVALID_REQUEST)


def category_for_response(response: httpx2.Response) -> Category:
    """`category_for_status` of a read error response (the retry hook's view, before the SDK's)."""
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    error = data.get("error", data) if isinstance(data, dict) else None
    fields = error if isinstance(error, dict) else {}
    text = message if isinstance(message := fields.get("message"), str) else response.text
    return category_for_status(response.status_code, fields.get("code"), text)


def _named(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def upstream_text(exc: BaseException) -> str:
    """The gateway's own words for the failure, verbatim (for logs and support)."""
    if isinstance(exc, InStreamError):
        text = str(exc)
    elif isinstance(exc, openai.APIError):
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else body or None
        if isinstance(message, str):
            text = message
        elif isinstance(exc, openai.APITimeoutError) and not _timed_out(exc):
            text = "Connection error."  # the SDK's words for what did happen
        else:
            text = exc.message
        # The SDK says only "Connection error." / "Request timed out."; the transport says more.
        cause = _aiohttp_cause(exc) or exc.__cause__
        if isinstance(exc, openai.APIConnectionError) and cause is not None:
            text = f"{text} ({_named(cause)})"
    else:
        text = _named(_aiohttp_cause(exc) or exc)
    return str(text)[:500]


def upstream_request_id(exc: BaseException, text: str = "") -> str | None:
    headers = exc.response.headers if isinstance(exc, openai.APIStatusError) else httpx2.Headers()
    match = _REQUEST_ID_SUFFIX.search(text or upstream_text(exc))
    return request_id_from_headers(headers) or (match.group(1) if match else None)


def request_id_from_headers(headers: httpx2.Headers) -> str | None:
    return headers.get("x-oneapi-request-id") or headers.get("x-request-id") or None
