"""The chat service over the `AsyncOpenAI` client, for code on an event loop.

The logic is in `chat` (stream protocol, call record, checks) and `retry` (what is retried);
this module only reads, waits and closes, like `chat_sync`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import TracebackType

import anyio
import httpx2
from openai import AsyncOpenAI, DefaultAioHttpClient

from . import retry
from .chat import (
    DRAIN_S,
    STREAM_ARGUMENTS,
    UPSTREAM_ERRORS,
    CallInfo,
    CallRecord,
    ChatResult,
    StreamProtocol,
    attempts_for,
    check_request,
)
from .client import client_options
from .errors import request_id_from_headers
from .request import ChatRequest, sdk_arguments
from .retry import Attempts
from .settings import Settings


def create_async_client(settings: Settings) -> AsyncOpenAI:
    """Over aiohttp (the SDK's `openai[aiohttp]` extra): measured in bench/bench_stream.py, it
    takes about half the CPU per relayed stream of the default transport."""
    cap = settings.retry_after_cap_s

    async def apply_retry_policy(response: httpx2.Response) -> None:
        if retry.sdk_would_retry(response.status_code):
            await response.aread()
            retry.veto(response, cap)

    hooks = {"response": [apply_retry_policy]}
    return AsyncOpenAI(
        **client_options(settings), http_client=DefaultAioHttpClient(event_hooks=hooks)
    )


class AsyncChatService:
    def __init__(self, client: AsyncOpenAI, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    async def complete(self, request: ChatRequest, call: CallInfo | None = None) -> ChatResult:
        """One answer; `GatewayError` when every model tried failed."""
        check_request(request, self.settings)
        call, attempts = call or CallInfo(), attempts_for(request, self.settings)
        while True:
            record = CallRecord(attempts, call, stream=False)
            arguments = sdk_arguments(request, record.model, self.settings.max_output_tokens)
            try:
                raw = await self.client.chat.completions.with_raw_response.create(
                    **arguments, extra_headers=record.headers
                )
                return record.completed(raw.parse(), raw.headers)
            except UPSTREAM_ERRORS as exc:
                error = record.fail(exc)
            delay = attempts.after(error, retry=False)  # the SDK retried what it could
            if delay is None:
                raise error from None
            await anyio.sleep(delay)

    async def open_stream(
        self, request: ChatRequest, call: CallInfo | None = None
    ) -> AsyncChatStream:
        """Start a stream, like `ChatService.open_stream`."""
        if self.settings.streaming == "off":  # rollback switch: one delta from a plain call
            done = await self.complete(request, call)
            return AsyncChatStream(self, request, call or CallInfo(), None, done)
        check_request(request, self.settings)
        stream = AsyncChatStream(
            self, request, call or CallInfo(), attempts_for(request, self.settings)
        )
        await stream.open()
        return stream


class AsyncChatStream:
    """Content deltas of one upstream stream; use `async with` so it is always closed."""

    def __init__(
        self,
        service: AsyncChatService,
        request: ChatRequest,
        call: CallInfo,
        attempts: Attempts | None,
        done: ChatResult | None = None,
    ) -> None:
        self._service, self._request, self._call = service, request, call
        self._done = done
        if attempts is not None:
            self._attempts = attempts

    async def open(self) -> None:
        """Open the stream on the current model, moving on while opening fails."""
        while True:
            record = CallRecord(self._attempts, self._call, stream=True)
            settings = self._service.settings
            arguments = sdk_arguments(self._request, record.model, settings.max_output_tokens)
            stack = contextlib.AsyncExitStack()
            try:
                response = await stack.enter_async_context(
                    self._service.client.chat.completions.with_streaming_response.create(
                        **arguments, **STREAM_ARGUMENTS, extra_headers=record.headers
                    )
                )
            except UPSTREAM_ERRORS as exc:
                error, sdk_retried = record.fail(exc), True
            else:
                record.upstream_request_id = request_id_from_headers(response.headers)
                try:
                    StreamProtocol.check_headers(response.headers)
                except ValueError as exc:  # a 200 that is not a stream: news to the SDK
                    await _close(stack)
                    error, sdk_retried = record.fail(exc), False
                else:
                    self._record, self._response, self._stack = record, response, stack
                    return
            delay = self._attempts.after(error, retry=not sdk_retried)
            if delay is None:
                raise error from None
            await anyio.sleep(delay)

    async def __aiter__(self) -> AsyncIterator[str]:
        if self._done is not None:
            if self._done.content:
                yield self._done.content
            return
        first = await self._first_delta()
        if first is not None:
            yield first
            try:
                async for line in self._lines:
                    if delta := self._protocol.feed(line):
                        yield delta
                    elif self._protocol.done:
                        break
            except UPSTREAM_ERRORS as exc:
                raise self._record.fail(exc) from None
        self._record.streamed(self._protocol)  # logged before the housekeeping
        # The rest of the body (normally just its end), so the connection goes back to the pool.
        with anyio.move_on_after(DRAIN_S), contextlib.suppress(*UPSTREAM_ERRORS):
            async for _ in self._lines:
                pass

    async def _first_delta(self) -> str | None:
        """The first content delta (None: an empty answer), trying again while it fails."""
        while True:
            self._protocol = protocol = StreamProtocol()
            self._lines = self._response.iter_lines()
            try:
                async for line in self._lines:
                    if delta := protocol.feed(line):
                        self._record.first_delta()
                        return delta
                    if protocol.done:
                        break
                protocol.end()
                return None
            except UPSTREAM_ERRORS as exc:
                error = self._record.fail(exc)
            await _close(self._stack)
            delay = self._attempts.after(error)
            if delay is None:
                raise error from None
            await anyio.sleep(delay)
            await self.open()

    def result(self) -> ChatResult:
        return self._done or self._record.result()

    async def aclose(self) -> None:
        if self._done is None:
            # Closed before the log line: the gateway hears of it first.
            await _close(self._stack)
            self._record.log("client_disconnect")

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _close(stack: contextlib.AsyncExitStack) -> None:
    # Shielded: a client disconnect cancels the relaying task, and a cancelled close would leave
    # the upstream stream (and the gateway's billing) running.
    with anyio.CancelScope(shield=True):
        await stack.aclose()
