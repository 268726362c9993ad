"""The chat service: `complete()` and `open_stream()` over the gateway, sync and async.

Both variants share the bookkeeping in `_CallState`; only the I/O differs. Every call is logged
exactly once (see `logs.log_call`), and every stream is closed, also when its consumer leaves
early, so the gateway stops generating (and billing) for nobody.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeGuard, cast

import anyio
import httpx2
import openai
from openai import AsyncOpenAI, AsyncStream, OpenAI, Stream
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming
from pydantic import BaseModel, ConfigDict

from .errors import Category, GatewayError, classify, request_id_from_headers
from .logs import log_call
from .retry import FALLBACK_ON, RETRIED
from .settings import Settings

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


class _ChunkPart(BaseModel):
    # Frozen, and unknown fields ignored: a gateway may add whatever it likes.
    model_config = ConfigDict(frozen=True)


class _ChunkDelta(_ChunkPart):
    content: str | None = None


class _ChunkChoice(_ChunkPart):
    delta: _ChunkDelta | None = None
    finish_reason: str | None = None


class _ChunkUsage(_ChunkPart):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class StreamChunk(_ChunkPart):
    """The fields of one streamed `chat.completion.chunk` that the service uses.

    Streams are read from the SDK's response line by line and parsed into this, rather than
    iterated as SDK `ChatCompletionChunk` models: building those costs about 50 µs a chunk in
    pure Python (a third of a relay's CPU), validating these few fields about 2 µs.
    """

    model: str | None = None
    choices: list[_ChunkChoice] | None = None
    usage: _ChunkUsage | None = None
    error: Any = None  # an in-stream error event: `{"error": {"message": ...}}`


_DONE = "[DONE]"
# Streams are opened with the client's `post()`, given the body typed by the SDK's own
# `CompletionCreateParamsStreaming`, rather than with `chat.completions.create()`: before
# sending, `create()` walks every message through each of the six message types, looking for
# key aliases and formats that chat messages do not have. Measured here (bench/bench_request.py)
# that is most of the call's CPU: about 0.2 ms for one message and 4 ms for 40, all of it
# before the request leaves, so it adds to the time to first token. `post()` sends the same
# body as is (hence `_listed`); with the same auth option as `create()`, retries, timeouts
# and error mapping are the client's, unchanged.
_CHAT_COMPLETIONS = "/chat/completions"
# How long a finished stream's leftover bytes after [DONE] may take to arrive (see `_drain`).
_DRAIN_S = 0.1
# What may precede the first delta of an event stream; any other line means the gateway did not
# answer with one (a proxy's or captive portal's page, a JSON body).
_SSE_LINE_STARTS = ("data:", ":", "event:", "id:", "retry:")
# The backoff of the explicit retries of a stream that failed before its first delta, like the
# SDK's own: 0.5 s doubling, at most 8 s, up to a quarter less at random.
_RETRY_BASE_S = 0.5
_RETRY_MAX_S = 8.0


def _sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for blank lines, comments and other fields."""
    if not line.startswith("data:"):
        return None
    return line[5:].removeprefix(" ")


def _drain(lines: Iterator[str], response: httpx2.Response) -> None:
    """Read what follows `[DONE]` of a finished stream (normally just the end of the chunked
    body), so that its connection goes back to the pool: a body left unread closes it, and the
    next call pays a new TCP and TLS handshake before its first token (the SDK's sync streams
    do that). At most `_DRAIN_S`: a gateway that keeps the body open, or goes on sending
    comments, has its connection cut. A failure here costs that connection, not the answer."""
    if response.is_closed:  # read to the end already
        return
    # A timer thread, as a blocked sync read has no deadline of its own short of the read
    # timeout. `_shut_down` leaves a response read to the end alone, so the timer cuts a
    # connection that went back to the pool only if it fires in the instant between the two.
    cut = threading.Timer(_DRAIN_S, _shut_down, (response,))
    cut.daemon = True
    cut.start()
    try:
        with contextlib.suppress(*UPSTREAM_ERRORS):
            for _ in lines:
                pass
    finally:
        cut.cancel()


async def _drain_async(lines: AsyncIterator[str]) -> None:
    """`_drain` for an async stream."""
    with anyio.move_on_after(_DRAIN_S), contextlib.suppress(*UPSTREAM_ERRORS):
        async for _ in lines:
            pass


def _parse_chunk(data: str, response: httpx2.Response) -> StreamChunk:
    chunk = StreamChunk.model_validate_json(data)  # a ValueError if it is not a chunk
    if chunk.error:
        # The SDK raises a bare APIError for an error event; so do we.
        error = chunk.error
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str) or not message:
            message = "An error occurred during streaming"
        raise openai.APIError(message, response.request, body=error)
    return chunk


@dataclass(frozen=True)
class Rollback:
    """The rollback switches (docs/RUNBOOK.md), applied by both chat services.

    - `fallback_models`: tried in order after the requested model fails with a category in
      `retry.FALLBACK_ON` (a stream only before its first content delta reached the caller);
    - `streaming=False`: `open_stream()` makes one non-streaming call and yields its answer as
      a single delta, so stream endpoints keep answering;
    - `max_input_chars`: longer input is refused as `invalid_request` before any upstream call.
    """

    fallback_models: tuple[str, ...] = ()
    streaming: bool = True
    max_input_chars: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Rollback:
        return cls(
            fallback_models=settings.fallback_model_list,
            streaming=settings.streaming == "on",
            max_input_chars=settings.max_input_chars,
        )

    def checked_input(self, messages: Messages) -> list[ChatCompletionMessageParam]:
        """The messages as a list (they may be read once per model), or `GatewayError`."""
        listed = [_listed(message) for message in messages]
        limit = self.max_input_chars
        if limit is not None and (size := input_chars(listed)) > limit:
            raise GatewayError(
                Category.INVALID_REQUEST,
                f"input of {size} characters refused: ALLTKN_MAX_INPUT_CHARS={limit}",
                detail=f"The input is {size} characters long; the limit is {limit} characters. "
                "Shorten the messages.",
            )
        return listed

    def models(self, requested: str) -> list[str]:
        """The requested model, then the fallbacks other than it."""
        return [requested, *(name for name in self.fallback_models if name != requested)]


def _listed(message: ChatCompletionMessageParam) -> ChatCompletionMessageParam:
    """The message with its one-shot iterables (`content` parts or `tool_calls` given as a
    generator, say) made lists: they are counted, sent as JSON, and maybe sent again."""
    if not any(_one_shot(value) for value in message.values()):
        return message
    fields = {key: list(value) if _one_shot(value) else value for key, value in message.items()}
    return cast("ChatCompletionMessageParam", fields)


def _one_shot(value: object) -> TypeGuard[Iterator[object]]:
    # Iterators (generators, `iter(...)`, `map(...)`): other values, pydantic models included,
    # the SDK's JSON encoder handles.
    return isinstance(value, Iterator)


def input_chars(messages: Sequence[ChatCompletionMessageParam]) -> int:
    """Characters of the message contents (text parts of multi-part contents included)."""
    total = 0
    for message in messages:
        content: object = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, Iterable):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                total += len(text) if isinstance(text, str) else 0
    return total


def _origin(model: str, models: list[str]) -> str | None:
    """The model first asked for, when `model` is one of its fallbacks."""
    return models[0] if model != models[0] else None


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
        self.logged = False
        # The model first asked for, when this call is a fallback (ALLTKN_FALLBACK_MODELS).
        self.fallback_from: str | None = None

    def headers(self) -> dict[str, str]:
        return {"X-Request-ID": self.call.request_id}

    def stream_body(
        self, messages: list[ChatCompletionMessageParam]
    ) -> CompletionCreateParamsStreaming:
        # include_usage: the last chunk, with empty `choices`, carries the token counts.
        return {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def opened_stream(self, headers: httpx2.Headers) -> None:
        self.upstream_request_id = request_id_from_headers(headers)
        content_type = headers.get("content-type", "")
        if content_type.startswith("text/html"):
            raise ValueError(f"the gateway answered 200 with {content_type}, not an event stream")

    def consume(self, chunk: StreamChunk) -> str | None:
        """Take one chunk; return its content delta, if any."""
        if (usage := chunk.usage) is not None:  # the include_usage chunk, `choices` empty
            self.usage = Usage(
                usage.prompt_tokens or 0, usage.completion_tokens or 0, usage.total_tokens or 0
            )
        if chunk.model:
            self.model = chunk.model
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        text = choice.delta.content if choice.delta else None
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
        # `ttft_ms` is set when the first content delta is read, which is handed to the caller
        # at once: from then on the caller has part of the answer.
        error = classify(exc, stream_started=self.ttft_ms is not None)
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
                "fallback_from": self.fallback_from,
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


class _StreamAttempts:
    """The order in which a stream is tried: the requested model, then its fallbacks.

    A stream that fails before its first content delta reached the caller has cost the caller
    nothing, so, like a failed open, it is retried (categories in `retry.RETRIED`, at most
    `max_retries` times per model, with backoff) and then falls back (`retry.FALLBACK_ON`).
    The SDK retries only the request that opens a stream; these retries cover a stream whose
    headers arrived but whose content did not (a read timeout, a dropped connection, a body
    that is not an event stream).
    """

    def __init__(self, models: list[str], max_retries: int) -> None:
        self._models = models
        self._max_retries = max_retries
        self._index = 0
        self._retried = 0

    def new_state(self, call: CallInfo) -> _CallState:
        model = self._models[self._index]
        state = _CallState(model, call, stream=True)
        state.fallback_from = _origin(model, self._models)
        return state

    def after(self, error: GatewayError, *, retry: bool) -> float | None:
        """Move on after `error`: the delay before the next attempt, None if `error` is final.
        `retry=False` when the SDK has already retried (the stream did not open)."""
        if retry and error.category in RETRIED and self._retried < self._max_retries:
            self._retried += 1
            delay = min(_RETRY_BASE_S * 2.0 ** (self._retried - 1), _RETRY_MAX_S)
            return delay * (1 - 0.25 * random.random())  # noqa: S311 (jitter, not a secret)
        if error.category in FALLBACK_ON and self._index + 1 < len(self._models):
            self._index += 1
            self._retried = 0
            return 0.0
        return None


class ChatService:
    """Chat over the sync `OpenAI` client (Flask, the CLI)."""

    def __init__(
        self, client: OpenAI, default_model: str, rollback: Rollback | None = None
    ) -> None:
        self._client = client
        self.default_model = default_model
        self.rollback = rollback or Rollback()

    def complete(
        self, messages: Messages, *, model: str | None = None, call: CallInfo | None = None
    ) -> ChatResult:
        """One answer; `GatewayError` when every model tried failed."""
        listed, call = self.rollback.checked_input(messages), call or CallInfo()
        models = self.rollback.models(model or self.default_model)
        for name in models[:-1]:
            try:
                return self._complete(listed, name, call, fallback_from=_origin(name, models))
            except GatewayError as error:
                if error.category not in FALLBACK_ON:
                    raise
        return self._complete(listed, models[-1], call, fallback_from=_origin(models[-1], models))

    def open_stream(
        self, messages: Messages, *, model: str | None = None, call: CallInfo | None = None
    ) -> ChatStream:
        """Start a stream. A failure before the gateway accepted it raises `GatewayError` here;
        one after that but before the first content delta is retried or falls back while the
        stream is read, and raised from the iteration when final (see `_StreamAttempts`).

        This returns without waiting for the first delta on purpose: the web layers start the
        response, and its keep-alives, when it returns, and a slow first token must neither hold
        the headers back nor let a proxy time the silent response out."""
        if not self.rollback.streaming:
            return _SingleDeltaStream(self.complete(messages, model=model, call=call))
        listed, call = self.rollback.checked_input(messages), call or CallInfo()
        attempts = _StreamAttempts(
            self.rollback.models(model or self.default_model), self._client.max_retries
        )
        upstream, state = self._open_stream(listed, call, attempts)
        return ChatStream(
            upstream, state, attempts, lambda: self._open_stream(listed, call, attempts)
        )

    def _complete(
        self, messages: Messages, model: str, call: CallInfo, *, fallback_from: str | None
    ) -> ChatResult:
        state = _CallState(model, call, stream=False)
        state.fallback_from = fallback_from
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_headers=state.headers()
            )
            completion = _checked(raw.parse())
        except UPSTREAM_ERRORS as exc:
            raise state.fail(exc) from None
        return state.complete(completion, raw.headers)

    def _open_stream(
        self,
        messages: list[ChatCompletionMessageParam],
        call: CallInfo,
        attempts: _StreamAttempts,
    ) -> tuple[Stream[ChatCompletionChunk], _CallState]:
        """Open the stream on the next model to try, falling back while opening fails."""
        while True:
            state = attempts.new_state(call)
            try:
                upstream = self._client.post(
                    _CHAT_COMPLETIONS,
                    cast_to=ChatCompletion,
                    body=state.stream_body(messages),
                    options={"headers": state.headers(), "security": {"bearer_auth": True}},
                    stream=True,
                    stream_cls=Stream[ChatCompletionChunk],
                )
            except UPSTREAM_ERRORS as exc:
                error, retry = state.fail(exc), False  # the SDK retried what it could
            else:
                try:
                    state.opened_stream(upstream.response.headers)
                    return upstream, state
                except ValueError as exc:  # a 200 that is not a stream: news to the SDK
                    upstream.close()
                    error, retry = state.fail(exc), True
            delay = attempts.after(error, retry=retry)
            if delay is None:
                raise error from None
            time.sleep(delay)


class ChatStream:
    """Content deltas of one upstream stream. Use it as a context manager so it is closed.

    The SDK opened the stream (retries, timeouts, status errors); its body is read here line by
    line and each event parsed into a `StreamChunk`.
    """

    def __init__(
        self,
        upstream: Stream[ChatCompletionChunk],
        state: _CallState,
        attempts: _StreamAttempts,
        reopen: Callable[[], tuple[Stream[ChatCompletionChunk], _CallState]],
    ) -> None:
        self._upstream = upstream
        self._state = state
        self._attempts = attempts
        self._reopen = reopen
        self._lines: Iterator[str] = iter(())
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        first = self._first_delta()
        if first is not None:
            yield first
            response = self._upstream.response
            try:
                for line in self._lines:
                    data = _sse_data(line)
                    if data is None:
                        continue
                    if data.startswith(_DONE):
                        break
                    delta = self._state.consume(_parse_chunk(data, response))
                    if delta:
                        yield delta
            except UPSTREAM_ERRORS as exc:
                raise self._state.fail(exc) from None
        self._state.finish_stream()  # logged before the housekeeping: the answer is complete
        _drain(self._lines, self._upstream.response)

    def _first_delta(self) -> str | None:
        """The first content delta (None: an empty answer), trying again while it fails."""
        while True:
            try:
                return self._read_first_delta()
            except UPSTREAM_ERRORS as exc:
                error = self._state.fail(exc)
            self._upstream.close()
            delay = None if self._closed else self._attempts.after(error, retry=True)
            if delay is None:
                raise error from None
            time.sleep(delay)
            if self._closed:  # the consumer left meanwhile
                raise error from None
            self._upstream, self._state = self._reopen()
            if self._closed:
                self._upstream.close()
                raise error from None

    def _read_first_delta(self) -> str | None:
        response = self._upstream.response
        self._lines = lines = response.iter_lines()
        for line in lines:
            data = _sse_data(line)
            if data is None:
                if line and not line.startswith(_SSE_LINE_STARTS):
                    raise ValueError(f"the stream's body is not an event stream: {line[:200]}")
                continue
            if data.startswith(_DONE):
                break
            delta = self._state.consume(_parse_chunk(data, response))
            if delta:
                return delta
        if self._state.finish_reason is None:
            raise ValueError("the stream ended before any content, without a finish_reason")
        return None

    def result(self) -> ChatResult:
        return self._state.result()

    def close(self) -> None:
        # Log first: closing the upstream makes a read in another thread fail, and that
        # failure must not be logged as the gateway's fault (nor retried).
        self._closed = True
        self._state.close()
        # Also when the call was logged: the reading thread may be draining the body.
        _shut_down(self._upstream.response)
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


def _shut_down(response: httpx2.Response) -> None:
    """Wake a read of this response blocked in another thread (the Flask relay's reader, while
    the gateway is silent, or a drain): closing the response does not, and the gateway would
    go on generating until its next write. The connection is not reusable anyway: its body was
    left unread. A response read to the end is left alone: its connection is back in the
    pool."""
    if response.is_closed:
        return
    network_stream = response.extensions.get("network_stream")
    sock = network_stream.get_extra_info("socket") if network_stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class AsyncChatService:
    """Chat over the `AsyncOpenAI` client (FastAPI)."""

    def __init__(
        self, client: AsyncOpenAI, default_model: str, rollback: Rollback | None = None
    ) -> None:
        self._client = client
        self.default_model = default_model
        self.rollback = rollback or Rollback()

    async def complete(
        self, messages: Messages, *, model: str | None = None, call: CallInfo | None = None
    ) -> ChatResult:
        """One answer; `GatewayError` when every model tried failed."""
        listed, call = self.rollback.checked_input(messages), call or CallInfo()
        models = self.rollback.models(model or self.default_model)
        for name in models[:-1]:
            try:
                return await self._complete(listed, name, call, fallback_from=_origin(name, models))
            except GatewayError as error:
                if error.category not in FALLBACK_ON:
                    raise
        return await self._complete(
            listed, models[-1], call, fallback_from=_origin(models[-1], models)
        )

    async def open_stream(
        self, messages: Messages, *, model: str | None = None, call: CallInfo | None = None
    ) -> AsyncChatStream:
        """Start a stream, like `ChatService.open_stream`."""
        if not self.rollback.streaming:
            return _AsyncSingleDeltaStream(await self.complete(messages, model=model, call=call))
        listed, call = self.rollback.checked_input(messages), call or CallInfo()
        attempts = _StreamAttempts(
            self.rollback.models(model or self.default_model), self._client.max_retries
        )
        upstream, state = await self._open_stream(listed, call, attempts)
        return AsyncChatStream(
            upstream, state, attempts, lambda: self._open_stream(listed, call, attempts)
        )

    async def _complete(
        self, messages: Messages, model: str, call: CallInfo, *, fallback_from: str | None
    ) -> ChatResult:
        state = _CallState(model, call, stream=False)
        state.fallback_from = fallback_from
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_headers=state.headers()
            )
            completion = _checked(raw.parse())
        except UPSTREAM_ERRORS as exc:
            raise state.fail(exc) from None
        return state.complete(completion, raw.headers)

    async def _open_stream(
        self,
        messages: list[ChatCompletionMessageParam],
        call: CallInfo,
        attempts: _StreamAttempts,
    ) -> tuple[AsyncStream[ChatCompletionChunk], _CallState]:
        """Open the stream on the next model to try, falling back while opening fails."""
        while True:
            state = attempts.new_state(call)
            try:
                upstream = await self._client.post(
                    _CHAT_COMPLETIONS,
                    cast_to=ChatCompletion,
                    body=state.stream_body(messages),
                    options={"headers": state.headers(), "security": {"bearer_auth": True}},
                    stream=True,
                    stream_cls=AsyncStream[ChatCompletionChunk],
                )
            except UPSTREAM_ERRORS as exc:
                error, retry = state.fail(exc), False  # the SDK retried what it could
            else:
                try:
                    state.opened_stream(upstream.response.headers)
                    return upstream, state
                except ValueError as exc:  # a 200 that is not a stream: news to the SDK
                    with anyio.CancelScope(shield=True):
                        await upstream.close()
                    error, retry = state.fail(exc), True
            delay = attempts.after(error, retry=retry)
            if delay is None:
                raise error from None
            await anyio.sleep(delay)


class AsyncChatStream:
    """Content deltas of one upstream stream. Use `async with` so it is closed.

    Read like `ChatStream`; after `[DONE]` the rest of the body is drained briefly, so that the
    connection can be reused.
    """

    def __init__(
        self,
        upstream: AsyncStream[ChatCompletionChunk],
        state: _CallState,
        attempts: _StreamAttempts,
        reopen: Callable[[], Awaitable[tuple[AsyncStream[ChatCompletionChunk], _CallState]]],
    ) -> None:
        self._upstream = upstream
        self._state = state
        self._attempts = attempts
        self._reopen = reopen
        self._lines: AsyncIterator[str] | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        first = await self._first_delta()
        response = self._upstream.response
        lines = self._lines or response.aiter_lines()
        if first is not None:
            yield first
            try:
                async for line in lines:
                    data = _sse_data(line)
                    if data is None:
                        continue
                    if data.startswith(_DONE):
                        break
                    delta = self._state.consume(_parse_chunk(data, response))
                    if delta:
                        yield delta
            except UPSTREAM_ERRORS as exc:
                raise self._state.fail(exc) from None
        self._state.finish_stream()  # logged before the housekeeping: the answer is complete
        await _drain_async(lines)

    async def _first_delta(self) -> str | None:
        """The first content delta (None: an empty answer), trying again while it fails."""
        while True:
            try:
                return await self._read_first_delta()
            except UPSTREAM_ERRORS as exc:
                error = self._state.fail(exc)
            with anyio.CancelScope(shield=True):
                await self._upstream.close()
            delay = self._attempts.after(error, retry=True)
            if delay is None:
                raise error from None
            await anyio.sleep(delay)
            self._upstream, self._state = await self._reopen()

    async def _read_first_delta(self) -> str | None:
        response = self._upstream.response
        self._lines = lines = response.aiter_lines()
        async for line in lines:
            data = _sse_data(line)
            if data is None:
                if line and not line.startswith(_SSE_LINE_STARTS):
                    raise ValueError(f"the stream's body is not an event stream: {line[:200]}")
                continue
            if data.startswith(_DONE):
                break
            delta = self._state.consume(_parse_chunk(data, response))
            if delta:
                return delta
        if self._state.finish_reason is None:
            raise ValueError("the stream ended before any content, without a finish_reason")
        return None

    def result(self) -> ChatResult:
        return self._state.result()

    async def aclose(self) -> None:
        # Shielded: a client disconnect cancels the relaying task, and a cancelled close would
        # leave the upstream stream (and the gateway's billing) running. Closed before the log
        # line is written, so the gateway hears of it first; unlike the sync stream, no other
        # thread is reading, so nothing can log the close as the gateway's fault meanwhile.
        with anyio.CancelScope(shield=True):
            await self._upstream.close()
        self._state.close()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class _SingleDeltaStream(ChatStream):
    """ALLTKN_STREAMING=off: a finished non-streaming answer, served as a one-delta stream."""

    def __init__(self, result: ChatResult) -> None:  # no upstream: the call is already over
        self._result = result

    def __iter__(self) -> Iterator[str]:
        if self._result.content:
            yield self._result.content

    def result(self) -> ChatResult:
        return self._result

    def close(self) -> None:
        pass


class _AsyncSingleDeltaStream(AsyncChatStream):
    """ALLTKN_STREAMING=off for `AsyncChatService`, like `_SingleDeltaStream`."""

    def __init__(self, result: ChatResult) -> None:
        self._result = result

    async def __aiter__(self) -> AsyncIterator[str]:
        if self._result.content:
            yield self._result.content

    def result(self) -> ChatResult:
        return self._result

    async def aclose(self) -> None:
        pass
