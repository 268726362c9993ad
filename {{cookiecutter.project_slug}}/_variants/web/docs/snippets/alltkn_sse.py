"""Server-sent events for a chat stream: the wire format and the relay loops (async and sync).

When to use: your web service relays the gateway's answer to a browser or another service as
it is generated. Each content delta becomes `data: {"delta": "..."}`, the end `event: done`
(model, usage, request id), a failure after the start `event: error` with the category. While
the gateway is silent a `: keep-alive` comment goes out every `ALLTKN_SSE_KEEPALIVE_S`
seconds, so proxies don't time the stream out and a client that left is noticed at the next
write. Whatever ends the relay, the upstream stream is closed, so the gateway stops
generating, and billing, for nobody. Used by sse_fastapi.py and sse_flask.py; needs
alltkn_client.py and alltkn_errors.py next to it.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping

import anyio
import openai
from alltkn_client import env_seconds
from alltkn_errors import CATEGORIES, UPSTREAM_ERRORS
from openai import AsyncStream, Stream
from openai.types.chat import ChatCompletionChunk

# Proxies (nginx, many CDNs) buffer responses unless told not to; a buffered stream looks like
# a hang followed by the whole answer at once.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_S = env_seconds("ALLTKN_SSE_KEEPALIVE_S", 15, high=300)
# A client that stops reading this long is dropped, and its upstream stream closed.
SEND_TIMEOUT_S = env_seconds("ALLTKN_SSE_SEND_TIMEOUT_S", 30, high=3600)
_STATUS_BY_CATEGORY = {"invalid_request": 400, "rate_limited": 429, "timeout": 504}
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(header_value: str | None) -> str:
    """Reuse a well-formed inbound X-Request-ID (so traces join up); otherwise make one."""
    if header_value and _VALID_REQUEST_ID.fullmatch(header_value):
        return header_value
    return uuid.uuid4().hex


def sse_event(data: Mapping[str, object], event: str | None = None) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


def error_body(category: str, request_id: str) -> dict[str, object]:
    message, hint = CATEGORIES[category]
    return {
        "error": {"category": category, "message": message, "hint": hint, "request_id": request_id}
    }


def bad_body(problem: str, request_id: str) -> dict[str, object]:
    """A request refused before any gateway call: the same shape, naming what is wrong (never
    echoing the input)."""
    hint = 'Send JSON like {"prompt": "Hello", "model": "..."}.'
    return {
        "error": {
            "category": "invalid_request",
            "message": problem,
            "hint": hint,
            "request_id": request_id,
        }
    }


def http_status(category: str) -> int:
    """The status for a call refused before the stream started (502: the gateway's fault)."""
    return _STATUS_BY_CATEGORY.get(category, 502)


def retry_headers(exc: BaseException) -> dict[str, str]:
    """Pass the gateway's Retry-After on, so clients back off as long as it asked."""
    if isinstance(exc, openai.RateLimitError) and (
        after := exc.response.headers.get("retry-after")
    ):
        return {"Retry-After": after}
    return {}


class Answer:
    """What the relay learns from the chunks: model, usage, whether the model finished."""

    def __init__(self, model: str, request_id: str) -> None:
        self.model = model
        self.request_id = request_id
        self.usage: dict[str, int] | None = None
        self.finished = False

    def take(self, chunk: ChatCompletionChunk) -> bytes | None:
        """The event for one chunk, if it carries text."""
        if chunk.usage is not None:  # the include_usage chunk, whose `choices` is empty
            usage = chunk.usage
            self.usage = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
        self.model = chunk.model or self.model
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        self.finished = self.finished or choice.finish_reason is not None
        text = choice.delta.content
        return sse_event({"delta": text}) if text else None

    def last_event(self) -> bytes:
        if not self.finished:  # [DONE] (or a hang-up) without a finish_reason
            return self.error_event()
        data = {"model": self.model, "usage": self.usage, "request_id": self.request_id}
        return sse_event(data, "done")

    def error_event(self) -> bytes:
        return sse_event(error_body("stream_interrupted", self.request_id), "error")


async def relay(
    stream: AsyncStream[ChatCompletionChunk], answer: Answer, keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[bytes]:
    """SSE bytes for an async stream; closing this generator closes the upstream stream."""
    chunks = aiter(stream)
    # The SDK's iterator must not be cancelled mid-read, so a pending read survives a
    # keep-alive tick and is awaited again.
    pending: asyncio.Future[ChatCompletionChunk] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(chunks))
            done, _ = await asyncio.wait((pending,), timeout=keepalive_s)
            if not done:
                yield KEEPALIVE
                continue
            finished, pending = pending, None
            try:
                chunk = finished.result()
            except StopAsyncIteration:
                break
            if event := answer.take(chunk):
                yield event
    except UPSTREAM_ERRORS:
        yield answer.error_event()
        return
    finally:
        if pending is not None:
            pending.cancel()
        # Shielded: a client disconnect cancels the relaying task, and a cancelled close
        # would leave the upstream stream (and the gateway's billing) running.
        with anyio.CancelScope(shield=True):
            await stream.close()
    yield answer.last_event()


_END = object()


def relay_sync(
    stream: Stream[ChatCompletionChunk], answer: Answer, keepalive_s: float = KEEPALIVE_S
) -> Iterator[bytes]:
    """SSE bytes for a sync stream. A helper thread reads the upstream so keep-alives can be
    written while it waits; when the server closes this generator (the client hung up), the
    upstream stream is closed, which also ends that thread."""
    items: queue.SimpleQueue[object] = queue.SimpleQueue()
    reader = threading.Thread(target=_pump, args=(stream, items), daemon=True)
    reader.start()
    try:
        while True:
            try:
                item = items.get(timeout=keepalive_s)
            except queue.Empty:
                yield KEEPALIVE
                continue
            if item is _END:
                break
            if isinstance(item, UPSTREAM_ERRORS):
                yield answer.error_event()
                return
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, ChatCompletionChunk) and (event := answer.take(item)):
                yield event
    finally:
        stream.close()
    yield answer.last_event()


def _pump(stream: Stream[ChatCompletionChunk], items: queue.SimpleQueue[object]) -> None:
    try:
        for chunk in stream:
            items.put(chunk)
        items.put(_END)
    except BaseException as exc:  # handed to the relaying thread, which decides
        items.put(exc)
