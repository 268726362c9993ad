"""The chat service over the `AsyncOpenAI` client, for code on an event loop. The logic is in
`chat` and `retry`: this module only calls the SDK, reads, waits and closes, like `chat_sync`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import TracebackType

import anyio
import httpx2
from openai import AsyncOpenAI, DefaultAioHttpClient

from . import retry
from .chat import UPSTREAM_ERRORS, Call, CallInfo, ChatResult, StreamProtocol
from .request import ChatRequest
from .settings import Settings

# How long the bytes after [DONE] may take: read, they put the connection back in the pool (an
# unread body closes it, and the next call pays a new TCP and TLS handshake).
DRAIN_S = 0.1


def create_async_client(settings: Settings) -> AsyncOpenAI:
    """Over aiohttp (`openai[aiohttp]`): half the CPU per relayed stream of the default one."""
    cap, retries = settings.retry_after_cap_s, settings.max_retries

    async def apply_retry_policy(response: httpx2.Response) -> None:
        if retry.sdk_would_retry(response.status_code):
            await response.aread()
            retry.review(response, cap, retries)

    hooks = {"response": [apply_retry_policy]}
    return AsyncOpenAI(
        **settings.client_options(), http_client=DefaultAioHttpClient(event_hooks=hooks)
    )


class AsyncChatService:
    def __init__(self, client: AsyncOpenAI, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    async def complete(self, request: ChatRequest, info: CallInfo | None = None) -> ChatResult:
        """One answer; `GatewayError` when every model tried failed."""
        call = Call(request, self.settings, info, stream=False)
        while True:
            create = self.client.chat.completions.with_raw_response.create
            try:
                raw = await create(**call.next_attempt())
                return call.record.completed(raw.parse(), raw.headers)
            except UPSTREAM_ERRORS as exc:
                await anyio.sleep(call.failed(exc, sdk_retried=True))

    async def open_stream(
        self, request: ChatRequest, info: CallInfo | None = None
    ) -> AsyncChatStream:
        """Start a stream, like `ChatService.open_stream`."""
        if self.settings.streaming == "off":  # rollback switch: one delta from a plain call
            return AsyncChatStream(self.client, None, await self.complete(request, info))
        stream = AsyncChatStream(self.client, Call(request, self.settings, info, stream=True))
        await stream.open()
        return stream


class AsyncChatStream:
    """Content deltas of one upstream stream; use `async with` so it is always closed."""

    def __init__(self, client: AsyncOpenAI, call: Call | None, done: ChatResult | None = None):
        self._client, self._done = client, done
        if call is not None:
            self._call = call

    async def open(self) -> None:
        """Open the stream on the current model, moving on while opening fails."""
        while True:
            stack = contextlib.AsyncExitStack()
            create = self._client.chat.completions.with_streaming_response.create
            try:
                opening = create(**self._call.next_attempt())
                self._response = await stack.enter_async_context(opening)
                self._call.record.opened(self._response.headers)
            except UPSTREAM_ERRORS as exc:  # a ValueError: a 200 that is not a stream
                await _close(stack)
                sdk_retried = not isinstance(exc, ValueError)
                await anyio.sleep(self._call.failed(exc, sdk_retried=sdk_retried))
            else:
                self._stack = stack
                return

    async def __aiter__(self) -> AsyncIterator[str]:
        if self._done is not None:
            if self._done.content:
                yield self._done.content
            return
        if (first := await self._first_delta()) is not None:
            yield first
            try:
                async for line in self._lines:
                    self._call.cut()
                    if delta := self._protocol.feed(line):
                        yield delta
                    elif self._protocol.done:
                        break
            except UPSTREAM_ERRORS as exc:
                raise self._call.record.fail(exc) from None
        self._call.record.streamed(self._protocol)  # logged before the housekeeping
        # The rest of the body (normally just its end), so the connection goes back to the pool.
        with anyio.move_on_after(DRAIN_S), contextlib.suppress(*UPSTREAM_ERRORS):
            async for _ in self._lines:
                pass

    async def _first_delta(self) -> str | None:
        """The first content delta (None: an empty answer), trying again while it fails."""
        while True:
            self._protocol = self._call.record.protocol = protocol = StreamProtocol()
            self._lines = self._response.iter_lines()
            try:
                async for line in self._lines:
                    self._call.cut()
                    if delta := protocol.feed(line):
                        self._call.record.first_delta()
                        return delta
                    if protocol.done:
                        break
                protocol.end()
                return None
            except UPSTREAM_ERRORS as exc:
                await _close(self._stack)
                await anyio.sleep(self._call.failed(exc))
            await self.open()

    def result(self) -> ChatResult:
        return self._done or self._call.record.result()

    async def aclose(self) -> None:
        if self._done is None:
            await _close(self._stack)  # before the log line: the gateway hears of it first
            self._call.record.log("client_disconnect")

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
