"""An OTLP/HTTP receiver on loopback, for the tests: what the service exports, decoded with the
opentelemetry-proto package (`ExportTraceServiceRequest` at /v1/traces,
`ExportMetricsServiceRequest` at /v1/metrics), and every byte it was sent, to prove what is
never in them::

    with OtlpReceiver() as otlp:
        env = otlp.env()  # OTEL_* pointing here, exporting within a tenth of a second
        ...
        spans = otlp.wait_for(lambda: [s for s in otlp.spans() if s.kind == "CLIENT"])
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar

from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage
from opentelemetry.proto.trace.v1.trace_pb2 import Status

T = TypeVar("T")


@dataclass(frozen=True)
class Span:
    name: str
    kind: str  # "SERVER", "CLIENT"...
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    status: str  # "UNSET", "OK" or "ERROR"
    start_ns: int
    end_ns: int
    resource: dict[str, Any]

    def named_by(self, traceparent: str) -> bool:
        """Whether a W3C traceparent header names this span (version-trace-span-flags)."""
        return traceparent.split("-")[1:3] == [self.trace_id, self.span_id]


@dataclass(frozen=True)
class Point:
    """A metric's series as exported by one process (cumulative, or the last interval's)."""

    metric: str
    unit: str
    attributes: dict[str, Any]
    value: float  # a counter's value, a histogram's sum
    count: int  # a histogram's count (0 for a counter)
    bounds: tuple[float, ...]  # a histogram's bucket boundaries
    instance: str  # the exporting process's service.instance.id
    delta: bool = False  # the counts of the interval it closes, not since the start


def wait_for(found: Callable[[], T], timeout: float = 10.0, why: Callable[[], str] = str) -> T:
    """`found()` once it is truthy; a test failure, saying `why()`, if not within `timeout`."""
    deadline = time.monotonic() + timeout
    while not (result := found()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert result, why()
    return result


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.raw: list[bytes] = []  # every request body, uncompressed
        self.headers: list[dict[str, str]] = []  # every request's headers, names lower-case
        self.refusals: list[tuple[int, dict[str, str]]] = []  # answers to give first, in turn
        self._spans: list[Span] = []
        self._points: dict[tuple[str, str, str], Point] = {}  # the last of each series
        self._history: list[Point] = []  # every point received
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    refusal = receiver.refusals.pop(0) if receiver.refusals else None
                if refusal is not None:
                    status, headers = refusal
                    self.send_response(status)
                    for name, value in {**headers, "Content-Length": "0"}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                answer = receiver._receive(self.path, body)
                if answer is None:
                    self.send_error(404)
                    return
                reply = answer.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def env(self, **overrides: str) -> dict[str, str]:
        """The variables that send the service's spans and metrics here, quickly."""
        variables = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.url,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_METRIC_EXPORT_INTERVAL": "100",
        }
        return {**variables, **overrides}

    def _receive(self, path: str, body: bytes) -> Message | None:
        if path == "/v1/traces":
            traces = ExportTraceServiceRequest.FromString(body)
            spans = [
                self._span(span, _attributes(resource.resource.attributes))
                for resource in traces.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            ]
            with self._lock:
                self.raw.append(body)
                self._spans += spans
            return ExportTraceServiceResponse()
        if path == "/v1/metrics":
            exported = ExportMetricsServiceRequest.FromString(body)
            with self._lock:
                self.raw.append(body)
                for resource in exported.resource_metrics:
                    instance = _attributes(resource.resource.attributes)["service.instance.id"]
                    for scope in resource.scope_metrics:
                        for metric in scope.metrics:
                            self._add_points(metric, instance)
            return ExportMetricsServiceResponse()
        return None

    @staticmethod
    def _span(span: SpanMessage, resource: dict[str, Any]) -> Span:
        return Span(
            name=span.name,
            kind=SpanMessage.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_span_id=span.parent_span_id.hex(),
            attributes=_attributes(span.attributes),
            status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
            start_ns=span.start_time_unix_nano,
            end_ns=span.end_time_unix_nano,
            resource=resource,
        )

    def _add_points(self, metric: Any, instance: str) -> None:
        kind = metric.WhichOneof("data")
        for point in getattr(metric, kind).data_points:
            attributes = _attributes(point.attributes)
            if kind == "histogram":
                value, count, bounds = point.sum, point.count, tuple(point.explicit_bounds)
            else:
                value, count, bounds = getattr(point, point.WhichOneof("value")), 0, ()
            key = (instance, metric.name, repr(sorted(attributes.items())))
            delta = getattr(metric, kind).aggregation_temporality == 1  # DELTA
            point = Point(
                metric.name, metric.unit, attributes, value, count, bounds, instance, delta
            )
            self._points[key] = point
            self._history.append(point)

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def points(self, metric: str) -> list[Point]:
        with self._lock:
            return [point for point in self._points.values() if point.metric == metric]

    def every_point(self, metric: str) -> list[Point]:
        """Every point of `metric` received, in order: a delta series' intervals add up."""
        with self._lock:
            return [point for point in self._history if point.metric == metric]

    def sent(self) -> bytes:
        """Every byte the service sent here, uncompressed."""
        with self._lock:
            return b"".join(self.raw)

    def wait_for(self, found: Callable[[], T], timeout: float = 10.0) -> T:
        return wait_for(found, timeout, lambda: f"not exported; spans: {self.spans()}")

    def reset(self) -> None:
        with self._lock:
            self.raw.clear()
            self.headers.clear()
            self.refusals.clear()
            self._spans.clear()
            self._points.clear()
            self._history.clear()
