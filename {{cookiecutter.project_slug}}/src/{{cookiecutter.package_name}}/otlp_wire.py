"""OTLP/HTTP itself, for `otlp.py`: spans and metrics encoded as the protocol's protobuf messages,
queued (spans) and sent to the collector as the standard variables say.

- Encoding (`traces_request`, `metrics_request`): by hand, only the fields this service sends,
  with the field numbers of opentelemetry-proto's `.proto` files; the tests decode every byte
  with opentelemetry-proto itself. Building the messages from protobuf classes, as the
  OpenTelemetry SDK's exporter does, cost more CPU than all the rest of a stream's telemetry
  (docs/performance.md).
- Sending (`Sender`): OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT, _HEADERS, _TIMEOUT (seconds,
  as OpenTelemetry's Python SDK reads it; 10), _COMPRESSION (gzip, none), _CERTIFICATE,
  _CLIENT_CERTIFICATE, _CLIENT_KEY. The answers OTLP calls retryable (429, 502, 503, 504) and
  connection failures are retried within the timeout, with `retry.py`'s pauses and Retry-After.
- Spans (`SpanQueue`): OTEL_BSP_SCHEDULE_DELAY (5000 ms), OTEL_BSP_MAX_QUEUE_SIZE (2048: past
  it a span is dropped, and the drop logged), OTEL_BSP_MAX_EXPORT_BATCH_SIZE (512).
- Metrics: OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE (`delta_temporality`).
"""

from __future__ import annotations

import collections
import gzip
import itertools
import logging
import os
import re
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import httpx2

from . import CLIENT_NAME, __version__, retry
from .settings import ConfigError

SERVER, CLIENT = 2, 3  # Span.SpanKind
RETRIED = frozenset({429, 502, 503, 504})  # OTLP/HTTP's retryable answers
EXPORT_TIMEOUTS = {"traces": "OTEL_BSP_EXPORT_TIMEOUT", "metrics": "OTEL_METRIC_EXPORT_TIMEOUT"}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header's name
_Q, _q, _D, _I = struct.Struct("<Q"), struct.Struct("<q"), struct.Struct("<d"), struct.Struct("<I")
_BYTE = [bytes((value,)) for value in range(128)]
_logger = logging.getLogger(__name__)


class SpanData(NamedTuple):
    """An ended span, as exported."""

    name: str
    kind: int  # SERVER, CLIENT
    trace_id: int
    span_id: int
    parent_id: int  # 0: none
    parent_remote: bool  # the parent is the caller's
    tracestate: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    error: bool


class Point(NamedTuple):
    """One attribute set's counts of an instrument since the point's start: a counter's value
    is `counted`."""

    attributes: dict[str, str]
    counted: int
    total: float
    buckets: list[int]
    low: float
    high: float


# Encoding. A field is its tag (number << 3 | wire type), then its value: a length-delimited
# one (string, bytes, message) its length as a varint first.


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _value(value: Any) -> bytes | None:
    """An AnyValue: string 1, bool 2, int 3, double 4, array 5; None for another type (and for
    None, which a gateway may send as a token count): the attribute is left out, as the SDK
    does."""
    if isinstance(value, str):  # a lone surrogate (JSON allows one) would be invalid UTF-8
        return _field(b"\x0a", value.encode(errors="replace"))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + _D.pack(value)
    if isinstance(value, (list, tuple)):
        items = [_field(b"\x0a", item) for item in map(_value, value) if item is not None]
        return _field(b"\x2a", b"".join(items))
    return None


_keys: dict[str, bytes] = {}  # KeyValue.key, encoded once: the names are this service's


def _attributes(tag: bytes, attributes: Mapping[str, Any]) -> bytes:
    """KeyValue messages (key 1, value 2), each in field `tag` of the message holding them."""
    out = []
    for key, value in attributes.items():
        if (encoded := _value(value)) is None:
            continue
        if (name := _keys.get(key)) is None:
            name = _keys[key] = _field(b"\x0a", key.encode())
        out.append(_field(tag, name + _field(b"\x12", encoded)))
    return b"".join(out)


def resource(attributes: Mapping[str, Any]) -> bytes:
    """ResourceSpans/ResourceMetrics.resource (1): Resource.attributes (1)."""
    return _field(b"\x0a", _attributes(b"\x0a", attributes))


def scope(name: str, version: str) -> bytes:
    """ScopeSpans/ScopeMetrics.scope (1): InstrumentationScope name (1), version (2)."""
    return _field(b"\x0a", _field(b"\x0a", name.encode()) + _field(b"\x12", version.encode()))


def _span(span: SpanData) -> bytes:
    """ScopeSpans.spans (2): a Span."""
    parts = [
        b"\x0a\x10", span.trace_id.to_bytes(16, "big"), b"\x12\x08", span.span_id.to_bytes(8, "big")
    ]  # fmt: skip
    if span.tracestate:
        parts.append(_field(b"\x1a", span.tracestate.encode()))
    if span.parent_id:
        parts += (b"\x22\x08", span.parent_id.to_bytes(8, "big"))
    parts += (
        _field(b"\x2a", span.name.encode()), b"\x30", _BYTE[span.kind],
        b"\x39", _Q.pack(span.start_ns), b"\x41", _Q.pack(span.end_ns),
        _attributes(b"\x4a", span.attributes),
    )  # fmt: skip
    if span.error:
        parts.append(b"\x7a\x02\x18\x02")  # status (15): code (3) ERROR
    # flags (16, fixed32): whether the parent is remote is known (0x100), and if it is (0x200)
    parts += (b"\x85\x01", _I.pack(0x300 if span.parent_remote else 0x100))
    return _field(b"\x12", b"".join(parts))


def traces_request(resource: bytes, scope: bytes, spans: Iterable[SpanData]) -> bytes:
    """An ExportTraceServiceRequest: one ResourceSpans (1) of one ScopeSpans (2)."""
    return _field(b"\x0a", resource + _field(b"\x12", scope + b"".join(map(_span, spans))))


def metric(
    name: str, description: str, unit: str, bounds: tuple[float, ...], points: Iterable[Point],
    start_ns: int, now_ns: int, delta: bool = False,
) -> bytes:  # fmt: skip
    """ScopeMetrics.metrics (2): a histogram with `bounds`, else a monotonic sum of whole
    numbers; cumulative, or `delta` (the counts from `start_ns` to `now_ns` only)."""
    times = b"\x11" + _Q.pack(start_ns) + b"\x19" + _Q.pack(now_ns)
    temporality = b"\x10\x01" if delta else b"\x10\x02"  # aggregation_temporality (2)
    if not bounds:  # Sum (7): NumberDataPoint attributes 7, as_int 6; cumulative, monotonic
        data = b"".join(
            _field(b"\x0a", _attributes(b"\x3a", point.attributes) + times
                   + b"\x31" + _q.pack(point.counted))
            for point in points
        )  # fmt: skip
        body = _field(b"\x3a", data + temporality + b"\x18\x01")
    else:  # Histogram (9): count 4, sum 5, bucket_counts 6, explicit_bounds 7, min 11, max 12
        explicit = _field(b"\x3a", b"".join(map(_D.pack, bounds)))
        data = b"".join(
            _field(b"\x0a", _attributes(b"\x4a", point.attributes) + times
                   + b"\x21" + _Q.pack(point.counted) + b"\x29" + _D.pack(point.total)
                   + _field(b"\x32", b"".join(map(_Q.pack, point.buckets))) + explicit
                   + b"\x59" + _D.pack(point.low) + b"\x61" + _D.pack(point.high))
            for point in points
        )  # fmt: skip
        body = _field(b"\x4a", data + temporality)
    head = _field(b"\x0a", name.encode()) + _field(b"\x12", description.encode())
    return _field(b"\x12", head + _field(b"\x1a", unit.encode()) + body)


def metrics_request(resource: bytes, scope: bytes, metrics: Iterable[bytes]) -> bytes:
    """An ExportMetricsServiceRequest: one ResourceMetrics (1) of one ScopeMetrics (2)."""
    return _field(b"\x0a", resource + _field(b"\x12", scope + b"".join(metrics)))


# Settings.


def resource_attributes(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """This process's resource: OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME (else the project's
    name), the project's version, a new `service.instance.id` (per process: a forked worker asks
    again)."""
    found: dict[str, Any] = {}
    pairs = environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
    for pair in filter(None, (part.strip() for part in pairs)):
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise ConfigError("OTEL_RESOURCE_ATTRIBUTES must be name=value pairs separated by "
                              "commas, such as deployment.environment.name=production")  # fmt: skip
        found[unquote(key).strip()] = unquote(value).strip()
    if name := environ.get("OTEL_SERVICE_NAME", "").strip():
        found["service.name"] = name
    found.setdefault("service.name", CLIENT_NAME)
    found.setdefault("service.version", __version__)
    # Not OpenTelemetry's SDK: the conventions say to name the implementation that exports.
    sdk = {"telemetry.sdk.language": "python", "telemetry.sdk.name": f"{__package__}.otlp_wire",
           "telemetry.sdk.version": __version__}  # fmt: skip
    return {**found, **sdk, "service.instance.id": str(uuid.uuid4())}


def headers(signal: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_<signal>_HEADERS, else OTEL_EXPORTER_OTLP_HEADERS: name=value pairs,
    values URL-encoded; `ConfigError` names the variable (never the value: it may be a key)."""
    name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS"
    name = name if environ.get(name, "").strip() else "OTEL_EXPORTER_OTLP_HEADERS"
    found = {}
    for pair in filter(None, (part.strip() for part in environ.get(name, "").split(","))):
        key, equals, value = pair.partition("=")
        key, value = key.strip(), unquote(value).strip()
        if not (equals and _TOKEN.fullmatch(key) and value.isascii() and value.isprintable()):
            raise ConfigError(f"{name} must be name=value pairs separated by commas, such as "
                              "x-api-key=KEY (ASCII; URL-encode a comma in a value)")  # fmt: skip
        found[key.lower()] = value
    return found


def _setting(environ: Mapping[str, str], signal: str, name: str) -> tuple[str, str]:
    """(variable, value) of the signal's own setting, else the shared one."""
    own = f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}"
    used = own if environ.get(own, "").strip() else f"OTEL_EXPORTER_OTLP_{name}"
    return used, environ.get(used, "").strip()


def delta_temporality(environ: Mapping[str, str] = os.environ) -> bool:
    """OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: cumulative (the default), or delta /
    lowmemory, which for this service's counters and histograms both mean delta."""
    name = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    value = environ.get(name, "").strip().lower() or "cumulative"
    if value not in ("cumulative", "delta", "lowmemory"):
        raise ConfigError(f"{name} must be cumulative, delta or lowmemory")
    return value != "cumulative"


def number(environ: Mapping[str, str], name: str, default: float) -> float:
    """An OTEL_* number (`telemetry.signals` checked it is one, and an interval above 0)."""
    return float(environ.get(name, "").strip() or default)


# Sending.


class Sender:
    """POSTs one signal's requests to the collector, each within the exporter's timeout and the
    signal's export timeout (OTEL_BSP_EXPORT_TIMEOUT, OTEL_METRIC_EXPORT_TIMEOUT: 30000 ms)."""

    def __init__(self, signal: str, environ: Mapping[str, str] = os.environ) -> None:
        self.signal = signal
        own = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
        shared = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip().removesuffix("/")
        self.url = own or f"{shared}/v1/{signal}"
        self.where = urlsplit(self.url).netloc.rpartition("@")[2]  # for the logs: no password
        export_timeout_s = number(environ, EXPORT_TIMEOUTS[signal], 30000) / 1000
        self.timeout_s = min(float(_setting(environ, signal, "TIMEOUT")[1] or 10), export_timeout_s)
        variable, compression = _setting(environ, signal, "COMPRESSION")
        if compression.lower() not in ("", "none", "gzip"):
            raise ConfigError(f"{variable} must be gzip or none")
        self.gzip = compression.lower() == "gzip"
        self.headers = {
            "content-type": "application/x-protobuf", "user-agent": f"{CLIENT_NAME}/{__version__}",
            **({"content-encoding": "gzip"} if self.gzip else {}), **headers(signal, environ),
        }  # fmt: skip
        self.verify = self._tls(environ)
        self._client, self._pid = self._new_client(), os.getpid()  # made now, not in a request

    def _tls(self, environ: Mapping[str, str]) -> ssl.SSLContext | bool:
        """The collector's CA and this client's certificate, when named; else the system's CAs
        for https, and none loaded for plain http (tens of milliseconds of CPU, for nothing)."""
        settings = [_setting(environ, self.signal, name)
                    for name in ("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY")]  # fmt: skip
        (ca_name, ca), (cert_name, cert), (_, key) = settings
        if not (ca or cert):
            return self.url.lower().startswith("https:")
        try:
            context = ssl.create_default_context(cafile=ca or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{ca_name}: {exc.strerror or exc} (a PEM file of CAs)") from None
        if cert:
            try:
                context.load_cert_chain(cert, key or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"{cert_name} and _CLIENT_KEY: {exc.strerror or exc} "
                                  "(PEM files of a certificate and its key)") from None  # fmt: skip
        return context

    def _new_client(self) -> httpx2.Client:
        return httpx2.Client(headers=self.headers, verify=self.verify, timeout=None)

    def client(self) -> httpx2.Client:
        """One per process: a forked worker must not share its parent's connections."""
        if self._pid != os.getpid():
            self._client, self._pid = self._new_client(), os.getpid()
        return self._client

    def send(self, body: bytes, what: str) -> bool:
        """POST `body`, retried within the timeout on a retryable answer or a connection
        failure; False, and a log line saying why and what was dropped, if it did not pass."""
        deadline = time.monotonic() + self.timeout_s
        # Level 1: most of what 9 saves on protobuf, at a fraction of the CPU.
        payload = gzip.compress(body, compresslevel=1) if self.gzip else body
        for attempt in itertools.count(1):
            delay = None
            try:
                left = max(deadline - time.monotonic(), 0.001)
                response = self.client().post(self.url, content=payload, timeout=left)
            except httpx2.HTTPError as exc:  # its text may hold the URL: only its kind
                problem = type(exc).__name__
            else:
                if response.status_code < 300:
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code not in RETRIED:
                    break
                delay = retry.retry_after_s(response.headers)
            pause = retry.backoff_s(attempt) if delay is None else max(delay, 0.0)  # a past date
            if time.monotonic() + pause >= deadline:
                break
            time.sleep(pause)
        _logger.warning("OTLP %s export to %s failed (%s): %s dropped",
                        self.signal, self.where, problem, what)  # fmt: skip
        return False


class SpanQueue:
    """Ended spans, sent in batches by a thread of their own: every OTEL_BSP_SCHEDULE_DELAY ms,
    or once a batch is full. `add` is what a request pays: an append."""

    def __init__(
        self, send: Callable[[list[SpanData]], object], environ: Mapping[str, str] = os.environ
    ) -> None:
        self._send = send
        self.delay_s = number(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.limit = int(number(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048))
        self.batch = int(number(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
        if not 0 < self.batch <= self.limit:
            raise ConfigError("OTEL_BSP_MAX_EXPORT_BATCH_SIZE must be 1 to OTEL_BSP_MAX_QUEUE_SIZE "
                              f"({self.limit})")  # fmt: skip
        self.restart()

    def restart(self) -> None:
        """Start (again, in a forked worker: what its parent queued is its parent's)."""
        self._queue: collections.deque[SpanData] = collections.deque()
        self.dropped = 0
        self._wake, self._stopping = threading.Event(), False
        self.thread = threading.Thread(target=self._run, name="OtlpSpans", daemon=True)
        self.thread.start()

    def add(self, span: SpanData) -> None:
        queue = self._queue
        if len(queue) >= self.limit:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) >= self.batch and not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.delay_s)
            self._wake.clear()
            stopping, queue = self._stopping, self._queue
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), self.batch))]
                try:
                    self._send(batch)
                except Exception:  # a bug of ours: said, and the thread goes on
                    _logger.exception("OTLP spans not sent: %d dropped", len(batch))
            if dropped := self.dropped:
                self.dropped -= dropped
                _logger.warning("%d spans dropped: more ended than were sent "
                                "(OTEL_BSP_MAX_QUEUE_SIZE, %d)", dropped, self.limit)  # fmt: skip
            if stopping:
                return

    def stop(self) -> None:
        """Send what is queued, then end the thread (`thread.join` waits for it)."""
        self._stopping = True
        self._wake.set()
