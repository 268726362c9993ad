"""The HTTP contract both web variants serve: request body, request ids, error bodies, statuses."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from http import HTTPStatus
from importlib import resources
from typing import Any, Literal, cast

from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .chat import ChatResult, Usage, new_request_id
from .errors import Category, GatewayError

MAX_MESSAGES = 200
MAX_CONTENT_CHARS = 200_000
REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
BAD_BODY_HINT = (
    'Send JSON like {"prompt": "Hello"} or {"messages": [{"role": "user", "content": "Hello"}]}.'
)
ENDPOINTS_HINT = (
    "The API is POST /v1/chat and POST /v1/chat/stream; GET /healthz is the health check "
    "and GET / the demo page."
)
_STATUS_BY_CATEGORY = {
    Category.INVALID_REQUEST: 400,
    Category.RATE_LIMITED: 429,
    Category.TIMEOUT: 504,
}
_UPSTREAM_FAILURE_STATUS = 502
# The demo page may only talk to this service; it holds no key and no setting.
DEMO_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'"
    ),
    "Cache-Control": "no-cache",
}


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)


class ChatRequest(BaseModel):
    """Body of `POST /v1/chat` and `POST /v1/chat/stream`: `messages` or `prompt`, not both."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Message] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    prompt: str | None = Field(None, min_length=1, max_length=MAX_CONTENT_CHARS)
    model: str | None = Field(None, min_length=1, max_length=200, pattern=r"^\S+$")
    user: str | None = Field(None, max_length=256)
    task: str | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _messages_or_prompt(self) -> ChatRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("send either 'messages' or 'prompt', not both and not neither")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("'prompt' is blank")
        return self

    def to_messages(self) -> list[ChatCompletionMessageParam]:
        if self.prompt is not None:
            return [{"role": "user", "content": self.prompt}]
        # The role is one of the Literal values above, so each dict is a valid message param.
        return [
            cast("ChatCompletionMessageParam", message.model_dump())
            for message in self.messages or []
        ]


def request_id_from(header_value: str | None) -> str:
    """Reuse a well-formed inbound X-Request-ID (so traces join up); otherwise make one."""
    if header_value and _VALID_REQUEST_ID.fullmatch(header_value):
        return header_value
    return new_request_id()


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line naming the first bad field, e.g. `messages.0.role: Input should be ...`."""
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}"


def status_for(error: GatewayError) -> int:
    return _STATUS_BY_CATEGORY.get(error.category, _UPSTREAM_FAILURE_STATUS)


def error_body(error: GatewayError, request_id: str) -> dict[str, Any]:
    return {
        "error": {
            "category": error.category.value,
            "message": error.message,
            "hint": error.hint,
            "request_id": request_id,
        }
    }


def bad_body(message: str, request_id: str) -> dict[str, Any]:
    """The error body for a request we refuse before calling the gateway."""
    return {
        "error": {
            "category": Category.INVALID_REQUEST.value,
            "message": message,
            "hint": BAD_BODY_HINT,
            "request_id": request_id,
        }
    }


def no_route_body(status: int, method: str, path: str, request_id: str) -> dict[str, Any]:
    """The error body for a request no endpoint takes: an unknown path (404), a method the path
    does not allow (405), or another refusal of the framework's."""
    path = path[:200]
    if status == 404:
        message = f"there is no endpoint at {path}"
    elif status == 405:
        message = f"{method} is not allowed on {path}"
    else:
        message = HTTPStatus(status).phrase
    return {
        "error": {
            "category": Category.INVALID_REQUEST.value,
            "message": message,
            "hint": ENDPOINTS_HINT,
            "request_id": request_id,
        }
    }


def retry_headers(error: GatewayError) -> dict[str, str]:
    """Pass the gateway's Retry-After on, so clients back off as long as it asked."""
    return {"Retry-After": error.retry_after} if error.retry_after else {}


def usage_body(usage: Usage | None) -> dict[str, int] | None:
    return asdict(usage) if usage else None


def result_body(result: ChatResult) -> dict[str, Any]:
    return {
        "content": result.content,
        "model": result.model,
        "usage": usage_body(result.usage),
        "request_id": result.request_id,
    }


def demo_page() -> bytes:
    """The static demo page served at `GET /` (static/index.html, shipped in the package)."""
    return (resources.files(__package__) / "static" / "index.html").read_bytes()
