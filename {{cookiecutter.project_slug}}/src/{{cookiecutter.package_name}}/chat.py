"""What the sync and async chat services share, without I/O: a call's attempts (`Call`), the
gateway's event stream (`StreamProtocol`: lines in, deltas out) and the one log line of each
attempt (`CallRecord`). The drivers, `chat_sync` and `chat_async`, differ only in how they call
the SDK, read, wait and close.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2
import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from . import metrics, telemetry
from .errors import Category, GatewayError, InStreamError, classify, request_id_from_headers
from .logs import log_call
from .request import ChatRequest, sdk_arguments
from .retry import Attempts
from .settings import Settings

if TYPE_CHECKING:
    from .otlp import CallTrace

# What the SDK and its transport raise (ValueError: an answer that is not the JSON it should be,
# a proxy's page, a garbled stream); anything else is a bug and must not be swallowed.
UPSTREAM_ERRORS = (openai.OpenAIError, httpx2.HTTPError, ValueError, InStreamError)
# include_usage: the last chunk, with empty `choices`, carries the token counts.
STREAM_ARGUMENTS: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class CallInfo:
    """Who a call is for and how to find it again; logged with the call, sent as X-Request-ID."""

    request_id: str = field(default_factory=new_request_id)
    user: str | None = None
    task: str | None = None
{%- if cookiecutter.caller_auth == "keys" %}
    caller: str | None = None  # the caller key's name (never the key)
    models: frozenset[str] | None = None  # the models it may use (None: any): no fallback beyond
{%- endif %}


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class ChatResult:
    content: str
    model: str
    usage: Usage | None
    request_id: str
    upstream_request_id: str | None = None
    finish_reason: str | None = None  # "stop"; "length": cut short at max_tokens


class _Delta(BaseModel):  # unknown fields are ignored: a gateway may add what it likes
    content: str | None = None


class _Choice(BaseModel):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(BaseModel):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class _Chunk(BaseModel):
    """What the service uses of a chunk: validating it takes ~2 µs, the SDK's whole
    `ChatCompletionChunk` ~50 µs (a third of a relay's CPU), hence lines, not SDK chunks."""

    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None  # an in-stream error event: `{"error": {"message": ...}}`


# What may precede the first delta; any other line is no event stream (a portal's page, JSON).
_SSE_LINE_STARTS = ("data:", ":", "event:", "id:", "retry:")


class StreamProtocol:
    """The gateway's chat-completion event stream: lines in, content deltas out. `feed` raises
    `ValueError` for a body that is no event stream or a chunk that is not JSON, `InStreamError`
    for an error event; `end`, for a stream that stopped without a `finish_reason`."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.parts: list[str] = []
        self.done = False  # [DONE] was read

    @staticmethod
    def check_headers(headers: httpx2.Headers) -> None:
        content_type = headers.get("content-type", "")
        if content_type.startswith("text/html"):
            raise ValueError(f"the gateway answered 200 with {content_type}, not an event stream")

    def feed(self, line: str) -> str | None:
        """Take one line; return its content delta, if any."""
        if not line.startswith("data:"):
            if line and not self.parts and not line.startswith(_SSE_LINE_STARTS):
                raise ValueError(f"the stream's body is not an event stream: {line[:200]}")
            return None
        data = line[5:].removeprefix(" ")
        if data.startswith("[DONE]"):
            self.done = True
            return None
        chunk = _Chunk.model_validate_json(data)
        if chunk.error:
            raise InStreamError.from_event(chunk.error)
        if (usage := chunk.usage) is not None:  # the include_usage chunk, `choices` empty
            counts = usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
            self.usage = Usage(*(count or 0 for count in counts))
        if chunk.model:
            self.model = chunk.model
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        text = choice.delta.content if choice.delta else None
        if text:
            self.parts.append(text)
        return text or None

    def end(self) -> None:
        if self.finish_reason is None:
            raise ValueError("the stream ended without a finish_reason")


def check_limits(request: ChatRequest, settings: Settings) -> None:
    """Refuse a request over the server's limits: its output cap (422), its input size (400)."""
    cap, limit = settings.max_output_tokens, settings.max_input_chars
    if request.max_tokens is not None and request.max_tokens > cap:
        why = f"max_tokens: at most {cap} (the server's ALLTKN_MAX_OUTPUT_TOKENS)"
        raise GatewayError(Category.INVALID_REQUEST, why, detail=why, status=422)
    if (size := request.input_chars()) > limit:
        why = f"The input is {size} characters long; the limit is {limit} characters."
        raise GatewayError(Category.INVALID_REQUEST, why, detail=f"{why} Shorten the messages.")


class Call:
    """One call through its attempts, without I/O: the request checked against the server's
    limits, the keyword arguments of each attempt, and what its failure means. The drivers make
    the SDK calls and wait; every attempt is logged once, by its `CallRecord`."""

    def __init__(
        self, request: ChatRequest, settings: Settings, info: CallInfo | None, *, stream: bool
    ) -> None:
        check_limits(request, settings)
        self.request, self.info, self.stream = request, info or CallInfo(), stream
        self.cap = settings.max_output_tokens
        first = request.model or settings.model
{%- if cookiecutter.caller_auth == "keys" %}
        fallbacks = [name for name in settings.fallback_model_list if name != first]
        if (mine := self.info.models) is not None:  # never a fallback the caller may not use
            fallbacks = [name for name in fallbacks if name in mine]
        models = [first, *fallbacks]
{%- else %}
        models = [first, *(name for name in settings.fallback_model_list if name != first)]
{%- endif %}
        self.attempts = Attempts(models, settings.max_retries, settings.retry_after_cap_s)
        self.error: GatewayError | None = None
        self.max_stream_s = settings.max_stream_s
        self.deadline = time.monotonic() + self.max_stream_s  # of a stream, attempts included
        # Traced (telemetry.py): the attempts' spans, children of the span current now.
        tracing = telemetry.tracing
        self.trace = tracing.call(request, self.cap, self.info) if tracing else None

    def next_attempt(self) -> dict[str, Any]:
        """Start an attempt on the current model: the keyword arguments of its SDK call."""
        self.record = CallRecord(self.attempts, self.info, stream=self.stream, trace=self.trace)
        arguments = sdk_arguments(self.request, self.record.model, self.cap)
        return {**arguments, **(STREAM_ARGUMENTS if self.stream else {}), **self.record.headers}

    def cut(self) -> None:
        """Past ALLTKN_MAX_STREAM_S, raise the stream's last error, `timeout` (logged): the
        drivers ask before each line they read, so a trickling gateway holds a stream no longer
        (a silent one: one ALLTKN_TIMEOUT_S more at most)."""
        if time.monotonic() >= self.deadline:
            why = (
                f"the answer took longer than {self.max_stream_s:g} s, the server's limit "
                "for one stream (ALLTKN_MAX_STREAM_S)"
            )
            raise self.record.fail(GatewayError(Category.TIMEOUT, why, detail=why))

    def failed(self, exc: BaseException, *, sdk_retried: bool = False, stop: bool = False) -> float:
        """Log the attempt's failure; the pause before the next attempt, or raise the final
        `GatewayError` (`sdk_retried`: the SDK already retried it; `stop`: the caller left)."""
        self.error = self.record.fail(exc)
        model = self.attempts.model
        delay = None if stop else self.attempts.after(self.error, retry=not sdk_retried)
        if delay is None:
            raise self.error from None
        if self.attempts.model == model:
            metrics.add(metrics.RETRIES, gen_ai_request_model=metrics.model(model),
                        error_type=self.error.category.value)  # fmt: skip
        else:
            metrics.add(metrics.FALLBACKS, gen_ai_request_model=metrics.model(model),
                        alltkn_fallback_model=metrics.model(self.attempts.model))  # fmt: skip
        return delay


class CallRecord:
    """Times one upstream attempt and logs it (measures it, ends its span) exactly once."""

    def __init__(
        self, attempts: Attempts, call: CallInfo, *, stream: bool, trace: CallTrace | None = None
    ) -> None:
        self.model, self.fallback_from = attempts.model, attempts.fallback_from
        self.requested = self.model  # `model` becomes the one the gateway says answered
        self.call, self.stream, self.started = call, stream, time.perf_counter()
        self.ttft_ms: float | None = None
        self.protocol: StreamProtocol | None = None  # a stream's, for what it has so far
        self.usage: Usage | None = None
        self.upstream_request_id: str | None = None
        self.finish_reason: str | None = None
        self.content, self.logged = "", False
        self.span = trace.attempt(self.model) if trace else None

    @property
    def headers(self) -> dict[str, Any]:
        ids = {"X-Request-ID": self.call.request_id}
        return {"extra_headers": {**ids, **self.span.headers} if self.span else ids}

    def opened(self, headers: httpx2.Headers) -> None:
        self.upstream_request_id = request_id_from_headers(headers)
        StreamProtocol.check_headers(headers)

    def first_delta(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = self._elapsed_ms()

    def completed(self, completion: object, headers: httpx2.Headers) -> ChatResult:
        self.upstream_request_id = request_id_from_headers(headers)
        if not isinstance(completion, ChatCompletion):  # the SDK's answer to a non-JSON 200
            raise ValueError(f"the gateway answered 200 with a non-JSON body: {completion!s:.200}")
        self.model = completion.model or self.model
        if completion.usage is not None:
            u = completion.usage
            self.usage = Usage(u.prompt_tokens, u.completion_tokens, u.total_tokens)
        if not completion.choices:
            raise ValueError("the gateway returned no choices")  # upstream_unavailable
        self.content = completion.choices[0].message.content or ""
        self.finish_reason = completion.choices[0].finish_reason
        self.log("ok")
        return self.result()

    def streamed(self, protocol: StreamProtocol) -> None:
        """The stream was read to its end (raises, logged, if it ended badly)."""
        self.usage, self.model = protocol.usage, protocol.model or self.model
        self.finish_reason = protocol.finish_reason
        self.content = "".join(protocol.parts)
        self.finish_reason = protocol.finish_reason
        try:
            protocol.end()
        except ValueError as exc:
            raise self.fail(exc) from None
        self.log("ok")

    def fail(self, exc: BaseException) -> GatewayError:
        # Once the first content delta was handed to the caller, it has part of the answer.
        error = classify(exc, stream_started=self.ttft_ms is not None)
        self.upstream_request_id = self.upstream_request_id or error.upstream_request_id
        error.upstream_request_id = self.upstream_request_id
        self.log("error", error)
        return error

    def result(self) -> ChatResult:
        """The answer; of a stream left early, what it had delivered (and no usage)."""
        ids = self.call.request_id, self.upstream_request_id
        content = self.content or ("".join(self.protocol.parts) if self.protocol else "")
        return ChatResult(content, self.model, self.usage, *ids, self.finish_reason)

    def log(self, status: str, error: GatewayError | None = None) -> None:
        """Log and measure the attempt, once; `client_disconnect` when the consumer left before
        the end."""
        if self.logged:
            return
        self.logged = True
        call, usage = self.call, self.usage
        error_type = error.category.value if error else None
        if status == "client_disconnect":  # not the gateway's failure, yet no whole answer either
            error_type = status
        self.measure(error_type)
        if self.span:
            self.span.end(self, error_type)
        log_call({
            "model": self.model, "fallback_from": self.fallback_from, "user": call.user,
{%- if cookiecutter.caller_auth == "keys" %}
            "caller": call.caller,
{%- endif %}
            "task": call.task, "stream": self.stream, "status": status,
            "category": error.category.value if error else None,
            "error": error.upstream_message if error else None,
            "duration_ms": self._elapsed_ms(), "ttft_ms": self.ttft_ms,
            "request_id": call.request_id, "upstream_request_id": self.upstream_request_id,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
        })  # fmt: skip

    def measure(self, error_type: str | None) -> None:
        if not metrics.recording():
            return
        if error_type == "client_disconnect":
            metrics.add(metrics.CLIENT_DISCONNECTS, gen_ai_request_model=metrics.model(self.model))
{%- if cookiecutter.caller_auth == "keys" %}
        who = self.call.caller
        attributes = metrics.call_attributes(self.requested, self.model, error_type, who)
{%- else %}
        attributes = metrics.call_attributes(self.requested, self.model, error_type)
{%- endif %}
        usage, first = self.usage, self.ttft_ms
        metrics.record(metrics.Measurement(
            attributes, time.perf_counter() - self.started,
            None if first is None else first / 1000,
            usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None,
        ))  # fmt: skip

    def _elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 1)
