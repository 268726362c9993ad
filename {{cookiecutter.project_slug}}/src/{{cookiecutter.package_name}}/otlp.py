"""Spans and metrics over OTLP/HTTP: the one module that imports opentelemetry's SDK, and only
`telemetry.start` imports it, when the environment asks for an export (see `telemetry.py`).

Attributes are the OpenTelemetry semantic conventions' (HTTP server, GenAI client) and this
service's request ids; never a prompt, an answer, an end user or a key. The providers are this
module's, not OpenTelemetry's global ones: with a global provider FastAPI would add spans of its
own, and any library the team adds would export through it unasked.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from opentelemetry import context, propagate, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

from . import CLIENT_NAME, __version__, metrics
from .settings import Settings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import Meter

    from .chat import CallInfo, CallRecord
    from .request import ChatRequest

# What the last export may take at exit: a collector that is down would hold it for the
# exporter's timeout (OTEL_EXPORTER_OTLP_TIMEOUT, 10 s) and its retries, per signal.
EXIT_WAIT_S = 3.0
# Any other is "_OTHER" (the conventions' bound on a value the client chose).
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)


class Headers(Protocol):
    """A request's headers: a dict with lower-case names, or Flask's `request.headers`."""

    def get(self, key: str, /) -> str | None: ...

    def keys(self) -> Iterable[str]: ...


class Exporting:
    """This process's providers and what records on them. A forked worker (gunicorn) gets its
    own `service.instance.id` and export threads from the SDK."""

    def __init__(self, settings: Settings, signals: frozenset[str]) -> None:
        resource = service_resource()
        self.tracing: Tracing | None = None
        self.sink: OtlpSink | None = None
        self.providers: list[TracerProvider | MeterProvider] = []
        if "traces" in signals:
            # Sampled as OTEL_TRACES_SAMPLER says; shut down by `stop`, at exit (telemetry.py).
            spans = TracerProvider(resource=resource, shutdown_on_exit=False)
            spans.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            self.providers.append(spans)
            self.tracing = Tracing(spans.get_tracer(__package__, __version__), settings)
        if "metrics" in signals:
            meters = meter_provider(resource)
            self.providers.append(meters)
            self.sink = OtlpSink(meters.get_meter(__package__, __version__))
            metrics.configure(settings)
            metrics.install(self.sink)

    def stop(self, wait_s: float = EXIT_WAIT_S) -> None:
        """Export what is pending, both signals at once, for at most `wait_s`."""
        if self.sink is not None:
            metrics.uninstall(self.sink)
        stopping = [threading.Thread(target=p.shutdown, daemon=True) for p in self.providers]
        try:
            for thread in stopping:
                thread.start()
        except RuntimeError:  # Python 3.12 starts no thread at exit: one after the other
            stopping = []
            for provider in self.providers:
                provider.shutdown()
        deadline = time.monotonic() + wait_s
        for thread in stopping:
            thread.join(max(deadline - time.monotonic(), 0))


def service_resource() -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, else this project's name and version."""
    detected = Resource.create()
    attributes = {"service.version": __version__, **detected.attributes}
    if str(attributes["service.name"]).startswith("unknown_service"):  # the SDK's default
        attributes["service.name"] = CLIENT_NAME
    return Resource(attributes, detected.schema_url)


def meter_provider(resource: Resource) -> MeterProvider:
    """Exported every OTEL_METRIC_EXPORT_INTERVAL ms; histograms in the conventions' buckets."""
    views = [
        View(instrument_name=histogram.name,
             aggregation=ExplicitBucketHistogramAggregation(histogram.buckets))
        for histogram in metrics.HISTOGRAMS
    ]  # fmt: skip
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    return MeterProvider([reader], resource=resource, views=views, shutdown_on_exit=False)


class OtlpSink:
    """`metrics.py`'s measurements on instruments of the same names, units and attributes. The
    attributes each instrument gets from an attribute set are worked out once, then kept."""

    def __init__(self, meter: Meter) -> None:
        histograms = {
            h: meter.create_histogram(h.name, h.unit, h.description) for h in metrics.HISTOGRAMS
        }
        self._duration = histograms[metrics.DURATION]
        self._first_chunk = histograms[metrics.TIME_TO_FIRST_CHUNK]
        self._tokens = histograms[metrics.TOKEN_USAGE]
        self._counters = {
            c: meter.create_counter(c.name, c.unit, c.description) for c in metrics.COUNTERS
        }
        # An attribute set's: duration, time to first chunk, input and output tokens.
        self._calls: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], ...]] = {}

    def record(self, measurement: metrics.Measurement) -> None:
        attributes = measurement.attributes
        key = tuple(attributes.items())
        sets = self._calls.get(key)
        if sets is None:
            typed = [{**attributes, "gen_ai.token.type": kind} for kind in ("input", "output")]
            sets = self._calls[key] = (
                _only(metrics.DURATION, attributes),
                _only(metrics.TIME_TO_FIRST_CHUNK, attributes),
                *(_only(metrics.TOKEN_USAGE, each) for each in typed),
            )
        duration, first_chunk, input_tokens, output_tokens = sets
        self._duration.record(measurement.duration_s, duration)
        if (first := measurement.time_to_first_chunk_s) is not None:
            self._first_chunk.record(first, first_chunk)
        if (tokens := measurement.input_tokens) is not None:
            self._tokens.record(tokens, input_tokens)
        if (tokens := measurement.output_tokens) is not None:
            self._tokens.record(tokens, output_tokens)

    def add(self, counter: metrics.Instrument, attributes: metrics.Attributes) -> None:
        self._counters[counter].add(1, _only(counter, attributes))


def _only(instrument: metrics.Instrument, attributes: metrics.Attributes) -> dict[str, str]:
    """The instrument's attributes that have a value (OTLP needs no empty one)."""
    names = metrics.ATTRIBUTES[instrument]
    return {name: value for name in names if (value := attributes.get(name))}


class Tracing:
    """Makes the spans: `server_span` for an inbound request, `call` for the upstream attempts
    of one call."""

    def __init__(self, tracer: Tracer, settings: Settings) -> None:
        self._tracer = tracer
        gateway = urlsplit(settings.base_url)
        port = None
        with contextlib.suppress(ValueError):  # not a number: every call fails, and says so
            port = gateway.port or (443 if gateway.scheme == "https" else 80)
        self._gateway = {"server.address": gateway.hostname or "", "server.port": port}

    def server_span(self, method: str, scheme: str, path: str, headers: Headers) -> ServerSpan:
        return ServerSpan(self._tracer, method, scheme, path, headers)

    def call(self, request: ChatRequest, max_tokens: int, info: CallInfo) -> CallTrace:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": metrics.OPERATION,
            "gen_ai.provider.name": metrics.PROVIDER,
            **{name: value for name, value in self._gateway.items() if value},
            "gen_ai.request.max_tokens": request.max_tokens or max_tokens,  # what is sent
            "alltkn.request_id": info.request_id,
        }
        if request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
{%- if cookiecutter.caller_auth == "keys" %}
        if info.caller:
            attributes["alltkn.caller"] = info.caller
{%- endif %}
        return CallTrace(self._tracer, context.get_current(), attributes)


class ServerSpan:
    """One inbound request's SERVER span: current (the parent of its calls' spans) from here to
    `detach`, ended by `end`, for a stream once its response has ended."""

    def __init__(
        self, tracer: Tracer, method: str, scheme: str, path: str, headers: Headers
    ) -> None:
        parent = propagate.extract(headers)  # the caller's traceparent, if any
        known = method if method in METHODS else "_OTHER"
        self._name = method if known == method else "HTTP"
        attributes = {"http.request.method": known, "url.scheme": scheme, "url.path": path}
        if known != method:
            attributes["http.request.method_original"] = method
        self.span = tracer.start_span(self._name, parent, SpanKind.SERVER, attributes)
        self._token = context.attach(trace.set_span_in_context(self.span, parent))
        self.status: int | None = None  # the response's, once it started

    def detach(self) -> None:
        context.detach(self._token)

    def end(self, route: str | None, request_id: str) -> None:
        span, status = self.span, self.status
        attributes: dict[str, Any] = {"alltkn.request_id": request_id}
        if route:  # none: no route matched
            span.update_name(f"{self._name} {route}")
            attributes["http.route"] = route
        if status is not None:
            attributes["http.response.status_code"] = status
        if status is None or status >= 500:  # a 4xx is the caller's error, not the server's
            attributes["error.type"] = str(status or "incomplete_response")
            span.set_status(StatusCode.ERROR)
        span.set_attributes(attributes)
        span.end()


class CallTrace:
    """The spans of one call's attempts: children of the span current when the call was made,
    also for a stream's later attempts, made in another task or thread."""

    def __init__(self, tracer: Tracer, parent: Context, attributes: dict[str, Any]) -> None:
        self._tracer, self._parent, self._attributes = tracer, parent, attributes

    def attempt(self, model: str) -> UpstreamSpan:
        attributes = {**self._attributes, "gen_ai.request.model": model}
        span = self._tracer.start_span(f"chat {model}", self._parent, SpanKind.CLIENT, attributes)
        return UpstreamSpan(span, self._parent)


class UpstreamSpan:
    """One upstream attempt's CLIENT span; `headers` are what tells the gateway about it."""

    def __init__(self, span: Span, parent: Context) -> None:
        self.span = span
        self.headers: dict[str, str] = {}  # traceparent (tracestate, baggage: if the caller's)
        propagate.inject(self.headers, trace.set_span_in_context(span, parent))

    def end(self, record: CallRecord, error_type: str | None) -> None:
        span, usage = self.span, record.usage
        attributes: dict[str, Any] = {"gen_ai.response.model": record.model}
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if record.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [record.finish_reason]
        if record.upstream_request_id:
            attributes["alltkn.upstream_request_id"] = record.upstream_request_id
        if error_type:
            attributes["error.type"] = error_type
            span.set_status(StatusCode.ERROR)
        span.set_attributes(attributes)
        span.end()
