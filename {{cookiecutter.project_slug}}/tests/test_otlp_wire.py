"""OTLP/HTTP as `otlp_wire.py` writes and sends it: what it encodes, decoded by
opentelemetry-proto itself; what reaches a collector (`otlp_receiver.py`) as the standard
variables say (endpoints, headers, gzip), what is retried and what is dropped, and said."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from {{ cookiecutter.package_name }} import otlp_wire
from {{ cookiecutter.package_name }}.otlp_wire import Point, Sender, SpanData, SpanQueue
from {{ cookiecutter.package_name }}.settings import ConfigError

from .otlp_receiver import OtlpReceiver, _attributes, wait_for

WIRE_LOGGER = "{{ cookiecutter.package_name }}.otlp_wire"
RESOURCE = otlp_wire.resource({"service.name": "checkout", "service.instance.id": "i-1"})
SCOPE = otlp_wire.scope("{{ cookiecutter.package_name }}", "1.2.3")
ATTRIBUTES = {
    "text": "模型不存在 (model not found)",
    "yes": True,
    "no": False,
    "zero": 0,
    "big": 2**40,
    "negative": -7,
    "ratio": 0.25,
    "reasons": ["stop", "length"],
}


def span(number: int = 1, **fields: object) -> SpanData:
    values: dict[str, object] = {
        "name": "chat gpt-4o-mini", "kind": otlp_wire.CLIENT, "trace_id": 2**127 + number,
        "span_id": 2**63 + number, "parent_id": 0, "parent_remote": False, "tracestate": "",
        "start_ns": 1_700_000_000_000_000_000, "end_ns": 1_700_000_000_250_000_000,
        "attributes": {"n": number}, "error": False,
    }  # fmt: skip
    return SpanData(**{**values, **fields})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as otlp:
        yield otlp


@pytest.fixture
def otlp(receiver: OtlpReceiver) -> OtlpReceiver:
    receiver.reset()
    return receiver


@pytest.mark.parametrize(
    ("parent_id", "remote", "flags"),
    [
        pytest.param(0, False, 0x100, id="root"),
        pytest.param(5, False, 0x100, id="local-parent"),
        pytest.param(5, True, 0x300, id="remote-parent"),
    ],
)
def test_a_span_decodes_as_it_was_made(parent_id: int, remote: bool, flags: int) -> None:
    made = span(
        kind=otlp_wire.SERVER, parent_id=parent_id, parent_remote=remote,
        tracestate="vendor=opaque", attributes=ATTRIBUTES, error=True,
    )  # fmt: skip
    body = otlp_wire.traces_request(RESOURCE, SCOPE, [made, span(2)])
    [resource_spans] = ExportTraceServiceRequest.FromString(body).resource_spans
    assert _attributes(resource_spans.resource.attributes) == {
        "service.name": "checkout", "service.instance.id": "i-1"
    }  # fmt: skip
    [scope_spans] = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == (
        "{{ cookiecutter.package_name }}", "1.2.3"
    )  # fmt: skip
    first, second = scope_spans.spans
    assert int.from_bytes(first.trace_id, "big") == made.trace_id
    assert int.from_bytes(first.span_id, "big") == made.span_id
    assert first.parent_span_id == (parent_id.to_bytes(8, "big") if parent_id else b"")
    assert (first.name, first.kind, first.trace_state) == (made.name, 2, "vendor=opaque")
    assert (first.start_time_unix_nano, first.end_time_unix_nano) == (made.start_ns, made.end_ns)
    assert _attributes(first.attributes) == ATTRIBUTES
    assert (first.status.code, first.flags) == (2, flags)  # STATUS_CODE_ERROR
    assert (second.status.code, second.kind, _attributes(second.attributes)) == (0, 3, {"n": 2})


def test_a_histogram_and_a_counter_decode_as_counted() -> None:
    seconds = otlp_wire.metric(
        "gen_ai.client.operation.duration", "GenAI operation duration.", "s", (0.5, 1.0),
        [Point({"gen_ai.request.model": "gpt-4o-mini"}, 3, 2.75, [1, 1, 1], 0.25, 1.5)],
        start_ns=10, now_ns=20,
    )  # fmt: skip
    fallbacks = otlp_wire.metric(
        "alltkn.fallbacks", "Fallbacks taken.", "{fallback}", (),
        [Point({"to": "gpt-4o"}, 2**33, 0.0, [0], 0.0, 0.0)], start_ns=10, now_ns=20,
    )  # fmt: skip
    body = otlp_wire.metrics_request(RESOURCE, SCOPE, [seconds, fallbacks])
    [resource_metrics] = ExportMetricsServiceRequest.FromString(body).resource_metrics
    histogram, counter = resource_metrics.scope_metrics[0].metrics

    assert (histogram.name, histogram.unit, histogram.description) == (
        "gen_ai.client.operation.duration", "s", "GenAI operation duration."
    )  # fmt: skip
    assert histogram.histogram.aggregation_temporality == AggregationTemporality.Value(
        "AGGREGATION_TEMPORALITY_CUMULATIVE"
    )
    [point] = histogram.histogram.data_points
    assert _attributes(point.attributes) == {"gen_ai.request.model": "gpt-4o-mini"}
    assert (point.start_time_unix_nano, point.time_unix_nano) == (10, 20)
    assert (point.count, point.sum, point.min, point.max) == (3, 2.75, 0.25, 1.5)
    assert (list(point.bucket_counts), list(point.explicit_bounds)) == ([1, 1, 1], [0.5, 1.0])

    assert (counter.name, counter.sum.is_monotonic) == ("alltkn.fallbacks", True)
    assert counter.sum.aggregation_temporality == histogram.histogram.aggregation_temporality
    [value] = counter.sum.data_points
    assert (value.as_int, _attributes(value.attributes)) == (2**33, {"to": "gpt-4o"})


@pytest.mark.parametrize(
    ("environ", "url"),
    [
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "http://c:4318/v1/traces",
                     id="shared"),
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/otlp/"},
                     "http://c:4318/otlp/v1/traces", id="shared-with-path"),
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                      "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t:443/spans"},
                     "https://t:443/spans", id="own-as-is"),
    ],
)  # fmt: skip
def test_the_endpoint_is_the_standard_variables(environ: dict[str, str], url: str) -> None:
    assert Sender("traces", environ).url == url


def test_headers_and_gzip_reach_the_collector(otlp: OtlpReceiver) -> None:
    sender = Sender("traces", otlp.env(
        OTEL_EXPORTER_OTLP_HEADERS="x-team=search,x-api-key=a%2Cb",
        OTEL_EXPORTER_OTLP_COMPRESSION="gzip",
    ))  # fmt: skip
    body = otlp_wire.traces_request(RESOURCE, SCOPE, [span()])
    assert sender.send(body, "1 spans")
    assert otlp.sent() == body  # decompressed by the collector
    [headers] = otlp.headers
    assert (headers["x-team"], headers["x-api-key"]) == ("search", "a,b")  # URL-decoded
    assert (headers["content-encoding"], headers["content-type"]) == (
        "gzip", "application/x-protobuf"
    )  # fmt: skip
    assert [received.attributes for received in otlp.spans()] == [{"n": 1}]


def test_a_signal_s_own_headers_replace_the_shared_ones() -> None:
    environ = {"OTEL_EXPORTER_OTLP_HEADERS": "a=1", "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "b=2"}
    assert (otlp_wire.headers("traces", environ), otlp_wire.headers("metrics", environ)) == (
        {"a": "1"}, {"b": "2"}
    )  # fmt: skip


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_a_retryable_answer_is_retried_and_the_spans_arrive_once(
    otlp: OtlpReceiver, status: int
) -> None:
    # a Retry-After in the past (a skewed clock) is no pause, then the backoff's
    otlp.refusals += [(status, {"Retry-After": "-3"}), (status, {})]
    sender = Sender("traces", otlp.env())
    assert sender.send(otlp_wire.traces_request(RESOURCE, SCOPE, [span()]), "1 spans")
    assert len(otlp.headers) == 3
    assert len(otlp.spans()) == 1


def test_a_refused_export_is_dropped_at_once_and_said_without_the_headers(
    otlp: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    otlp.refusals.append((400, {}))
    sender = Sender("traces", otlp.env(OTEL_EXPORTER_OTLP_HEADERS="x-api-key=collector-secret"))
    with caplog.at_level(logging.WARNING, WIRE_LOGGER):
        assert not sender.send(otlp_wire.traces_request(RESOURCE, SCOPE, [span()]), "1 spans")
    assert len(otlp.headers) == 1  # not retried
    where = otlp.url.removeprefix("http://")
    assert caplog.messages == [f"OTLP traces export to {where} failed (HTTP 400): 1 spans dropped"]
    assert "collector-secret" not in caplog.text


def test_a_collector_that_keeps_failing_is_given_up_on_within_the_timeout(
    otlp: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    otlp.refusals += [(503, {})] * 20
    sender = Sender("metrics", otlp.env(OTEL_EXPORTER_OTLP_TIMEOUT="1"))
    with caplog.at_level(logging.WARNING, WIRE_LOGGER):
        assert not sender.send(b"", "2 metrics")
    assert 2 <= len(otlp.headers) < 20  # retried, then given up (pauses from 0.5 s)
    assert caplog.messages[-1].endswith("failed (HTTP 503): 2 metrics dropped")


@pytest.mark.parametrize(
    ("environ", "timeout_s"),
    [
        pytest.param({}, 10.0, id="default"),
        pytest.param({"OTEL_EXPORTER_OTLP_TIMEOUT": "2.5"}, 2.5, id="seconds"),
        pytest.param({"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "4", "OTEL_EXPORTER_OTLP_TIMEOUT": "2"},
                     4.0, id="own"),
        pytest.param({"OTEL_METRIC_EXPORT_TIMEOUT": "1500"}, 1.5, id="export-timeout-ms"),
    ],
)  # fmt: skip
def test_an_export_is_bounded_by_the_standard_timeouts(
    environ: dict[str, str], timeout_s: float
) -> None:
    sender = Sender("metrics", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **environ})
    assert sender.timeout_s == timeout_s


def test_spans_past_a_full_queue_are_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sending, release, batches = threading.Event(), threading.Event(), []

    def send(batch: list[SpanData]) -> None:
        batches.append([sent.attributes["n"] for sent in batch])
        sending.set()
        release.wait(10)

    environ = {"OTEL_BSP_MAX_QUEUE_SIZE": "2", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1",
               "OTEL_BSP_SCHEDULE_DELAY": "60000"}  # fmt: skip
    with caplog.at_level(logging.WARNING, WIRE_LOGGER):
        queue = SpanQueue(send, environ)
        queue.add(span(1))  # a full batch: sent now, and the sending holds the thread
        wait_for(sending.is_set)
        for number in (2, 3, 4, 5):  # 2 and 3 fill the queue
            queue.add(span(number))
        release.set()
        queue.stop()
        queue.thread.join(10)
    assert batches == [[1], [2], [3]]
    assert caplog.messages == [
        "2 spans dropped: more ended than were sent (OTEL_BSP_MAX_QUEUE_SIZE, 2)"
    ]


def test_stopped_the_queue_sends_what_it_holds() -> None:
    batches: list[int] = []
    queue = SpanQueue(
        lambda batch: batches.append(len(batch)), {"OTEL_BSP_SCHEDULE_DELAY": "60000"}
    )
    for number in range(700):
        queue.add(span(number))
    queue.stop()
    queue.thread.join(10)
    assert sum(batches) == 700
    assert max(batches) <= 512


def test_the_resource_is_the_standard_variables_and_one_instance_per_process() -> None:
    environ = {
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod,team=a%20b,service.name=x",
        "OTEL_SERVICE_NAME": "checkout",
    }
    found = otlp_wire.resource_attributes(environ)
    assert found["service.name"] == "checkout"  # OTEL_SERVICE_NAME wins
    assert (found["deployment.environment.name"], found["team"]) == ("prod", "a b")
    assert found["telemetry.sdk.language"] == "python"
    assert (
        found["service.instance.id"]
        != otlp_wire.resource_attributes(environ)["service.instance.id"]
    )
    defaults = otlp_wire.resource_attributes({})
    assert defaults["service.name"] == "{{ cookiecutter.project_slug }}"


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        pytest.param({"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "br"},
                     "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION must be gzip or none", id="brotli"),
        pytest.param({"OTEL_EXPORTER_OTLP_HEADERS": "x-key=a\nb"},
                     "OTEL_EXPORTER_OTLP_HEADERS must be name=value pairs", id="header-newline"),
        pytest.param({"OTEL_EXPORTER_OTLP_HEADERS": "x-key=clé"},
                     "OTEL_EXPORTER_OTLP_HEADERS must be name=value pairs", id="header-not-ascii"),
        pytest.param({"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/nonexistent.pem"},
                     "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and _CLIENT_KEY:", id="client-cert"),
    ],
)  # fmt: skip
def test_a_bad_exporter_setting_is_one_line_naming_it(
    environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        Sender("traces", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **environ})
    assert str(refused.value).startswith(problem)
    assert "\n" not in str(refused.value)


def test_a_value_the_protocol_cannot_carry_is_left_out_not_the_span() -> None:
    """A gateway may send null for a token count, or a lone surrogate in a model name."""
    attributes = {"tokens": None, "thing": object(), "kept": 1, "model": "gpt-\ud800x"}
    body = otlp_wire.traces_request(RESOURCE, SCOPE, [span(attributes=attributes)])
    [sent] = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans
    assert _attributes(sent.attributes) == {"kept": 1, "model": "gpt-?x"}


def test_a_failed_batch_is_said_and_the_queue_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[int] = []

    def send(batch: list[SpanData]) -> None:
        sent.append(len(batch))
        if len(sent) == 1:
            raise RuntimeError("a bug")

    environ = {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1", "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    with caplog.at_level(logging.WARNING, WIRE_LOGGER):
        queue = SpanQueue(send, environ)
        queue.add(span(1))
        wait_for(lambda: caplog.messages)
        queue.add(span(2))
        queue.stop()
        queue.thread.join(10)
    assert caplog.messages == ["OTLP spans not sent: 1 dropped"]
    assert sent == [1, 1]
