"""The chat service over the sync `OpenAI` client, for code that runs in threads. The logic is
in `chat` and `retry`: this module only calls the SDK, reads, waits, closes (as `chat_async`)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from types import TracebackType

import httpx2
from openai import DefaultHttpx2Client, OpenAI

from . import retry
from .chat import UPSTREAM_ERRORS, Call, CallInfo, ChatResult, StreamProtocol
from .request import ChatRequest
from .settings import Settings


def create_client(settings: Settings) -> OpenAI:
    cap, retries = settings.retry_after_cap_s, settings.max_retries

    def apply_retry_policy(response: httpx2.Response) -> None:
        if retry.sdk_would_retry(response.status_code):
            response.read()
            retry.review(response, cap, retries)

    hooks = {"response": [apply_retry_policy]}
    return OpenAI(**settings.client_options(), http_client=DefaultHttpx2Client(event_hooks=hooks))


class ChatService:
    def __init__(self, client: OpenAI, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def complete(self, request: ChatRequest, info: CallInfo | None = None) -> ChatResult:
        """One answer; `GatewayError` when every model tried failed."""
        call = Call(request, self.settings, info, stream=False)
        while True:
            try:
                raw = self.client.chat.completions.with_raw_response.create(**call.next_attempt())
                return call.record.completed(raw.parse(), raw.headers)
            except UPSTREAM_ERRORS as exc:
                time.sleep(call.failed(exc, sdk_retried=True))

    def open_stream(self, request: ChatRequest, info: CallInfo | None = None) -> ChatStream:
        """Start a stream: a failure before the gateway accepted it raises `GatewayError` here;
        one before the first content delta is retried or falls back while the stream is read.
        It returns without waiting for the first delta, so the web layers start the response
        and its keep-alives at once, whatever the first token's delay."""
        if self.settings.streaming == "off":  # rollback switch: one delta from a plain call
            return ChatStream(self.client, None, self.complete(request, info))
        return ChatStream(self.client, Call(request, self.settings, info, stream=True))


class ChatStream:
    """Content deltas of one upstream stream; a context manager, so it is always closed and
    the gateway stops generating (and billing) for a consumer that left."""

    def __init__(self, client: OpenAI, call: Call | None, done: ChatResult | None = None) -> None:
        self._client, self._done = client, done
        self._closed = self._draining = False
        if call is not None:
            self._call = call
            self._open()

    def _open(self) -> None:
        """Open the stream on the current model, moving on while opening fails."""
        while True:
            stack = contextlib.ExitStack()
            create = self._client.chat.completions.with_streaming_response.create
            try:
                self._response = stack.enter_context(create(**self._call.next_attempt()))
                self._call.record.opened(self._response.headers)
            except UPSTREAM_ERRORS as exc:  # a ValueError: a 200 that is not a stream
                stack.close()
                sdk_retried = not isinstance(exc, ValueError)
                time.sleep(self._call.failed(exc, sdk_retried=sdk_retried))
            else:
                self._stack = stack
                return

    def __iter__(self) -> Iterator[str]:
        if self._done is not None:
            yield from [self._done.content] if self._done.content else []
            return
        if (first := self._first_delta()) is not None:
            yield first
            try:
                for line in self._lines:
                    self._call.cut()
                    if delta := self._protocol.feed(line):
                        yield delta
                    elif self._protocol.done:
                        break
            except UPSTREAM_ERRORS as exc:
                raise self._call.record.fail(exc) from None
        self._call.record.streamed(self._protocol)  # logged before the housekeeping
        self._draining = True
        # The rest of the body (normally just its end) is read in the background, so the
        # connection goes back to the pool without holding the caller up.
        threading.Thread(target=self._drain, daemon=True).start()

    def _first_delta(self) -> str | None:
        """The first content delta (None: an empty answer), trying again while it fails."""
        while True:
            self._protocol = self._call.record.protocol = protocol = StreamProtocol()
            self._lines = self._response.iter_lines()
            try:
                for line in self._lines:
                    self._call.cut()
                    if delta := protocol.feed(line):
                        self._call.record.first_delta()
                        return delta
                    if protocol.done:
                        break
                protocol.end()
                return None
            except UPSTREAM_ERRORS as exc:
                self._stack.close()
                time.sleep(self._call.failed(exc, stop=self._closed))
            if self._closed and self._call.error:  # the consumer left meanwhile
                raise self._call.error from None
            self._open()

    def _drain(self) -> None:
        with contextlib.suppress(*UPSTREAM_ERRORS):
            for _ in self._lines:
                pass
        self._stack.close()

    def result(self) -> ChatResult:
        return self._done or self._call.record.result()

    def close(self) -> None:
        # Logged first: closing makes a read in another thread (the Flask relay's reader) fail,
        # and that failure is not the gateway's fault.
        self._closed = True
        if self._done is None and not self._draining:
            self._call.record.log("client_disconnect")
            self._stack.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
