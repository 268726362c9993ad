"""The chat service: `complete()` and `open_stream()` over the gateway, sync and async.

Both variants share the bookkeeping in `_CallState`; only the I/O differs. Every call is logged
exactly once (see `logs.log_call`), and every stream is closed, also when its consumer leaves
early, so the gateway stops generating (and billing) for nobody.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import httpx2
import openai
from openai import AsyncOpenAI, AsyncStream, OpenAI, Stream
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from .errors import Category, GatewayError, classify, request_id_from_headers
from .logs import log_call

Messages = Iterable[ChatCompletionMessageParam]
# What the SDK and its transport raise; anything else is a bug and must not be swallowed.
# ValueError: an answer that is not the JSON it should be (a proxy's page, a garbled stream).
UPSTREAM_ERRORS = (openai.OpenAIError, httpx2.HTTPError, ValueError)


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class CallInfo:
    """Who a call is for and how to find it again; logged with the call, sent as X-Request-ID."""

    request_id: str = field(default_factory=new_request_id)
    user: str | None = None
    task: str | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def from_sdk(cls, usage: CompletionUsage | None) -> Usage | None:
        if usage is None:
            return None
        return cls(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


@dataclass(frozen=True)
class ChatResult:
    content: str
    model: str
    usage: Usage | None
    request_id: str
    upstream_request_id: str | None = None


def _checked(completion: object) -> ChatCompletion:
    """The SDK hands back the raw text when a 200 answer is not JSON (a proxy's or captive
    portal's page); that is a gateway failure, not a completion."""
    if not isinstance(completion, ChatCompletion):
        raise ValueError(f"the gateway answered 200 with a non-JSON body: {str(completion)[:200]}")
    return completion


class _CallState:
    """Times one upstream call, accumulates a stream, and logs the call exactly once."""

    def __init__(self, model: str, call: CallInfo, *, stream: bool) -> None:
        self.model = model
        self.call = call
        self.stream = stream
        self.started = time.perf_counter()
        self.ttft_ms: float | None = None
        self.usage: Usage | None = None
        self.upstream_request_id: str | None = None
        self.finish_reason: str | None = None
        self.parts: list[str] = []
        self.opened = False
        self.logged = False

    def request_kwargs(self, messages: Messages) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "extra_headers": {"X-Request-ID": self.call.request_id},
        }
        if self.stream:
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    def opened_stream(self, headers: httpx2.Headers) -> None:
        self.opened = True
        self.upstream_request_id = request_id_from_headers(headers)

    def consume(self, chunk: ChatCompletionChunk) -> str | None:
        """Take one chunk; return its content delta, if any."""
        if chunk.usage is not None:  # the include_usage chunk, whose `choices` is empty
            self.usage = Usage.from_sdk(chunk.usage)
        if chunk.model:
            self.model = chunk.model
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        text = choice.delta.content
        if not text:
            return None
        if self.ttft_ms is None:
            self.ttft_ms = self._elapsed_ms()
        self.parts.append(text)
        return text

    def finish_stream(self) -> None:
        if self.finish_reason is None:
            # The gateway said [DONE] (or just hung up) without saying why it stopped.
            raise self.fail(
                GatewayError(Category.STREAM_INTERRUPTED, "stream ended without a finish_reason")
            )
        self.log("ok")

    def complete(self, completion: ChatCompletion, headers: httpx2.Headers) -> ChatResult:
        self.upstream_request_id = request_id_from_headers(headers)
        self.model = completion.model or self.model
        self.usage = Usage.from_sdk(completion.usage)
        if not completion.choices:
            raise self.fail(
                GatewayError(Category.UPSTREAM_UNAVAILABLE, "the gateway returned no choices")
            )
        self.parts.append(completion.choices[0].message.content or "")
        self.log("ok")
        return self.result()

    def fail(self, exc: BaseException) -> GatewayError:
        error = classify(exc, stream_started=self.opened)
        self.upstream_request_id = self.upstream_request_id or error.upstream_request_id
        error.upstream_request_id = self.upstream_request_id
        self.log("error", error)
        return error

    def close(self) -> None:
        """The consumer is done; if the call was not logged yet, the consumer left early."""
        self.log("client_disconnect")

    def result(self) -> ChatResult:
        return ChatResult(
            content="".join(self.parts),
            model=self.model,
            usage=self.usage,
            request_id=self.call.request_id,
            upstream_request_id=self.upstream_request_id,
        )

    def log(self, status: str, error: GatewayError | None = None) -> None:
        if self.logged:
            return
        self.logged = True
        usage = self.usage
        log_call(
            {
                "model": self.model,
                "user": self.call.user,
                "task": self.call.task,
                "stream": self.stream,
                "status": status,
                "category": error.category.value if error else None,
                "error": error.upstream_message if error else None,
                "duration_ms": self._elapsed_ms(),
                "ttft_ms": self.ttft_ms,
                "request_id": self.call.request_id,
                "upstream_request_id": self.upstream_request_id,
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None,
            }
        )

    def _elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 1)


class ChatService:
    """Chat over the sync `OpenAI` client (Flask, the CLI)."""

    def __init__(self, client: OpenAI, default_model: str) -> None:
        self._client = client
        self.default_model = default_model

    def complete(
        self, messages: Messages, *, model: str | None = None, call: CallInfo | None = None
    ) -> ChatResult:
        state = _CallState(model or self.default_model, call or CallInfo(), stream=False)
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                **state.request_kwargs(messages)
            )
            completion = _checked(raw.parse())
        except UPSTREAM_ERRORS as exc:
            raise state.fail(exc) from None
        return state.complete(completion, raw.headers)

    def open_stream(
        self, messages: Messages, *, model: str | None = None, call: CallInfo | None = None
    ) -> ChatStream:
        """Start a stream; failures before the first byte raise `GatewayError` here."""
        state = _CallState(model or self.default_model, call or CallInfo(), stream=True)
        try:
            upstream: Stream[ChatCompletionChunk] = self._client.chat.completions.create(
                **state.request_kwargs(messages)
            )
        except UPSTREAM_ERRORS as exc:
            raise state.fail(exc) from None
        state.opened_stream(upstream.response.headers)
        return ChatStream(upstream, state)


class ChatStream:
    """Content deltas of one upstream stream. Use it as a context manager so it is closed."""

    def __init__(self, upstream: Stream[ChatCompletionChunk], state: _CallState) -> None:
        self._upstream = upstream
        self._state = state

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._upstream:
                delta = self._state.consume(chunk)
                if delta:
                    yield delta
        except UPSTREAM_ERRORS as exc:
            raise self._state.fail(exc) from None
        self._state.finish_stream()

    def result(self) -> ChatResult:
        return self._state.result()

    def close(self) -> None:
        # Log first: closing the upstream makes a read in another thread fail, and that
        # failure must not be logged as the gateway's fault.
        self._state.close()
        self._upstream.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncChatService:
    """Chat over the `AsyncOpenAI` client (FastAPI)."""

    def __init__(self, client: AsyncOpenAI, default_model: str) -> None:
        self._client = client
        self.default_model = default_model

    async def complete(
        self, messages: Messages, *, model: str | None = None, call: CallInfo | None = None
    ) -> ChatResult:
        state = _CallState(model or self.default_model, call or CallInfo(), stream=False)
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                **state.request_kwargs(messages)
            )
            completion = _checked(raw.parse())
        except UPSTREAM_ERRORS as exc:
            raise state.fail(exc) from None
        return state.complete(completion, raw.headers)

    async def open_stream(
        self, messages: Messages, *, model: str | None = None, call: CallInfo | None = None
    ) -> AsyncChatStream:
        """Start a stream; failures before the first byte raise `GatewayError` here."""
        state = _CallState(model or self.default_model, call or CallInfo(), stream=True)
        try:
            upstream: AsyncStream[ChatCompletionChunk] = await self._client.chat.completions.create(
                **state.request_kwargs(messages)
            )
        except UPSTREAM_ERRORS as exc:
            raise state.fail(exc) from None
        state.opened_stream(upstream.response.headers)
        return AsyncChatStream(upstream, state)


class AsyncChatStream:
    """Content deltas of one upstream stream. Use `async with` so it is closed."""

    def __init__(self, upstream: AsyncStream[ChatCompletionChunk], state: _CallState) -> None:
        self._upstream = upstream
        self._state = state

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for chunk in self._upstream:
                delta = self._state.consume(chunk)
                if delta:
                    yield delta
        except UPSTREAM_ERRORS as exc:
            raise self._state.fail(exc) from None
        self._state.finish_stream()

    def result(self) -> ChatResult:
        return self._state.result()

    async def aclose(self) -> None:
        self._state.close()
        # Shielded: a client disconnect cancels the relaying task, and a cancelled close would
        # leave the upstream stream (and the gateway's billing) running.
        with anyio.CancelScope(shield=True):
            await self._upstream.close()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
