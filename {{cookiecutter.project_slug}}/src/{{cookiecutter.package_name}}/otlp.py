"""Spans and metrics over OTLP/HTTP, made here and sent by `otlp_wire.py`; only `telemetry.start`
imports them, when the environment asks for an export (see `telemetry.py`).

Attributes are the OpenTelemetry semantic conventions' (HTTP server, GenAI client) and this
service's request ids; never a prompt, an answer, an end user or a key.

What a request pays is kept small (measured in docs/performance.md): a span here is a few
fields, its attributes a dict this module built (no per-call checks: every value is ours), its
context a context variable of this module; only a sampled span, once ended, is queued, and
`otlp_wire.py` encodes and sends it on a thread of its own (OTEL_BSP_*). The metrics are counted
here, in plain numbers under one lock, and sent every OTEL_METRIC_EXPORT_INTERVAL (cumulative,
or delta). This is not OpenTelemetry's SDK, and nothing is global: FastAPI
adds no spans, and a library the team adds exports nothing unasked. The caller's W3C
`traceparent` (and `tracestate`) is continued and sent upstream; their `baggage` is not (it may
name an end user). OTEL_TRACES_SAMPLER: the specification's always_on, always_off,
traceidratio and their parentbased_ forms (the default: parentbased_always_on).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import random
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from . import __version__, metrics, otlp_wire, telemetry
from .otlp_wire import CLIENT, SERVER, SpanData
from .settings import Settings

if TYPE_CHECKING:
    from .chat import CallInfo, CallRecord
    from .request import ChatRequest

# What the last export may take at exit: a collector that is down would hold it for the
# exporter's timeout (OTEL_EXPORTER_OTLP_TIMEOUT, 10 s, retries included).
EXIT_WAIT_S = 3.0
# Any other is "_OTHER" (the conventions' bound on a value the client chose).
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_logger = logging.getLogger(__name__)


class Headers(Protocol):
    """A request's headers: a dict with lower-case names, or Flask's `request.headers`."""

    def get(self, key: str, /) -> str | None: ...

    def keys(self) -> Iterable[str]: ...


class Exporting:
    """This process's exports, each signal on a thread of its own. A forked worker (gunicorn's
    preloaded app) gets its own `service.instance.id`, counts, queue and threads."""

    def __init__(self, settings: Settings, signals: frozenset[str]) -> None:
        self.scope = otlp_wire.scope(__package__, __version__)
        self.resource = otlp_wire.resource(otlp_wire.resource_attributes())
        self.tracing: Tracing | None = None
        self.sink: OtlpSink | None = None
        self._spans: otlp_wire.SpanQueue | None = None
        self._metrics: MetricExport | None = None
        if "traces" in signals:
            sampled = telemetry.sampler(os.environ)
            self._traces = otlp_wire.Sender("traces")
            self._spans = otlp_wire.SpanQueue(self._send_spans)
            self.tracing = Tracing(self, settings, sampled)
        if "metrics" in signals:
            self.sink = OtlpSink()
            self._metrics = MetricExport(self, self.sink, otlp_wire.Sender("metrics"))
            metrics.configure(settings)
            metrics.install(self.sink)
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        if self.sink is not None or self.tracing is not None:  # not stopped
            self.resource = otlp_wire.resource(otlp_wire.resource_attributes())  # a new instance id
            if self._spans is not None:
                self._spans.restart()
            if self.sink is not None and self._metrics is not None:
                self.sink.forget()
                self._metrics.restart()

    def export(self, span: SpanData) -> None:
        if self._spans is not None:
            self._spans.add(span)

    def _send_spans(self, spans: list[SpanData]) -> None:
        body = otlp_wire.traces_request(self.resource, self.scope, spans)
        self._traces.send(body, f"{len(spans)} spans")

    def stop(self, wait_s: float = EXIT_WAIT_S) -> None:
        """Export what is pending, both signals at once, for at most `wait_s`."""
        if self.sink is not None:
            metrics.uninstall(self.sink)
        self.sink = self.tracing = None
        parts = [part for part in (self._spans, self._metrics) if part is not None]
        for part in parts:
            part.stop()
        deadline = time.monotonic() + wait_s
        for part in parts:
            part.thread.join(max(deadline - time.monotonic(), 0))


class SpanRef:
    """A span as its children and the gateway see it: ids, sampled, the caller's tracestate."""

    __slots__ = ("remote", "sampled", "span_id", "trace_id", "tracestate")

    def __init__(
        self, trace_id: int, span_id: int, sampled: bool, tracestate: str, remote: bool = False
    ) -> None:
        self.trace_id, self.span_id, self.sampled = trace_id, span_id, sampled
        self.tracestate, self.remote = tracestate, remote


# The span current in this request's context: the parent of the spans of its upstream calls.
_current: contextvars.ContextVar[SpanRef | None] = contextvars.ContextVar(
    f"{__package__}.span", default=None
)


def traceparent(headers: Headers) -> SpanRef | None:
    """The caller's span, from a valid W3C `traceparent` (version 00, or a later one read as
    00), with its `tracestate`."""
    found = _TRACEPARENT.fullmatch((headers.get("traceparent") or "").strip().lower())
    if not found:
        return None
    version, trace_id, span_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest) or int(trace_id, 16) * int(span_id, 16) == 0:
        return None
    sampled = bool(int(flags, 16) & 1)
    state = (headers.get("tracestate") or "").strip()
    return SpanRef(int(trace_id, 16), int(span_id, 16), sampled, state, remote=True)


class Tracing:
    """Makes the spans: `server_span` for an inbound request, `call` for the upstream attempts
    of one call."""

    def __init__(
        self, exporting: Exporting, settings: Settings, sampled: tuple[bool, float | None]
    ) -> None:
        self.exporting = exporting
        self._parent_based, ratio = sampled
        self._bound = None if ratio is None else round(ratio * 2**64)  # of a trace id's low half
        gateway = urlsplit(settings.base_url)
        port = None
        with contextlib.suppress(ValueError):  # not a number: every call fails, and says so
            port = gateway.port or (443 if gateway.scheme == "https" else 80)
        self._gateway = {
            name: value
            for name, value in (("server.address", gateway.hostname), ("server.port", port))
            if value
        }

    def start(self, parent: SpanRef | None) -> SpanRef:
        """A new span's ids and whether it is sampled: a new trace if no parent."""
        if parent is None:
            trace_id = random.getrandbits(128) or 1
            bound = self._bound
            sampled = bound is None or (trace_id & 0xFFFFFFFFFFFFFFFF) < bound
            return SpanRef(trace_id, random.getrandbits(64) or 1, sampled, "")
        sampled = parent.sampled
        if not self._parent_based:  # the root sampler, on the same trace id: the same answer
            sampled = self._bound is None or (parent.trace_id & 0xFFFFFFFFFFFFFFFF) < self._bound
        return SpanRef(parent.trace_id, random.getrandbits(64) or 1, sampled, parent.tracestate)

    def end(
        self,
        name: str,
        kind: int,
        span: SpanRef,
        parent: SpanRef | None,
        started_ns: int,
        attributes: dict[str, Any],
        error: bool,
    ) -> None:
        """Queue a sampled span for export."""
        if not span.sampled:
            return
        parent_id, remote = (parent.span_id, parent.remote) if parent else (0, False)
        self.exporting.export(SpanData(
            name, kind, span.trace_id, span.span_id, parent_id, remote, span.tracestate,
            started_ns, time.time_ns(), attributes, error,
        ))  # fmt: skip

    def server_span(self, method: str, scheme: str, path: str, headers: Headers) -> ServerSpan:
        return ServerSpan(self, method, scheme, path, headers)

    def call(self, request: ChatRequest, max_tokens: int, info: CallInfo) -> CallTrace:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": metrics.OPERATION,
            "gen_ai.provider.name": metrics.PROVIDER,
            **self._gateway,
            "gen_ai.request.max_tokens": request.max_tokens or max_tokens,  # what is sent
            "alltkn.request_id": info.request_id,
        }
        if request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
{%- if cookiecutter.caller_auth == "keys" %}
        if info.caller:
            attributes["alltkn.caller"] = info.caller
{%- endif %}
        return CallTrace(self, _current.get(), attributes)


class ServerSpan:
    """One inbound request's SERVER span: current (the parent of its calls' spans) from here to
    `detach`, ended by `end`, for a stream once its response has ended."""

    def __init__(
        self, tracing: Tracing, method: str, scheme: str, path: str, headers: Headers
    ) -> None:
        self._tracing, self._started = tracing, time.time_ns()
        self._parent = traceparent(headers)  # the caller's, if any
        self.span = tracing.start(self._parent)
        known = method if method in METHODS else "_OTHER"
        self._name = method if known == method else "HTTP"
        self._attributes: dict[str, Any] = {
            "http.request.method": known, "url.scheme": scheme, "url.path": path
        }  # fmt: skip
        if known != method:
            self._attributes["http.request.method_original"] = method
        self._token = _current.set(self.span)
        self.status: int | None = None  # the response's, once it started

    def detach(self) -> None:
        _current.reset(self._token)

    def end(self, route: str | None, request_id: str) -> None:
        name, status, attributes = self._name, self.status, self._attributes
        attributes["alltkn.request_id"] = request_id
        if route:  # none: no route matched
            name = f"{name} {route}"
            attributes["http.route"] = route
        if status is not None:
            attributes["http.response.status_code"] = status
        error = status is None or status >= 500  # a 4xx is the caller's error, not the server's
        if error:
            attributes["error.type"] = str(status or "incomplete_response")
        span, parent = self.span, self._parent
        self._tracing.end(name, SERVER, span, parent, self._started, attributes, error)


class CallTrace:
    """The spans of one call's attempts: children of the span current when the call was made,
    also for a stream's later attempts, made in another task or thread."""

    def __init__(
        self, tracing: Tracing, parent: SpanRef | None, attributes: dict[str, Any]
    ) -> None:
        self._tracing, self._parent, self._attributes = tracing, parent, attributes

    def attempt(self, model: str) -> UpstreamSpan:
        attributes = {**self._attributes, "gen_ai.request.model": model}
        return UpstreamSpan(self._tracing, f"chat {model}", self._parent, attributes)


class UpstreamSpan:
    """One upstream attempt's CLIENT span; `headers` are what tells the gateway about it."""

    def __init__(
        self, tracing: Tracing, name: str, parent: SpanRef | None, attributes: dict[str, Any]
    ) -> None:
        self._tracing, self._name, self._parent = tracing, name, parent
        self._attributes, self._started = attributes, time.time_ns()
        self.span = span = tracing.start(parent)
        flags = "01" if span.sampled else "00"
        self.headers = {"traceparent": f"00-{span.trace_id:032x}-{span.span_id:016x}-{flags}"}
        if span.tracestate:  # the caller's
            self.headers["tracestate"] = span.tracestate

    def end(self, record: CallRecord, error_type: str | None) -> None:
        if not self.span.sampled:
            return
        usage, attributes = record.usage, self._attributes
        attributes["gen_ai.response.model"] = record.model
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if record.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [record.finish_reason]
        if record.upstream_request_id:
            attributes["alltkn.upstream_request_id"] = record.upstream_request_id
        if error_type:
            attributes["error.type"] = error_type
        self._tracing.end(
            self._name, CLIENT, self.span, self._parent, self._started, attributes,
            bool(error_type),
        )  # fmt: skip


class Series:
    """One instrument's counts for one attribute set, since the sink's `start_ns`."""

    __slots__ = ("attributes", "bounds", "buckets", "count", "high", "low", "total")

    def __init__(self, attributes: dict[str, str], bounds: tuple[float, ...]) -> None:
        self.attributes, self.bounds = attributes, bounds
        self.reset()

    def reset(self) -> None:
        self.buckets = [0] * (len(self.bounds) + 1)  # a counter: none
        self.count, self.total, self.low, self.high = 0, 0.0, float("inf"), float("-inf")

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1  # (lower, upper], as OTLP's
        self.count += 1
        self.total += value
        self.low, self.high = min(self.low, value), max(self.high, value)


class OtlpSink:
    """`metrics.py`'s measurements, counted under one lock on the series of each instrument and
    attribute set, which are worked out once, then kept (the sets are few: `metrics.py` bounds
    them); `points` reads them for an export."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Nothing counted yet (and a new lock: a forked worker starts from here)."""
        self._lock = threading.Lock()
        self.start_ns = time.time_ns()
        self._series: dict[tuple[metrics.Instrument, tuple[tuple[str, str], ...]], Series] = {}
        # An attribute set's: duration, time to first chunk, input and output tokens.
        self._calls: dict[tuple[tuple[str, str], ...], metrics.CallSeries] = {}

    def _of(self, instrument: metrics.Instrument, attributes: metrics.Attributes) -> Series:
        names = metrics.ATTRIBUTES[instrument]  # those with a value: OTLP needs no empty one
        only = {name: value for name in names if (value := attributes.get(name))}
        key = (instrument, tuple(only.items()))
        if (series := self._series.get(key)) is None:
            series = self._series[key] = Series(only, instrument.buckets)
        return series

    def record(self, measurement: metrics.Measurement) -> None:
        attributes = measurement.attributes
        key = tuple(attributes.items())
        with self._lock:
            if (series := self._calls.get(key)) is None:
                series = self._calls[key] = metrics.call_series(attributes, self._of)
            metrics.observe(measurement, series)

    def add(self, counter: metrics.Instrument, attributes: metrics.Attributes) -> None:
        with self._lock:
            series = self._of(counter, attributes)
            series.count += 1

    def metrics(self, delta: bool = False) -> list[bytes]:
        """Every instrument with a count, encoded as OTLP points, now: cumulative, or `delta`
        (the counts since the last call, which starts the next interval)."""
        now, start = time.time_ns(), self.start_ns
        points: dict[metrics.Instrument, list[otlp_wire.Point]] = {}
        with self._lock:
            for (instrument, _), series in self._series.items():
                if series.count:
                    points.setdefault(instrument, []).append(otlp_wire.Point(
                        series.attributes, series.count, series.total, list(series.buckets),
                        series.low, series.high,
                    ))  # fmt: skip
                    if delta:
                        series.reset()
            if delta:
                self.start_ns = now
        return [
            otlp_wire.metric(instrument.name, instrument.description, instrument.unit,
                             instrument.buckets, found, start, now, delta)
            for instrument, found in points.items()
        ]  # fmt: skip


class MetricExport:
    """The sink's counts, sent every OTEL_METRIC_EXPORT_INTERVAL ms (60 s) on a thread of its
    own, and once more when stopped; cumulative, or delta as
    OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE asks."""

    def __init__(self, exporting: Exporting, sink: OtlpSink, sender: otlp_wire.Sender) -> None:
        self._exporting, self._sink, self._sender = exporting, sink, sender
        interval_ms = otlp_wire.number(os.environ, "OTEL_METRIC_EXPORT_INTERVAL", 60000)
        self._interval_s = interval_ms / 1000
        self._delta = otlp_wire.delta_temporality(os.environ)
        self.restart()

    def restart(self) -> None:
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="OtlpMetrics", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self.export()
        self.export()  # stopped: the last counts

    def export(self) -> None:
        try:
            if found := self._sink.metrics(self._delta):
                exporting = self._exporting
                body = otlp_wire.metrics_request(exporting.resource, exporting.scope, found)
                self._sender.send(body, f"{len(found)} metrics")
        except Exception:  # a bug of ours: said, and the next export is tried
            _logger.exception("OTLP metrics not sent")

    def stop(self) -> None:
        self._stopping.set()
