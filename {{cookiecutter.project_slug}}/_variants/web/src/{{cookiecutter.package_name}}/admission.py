{%- if cookiecutter.caller_auth == "keys" -%}
"""What a chat request must pass before any upstream call, in this order: its caller key (401,
`callers.py`), its model (403), its output cap (422), the caller's limits (429, or 503 when they
cannot be checked: `limiter.py`). A request refused by one check counts against no limit."""

from __future__ import annotations

import logging
{%- if cookiecutter.framework == "fastapi" %}
import multiprocessing
import os
{%- endif %}
import sys
from dataclasses import dataclass
{%- if cookiecutter.framework == "fastapi" %}
from typing import Any
{%- endif %}

from .callers import Callers, CallersError, Who
from .chat import ChatResult, check_limits
from .errors import Category, GatewayError
from .limiter import Plan, Reservation, prompt_tokens
from .request import ChatRequest
from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Admission:
    """An admitted request: as it goes upstream (`max_tokens` filled in), who sent it, and what
    it reserved (`reservation`, once reserved) until it settles."""

    request: ChatRequest
    caller: str
    models: frozenset[str] | None  # what it may use (None: any), fallbacks included
    plan: Plan
    reservation: Reservation | None = None

    @property
    def headers(self) -> dict[str, str]:
        return self.reservation.headers if self.reservation else {}

    def used(self, outcome: ChatResult | GatewayError) -> int:
        """Tokens to settle: the gateway's count, else the prompt and what was received; for a
        call that failed, none, unless it timed out (the gateway may have run it to the end)."""
        if self.reservation is None:
            return 0
        if isinstance(outcome, GatewayError):
            return self.reservation.tokens if outcome.category is Category.TIMEOUT else 0
        total = outcome.usage.total_tokens if outcome.usage else None
        return self.reservation.used(total, outcome.content)


class Gate:
    def __init__(self, settings: Settings, callers: Callers, workers: int) -> None:
        self.settings, self.callers, self.workers = settings, callers, workers

    @property
    def limits_split(self) -> bool:
        return limits_split(self.settings, self.workers)

    def authenticate(self, authorization: str | None) -> Who:
        """(name, policy) of the caller whose key `Authorization: Bearer ...` holds, or 401."""
        return self.callers.authenticate(authorization)

    def check_named_model(self, payload: object, who: Who) -> None:
        """403 for a disallowed model named in a body not yet validated: the model is checked
        before the rest of the body."""
        model = payload.get("model") if isinstance(payload, dict) else None
        if isinstance(model, str):
            check_model(model, self.settings.allowed_model_set, who[1].models)

    def check(self, body: ChatRequest, who: Who) -> Admission:
        """The request as it goes upstream and its reservation plan, or 403 / 422."""
        name, caller = who
        model = body.model or self.settings.model
        models = check_model(model, self.settings.allowed_model_set, caller.models)
        check_limits(body, self.settings)
        if caller.limited and self.limits_split:  # limits added after the start: fail closed
            why = f"caller {name} has limits, but each worker would count them alone"
            logger.error("%s: set ALLTKN_LIMITS_REDIS_URL, or run one worker", why)
            raise GatewayError(Category.LIMITER_UNAVAILABLE, why, detail=why)
        prompt = prompt_tokens(body)
        cap, where = self.settings.max_output_tokens, "the server's ALLTKN_MAX_OUTPUT_TOKENS"
        # What one call of this caller could ever use: a minute's or a day's tokens.
        if budget := min((n for n in (caller.tpm, caller.daily_tokens) if n), default=0):
            if budget - prompt < 1:
                why = f"the prompt (about {prompt} tokens) is over caller {name}'s token limit"
                raise GatewayError(Category.INVALID_REQUEST, why, detail=why, status=422)
            if budget - prompt < cap:
                cap, where = budget - prompt, f"caller {name}'s token limit less the prompt"
        if body.max_tokens is not None and body.max_tokens > cap:
            why = f"max_tokens: at most {cap} ({where})"
            raise GatewayError(Category.INVALID_REQUEST, why, detail=why, status=422)
        output = body.max_tokens or cap
        request = body.model_copy(update={"max_tokens": output})
        return Admission(request, name, models, Plan.make(name, caller, model, prompt, output))


def check_model(
    model: str, allowed: frozenset[str] | None, callers_models: tuple[str, ...] | None
) -> frozenset[str] | None:
    """The models the caller may use (None: any), or 403 unless `model` is one of them: allowed
    by the service and in the caller's list."""
    if callers_models is not None:
        mine = frozenset(callers_models)
        allowed = allowed & mine if allowed is not None else mine
    if allowed is not None and model not in allowed:
        shown = ", ".join(sorted(allowed)) or "none"
        why = f"model {model[:100]} is not allowed here; allowed: {shown}"
        raise GatewayError(Category.MODEL_NOT_ALLOWED, detail=why)
    return allowed
{%- if cookiecutter.framework == "fastapi" %}


def limit_headers(state: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The caller's limit headers, for the head of the answer to the request of `state`."""
    admission = state.get("admission")
    if not isinstance(admission, Admission):
        return []
    return [(name.encode(), value.encode()) for name, value in admission.headers.items()]


def workers_from_environment() -> int:
    """The worker processes uvicorn runs: WEB_CONCURRENCY (`serve`, and uvicorn's default), at
    least 2 in a worker uvicorn spawned (`uvicorn --workers N` without WEB_CONCURRENCY)."""
    raw = os.environ.get("WEB_CONCURRENCY", "").strip()
    spawned = multiprocessing.parent_process() is not None
    return max(int(raw) if raw.isdigit() else 1, 2 if spawned else 1)
{%- endif %}


def limits_split(settings: Settings, workers: int) -> bool:
    """Limits counted in this process while several run: each would allow the whole limit."""
    return workers > 1 and settings.limits_redis_url is None


def workers_problem(settings: Settings, callers: Callers, workers: int) -> str | None:
    """Why `workers` processes cannot enforce the callers' limits (each would count alone)."""
    limited = sorted(name for name, caller in callers.current().items() if caller.limited)
    if limited and limits_split(settings, workers):
        return (
            f"{workers} worker processes would each count the limits of caller {limited[0]} "
            "on their own: set ALLTKN_LIMITS_REDIS_URL (one Redis shared by every worker and "
            "replica), or run one worker (WEB_CONCURRENCY=1)"
        )
    return None


def load_callers_or_exit(settings: Settings, workers: int) -> Callers:
    """The callers file, read at start; a bad file or `workers_problem` stops the start with
    one line."""
    try:
        callers = Callers(settings.callers_file)
    except CallersError as exc:
        sys.exit(f"error[config]: {exc}")
    if problem := workers_problem(settings, callers, workers):
        sys.exit(f"error[config]: {problem}")
    if not callers.current():
        logger.warning("no callers in %s: every chat request gets 401", settings.callers_file)
    return callers
{%- else -%}
"""What a chat request must pass before any upstream call: its model (403); the output cap is
checked by the chat service (422). The service takes no caller keys (caller_auth=none): keep
it where only your own callers reach it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import Category, GatewayError
from .request import ChatRequest
from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Admission:
    request: ChatRequest


class Gate:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def check(self, body: ChatRequest) -> Admission:
        """The request as it goes upstream, or 403 for a model the service does not allow."""
        model, allowed = body.model or self.settings.model, self.settings.allowed_model_set
        if allowed is not None and model not in allowed:
            why = f"model {model[:100]} is not allowed here; allowed: {', '.join(sorted(allowed))}"
            raise GatewayError(Category.MODEL_NOT_ALLOWED, detail=why)
        return Admission(body)


def warn_open() -> None:
    logger.warning(
        "this service takes no caller keys (caller_auth=none): anyone who can reach it can "
        "spend the gateway key; keep it behind your own authentication"
    )
{%- endif %}
