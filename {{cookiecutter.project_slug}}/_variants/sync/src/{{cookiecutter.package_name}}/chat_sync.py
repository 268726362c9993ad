"""The chat service over the sync `OpenAI` client, for code that runs in threads.

The logic is in `chat` (stream protocol, call record, checks) and `retry` (what is retried);
this module only reads, waits and closes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from types import TracebackType

import httpx2
from openai import DefaultHttpx2Client, OpenAI

from . import retry
from .chat import (
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


def create_client(settings: Settings) -> OpenAI:
    cap = settings.retry_after_cap_s

    def apply_retry_policy(response: httpx2.Response) -> None:
        if retry.sdk_would_retry(response.status_code):
            response.read()
            retry.veto(response, cap)

    hooks = {"response": [apply_retry_policy]}
    return OpenAI(**client_options(settings), http_client=DefaultHttpx2Client(event_hooks=hooks))


class ChatService:
    def __init__(self, client: OpenAI, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def complete(self, request: ChatRequest, call: CallInfo | None = None) -> ChatResult:
        """One answer; `GatewayError` when every model tried failed."""
        check_request(request, self.settings)
        call, attempts = call or CallInfo(), attempts_for(request, self.settings)
        while True:
            record = CallRecord(attempts, call, stream=False)
            arguments = sdk_arguments(request, record.model, self.settings.max_output_tokens)
            try:
                raw = self.client.chat.completions.with_raw_response.create(
                    **arguments, extra_headers=record.headers
                )
                return record.completed(raw.parse(), raw.headers)
            except UPSTREAM_ERRORS as exc:
                error = record.fail(exc)
            delay = attempts.after(error, retry=False)  # the SDK retried what it could
            if delay is None:
                raise error from None
            time.sleep(delay)

    def open_stream(self, request: ChatRequest, call: CallInfo | None = None) -> ChatStream:
        """Start a stream: a failure before the gateway accepted it raises `GatewayError` here;
        one before the first content delta is retried or falls back while the stream is read.

        It returns without waiting for the first delta on purpose: the web layers start the
        response and its keep-alives then, so a slow first token neither holds the headers
        back nor lets a proxy time the silent response out."""
        if self.settings.streaming == "off":  # rollback switch: one delta from a plain call
            return ChatStream(self, request, call or CallInfo(), None, self.complete(request, call))
        check_request(request, self.settings)
        return ChatStream(self, request, call or CallInfo(), attempts_for(request, self.settings))


class ChatStream:
    """Content deltas of one upstream stream; a context manager, so it is always closed and
    the gateway stops generating (and billing) for a consumer that left."""

    def __init__(
        self,
        service: ChatService,
        request: ChatRequest,
        call: CallInfo,
        attempts: Attempts | None,
        done: ChatResult | None = None,
    ) -> None:
        self._service, self._request, self._call = service, request, call
        self._done = done
        self._closed = self._draining = False
        if attempts is not None:
            self._attempts = attempts
            self._open()

    def _open(self) -> None:
        """Open the stream on the current model, moving on while opening fails."""
        while True:
            record = CallRecord(self._attempts, self._call, stream=True)
            settings = self._service.settings
            arguments = sdk_arguments(self._request, record.model, settings.max_output_tokens)
            stack = contextlib.ExitStack()
            try:
                response = stack.enter_context(
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
                    stack.close()
                    error, sdk_retried = record.fail(exc), False
                else:
                    self._record, self._response, self._stack = record, response, stack
                    return
            delay = self._attempts.after(error, retry=not sdk_retried)
            if delay is None:
                raise error from None
            time.sleep(delay)

    def __iter__(self) -> Iterator[str]:
        if self._done is not None:
            yield from [self._done.content] if self._done.content else []
            return
        first = self._first_delta()
        if first is not None:
            yield first
            try:
                for line in self._lines:
                    if delta := self._protocol.feed(line):
                        yield delta
                    elif self._protocol.done:
                        break
            except UPSTREAM_ERRORS as exc:
                raise self._record.fail(exc) from None
        self._record.streamed(self._protocol)  # logged before the housekeeping
        self._draining = True
        # The rest of the body (normally just its end) is read in the background, so the
        # connection goes back to the pool without holding the caller up.
        threading.Thread(target=self._drain, daemon=True).start()

    def _first_delta(self) -> str | None:
        """The first content delta (None: an empty answer), trying again while it fails."""
        while True:
            self._protocol = protocol = StreamProtocol()
            self._lines = self._response.iter_lines()
            try:
                for line in self._lines:
                    if delta := protocol.feed(line):
                        self._record.first_delta()
                        return delta
                    if protocol.done:
                        break
                protocol.end()
                return None
            except UPSTREAM_ERRORS as exc:
                error = self._record.fail(exc)
            self._stack.close()
            delay = None if self._closed else self._attempts.after(error)
            if delay is None:
                raise error from None
            time.sleep(delay)
            if self._closed:  # the consumer left meanwhile
                raise error from None
            self._open()

    def _drain(self) -> None:
        with contextlib.suppress(*UPSTREAM_ERRORS):
            for _ in self._lines:
                pass
        self._stack.close()

    def result(self) -> ChatResult:
        return self._done or self._record.result()

    def close(self) -> None:
        # Logged first: closing makes a read in another thread (the Flask relay's reader) fail,
        # and that failure is not the gateway's fault.
        self._closed = True
        if self._done is None and not self._draining:
            self._record.log("client_disconnect")
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
