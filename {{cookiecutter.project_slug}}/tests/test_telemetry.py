"""Spans and metrics over OTLP (`telemetry.py`, `otlp.py`), received by a real OTLP/HTTP
endpoint on loopback (`otlp_receiver.py`): a CLIENT span per upstream attempt, its traceparent
at the gateway, the GenAI attributes, the metrics under the conventions' names, units and
buckets; nothing of a prompt, an answer, an end user or a key in any byte exported; and, unset,
not even the exporting modules imported. The web variants' server spans have tests of their own."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from {{ cookiecutter.package_name }} import metrics, telemetry
from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.settings import ConfigError, load_settings

from .conftest import ANSWER, HELLO, SENTINEL_KEY, Driver, ask, failure
from .fake_gateway import DEFAULT_DELTAS, FakeGateway
from .otlp_receiver import OtlpReceiver, Span

PACKAGE = "{{ cookiecutter.package_name }}"
STREAM = [pytest.param(False, id="complete"), pytest.param(True, id="stream")]
# What only exporting imports (otlp.py, otlp_wire.py), and what only the tests install.
# (FastAPI and redis import opentelemetry's API and SDK if installed; the project has neither.)
EXPORT_MODULES = (f"{PACKAGE}.otlp", "opentelemetry.proto")


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def exporting(
    otlp: OtlpReceiver, gateway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[OtlpReceiver]:
    """This process exporting to `otlp` (with a fallback model); `telemetry.stop()` sends
    what is pending."""
    otlp.reset()
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    for name, value in otlp.env().items():
        monkeypatch.setenv(name, value)
    telemetry.start(load_settings())
    yield otlp
    telemetry.stop()


def exported(otlp: OtlpReceiver) -> list[Span]:
    """The upstream spans, once everything pending was exported, in the order they started."""
    telemetry.stop()
    upstream = [span for span in otlp.spans() if span.kind == "CLIENT"]
    return sorted(upstream, key=lambda span: span.start_ns)


@contextmanager
def caller_span(sampled: bool = True, **headers: str) -> Iterator[tuple[str, str]]:
    """Inside the SERVER span of a request that continues a caller's trace (as the web variants
    make one): (the caller's trace id, the server span's id)."""
    trace_id = secrets.token_hex(16)
    headers["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-{'01' if sampled else '00'}"
    assert telemetry.tracing is not None
    request = telemetry.tracing.server_span("POST", "http", "/v1/chat", headers)
    try:
        yield trace_id, f"{request.span.span_id:016x}"
    finally:
        request.detach()


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The command line as a process, with `env` added to this environment."""
    command = [sys.executable, *args]
    environ = {**os.environ, **env}
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("stream", STREAM)
def test_an_upstream_call_is_a_client_span_whose_traceparent_the_gateway_gets(
    driver: Driver, exporting: OtlpReceiver, gateway: FakeGateway, stream: bool
) -> None:
    chat, request = driver.chat(), ask(max_tokens=50, temperature=0.5)
    with caller_span() as (trace_id, parent_id):
        result = chat.stream(request) if stream else chat.complete(request)

    [span] = exported(exporting)
    assert (span.name, span.kind, span.status) == ("chat gpt-4o-mini", "CLIENT", "UNSET")
    assert (span.trace_id, span.parent_span_id) == (trace_id, parent_id)
    assert span.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.usage.input_tokens": len(HELLO.split()),
        "gen_ai.usage.output_tokens": len(DEFAULT_DELTAS),
        "gen_ai.response.finish_reasons": ["stop"],
        "server.address": "127.0.0.1",
        "server.port": gateway.port,
        "alltkn.request_id": result.request_id,
        "alltkn.upstream_request_id": result.upstream_request_id,
    }
    [sent] = gateway.requests
    assert span.named_by(sent.headers["traceparent"])
    assert span.resource["service.name"] == "{{ cookiecutter.project_slug }}"


@pytest.mark.parametrize("stream", STREAM)
def test_a_failed_attempt_ends_its_span_with_the_category_as_error_type(
    driver: Driver, exporting: OtlpReceiver, stream: bool
) -> None:
    failure(driver.chat(), "fake-error-429", stream=stream)
    [span] = exported(exporting)
    assert (span.status, span.attributes["error.type"]) == ("ERROR", "rate_limited")
    assert "gen_ai.usage.input_tokens" not in span.attributes


@pytest.mark.parametrize("stream", STREAM)
def test_each_attempt_is_a_span_of_its_own_under_the_same_parent(
    driver: Driver, exporting: OtlpReceiver, gateway: FakeGateway, stream: bool
) -> None:
    chat, request = driver.chat(), ask(model="fake-error-503-model")
    with caller_span() as (_, parent_id):
        result = chat.stream(request) if stream else chat.complete(request)

    assert result.model == "gpt-4o"  # the fallback answered
    first, second = exported(exporting)
    assert (first.name, second.name) == ("chat fake-error-503-model", "chat gpt-4o")
    assert first.attributes["error.type"] == "model_not_found"
    assert "error.type" not in second.attributes
    assert first.parent_span_id == second.parent_span_id == parent_id
    to_first, to_second = (request.headers["traceparent"] for request in gateway.requests)
    assert first.named_by(to_first)
    assert second.named_by(to_second)


def test_a_trace_the_caller_did_not_sample_goes_on_to_the_gateway_and_is_not_exported(
    driver: Driver, exporting: OtlpReceiver, gateway: FakeGateway
) -> None:
    """The default sampler (parentbased_always_on) follows the caller's W3C flags; their
    tracestate goes on with the trace; the metrics count every call, sampled or not."""
    chat = driver.chat()
    with caller_span(sampled=False, tracestate="vendor=opaque") as (trace_id, _):
        chat.complete(ask())
    chat.complete(ask())  # a trace of its own: sampled

    [span] = exported(exporting)
    unsampled, sampled = (request.headers for request in gateway.requests)
    assert unsampled["traceparent"].startswith(f"00-{trace_id}-")
    assert unsampled["traceparent"].endswith("-00")
    assert unsampled["tracestate"] == "vendor=opaque"
    assert span.named_by(sampled["traceparent"])
    assert "tracestate" not in sampled
    [duration] = exporting.points("gen_ai.client.operation.duration")
    assert duration.count == 2


def test_a_consumer_that_leaves_ends_the_span_as_a_client_disconnect(
    driver: Driver, exporting: OtlpReceiver
) -> None:
    driver.chat().stream(ask(model="fake-slow"), stop_after=1)
    [span] = exported(exporting)
    assert (span.status, span.attributes["error.type"]) == ("ERROR", "client_disconnect")


def test_the_metrics_go_out_under_the_conventions_names_units_and_buckets(
    driver: Driver, exporting: OtlpReceiver
) -> None:
    chat = driver.chat()
    chat.complete(ask())
    chat.stream(ask())
    failure(chat, "fake-error-401", stream=False)
    chat.stream(ask(model="fake-slow"), stop_after=1)
    telemetry.stop()

    durations = exporting.points("gen_ai.client.operation.duration")
    by_error = {point.attributes.get("error.type"): point for point in durations}
    assert {error: point.count for error, point in by_error.items()} == {
        None: 2,
        "auth": 1,
        "client_disconnect": 1,
    }
    assert by_error[None].attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini",
        "server.address": "127.0.0.1",
    }
    assert by_error["auth"].attributes["gen_ai.request.model"] == "other"  # not configured
    tokens = exporting.points("gen_ai.client.token.usage")
    of_answers = {
        point.attributes["gen_ai.token.type"]: point.value
        for point in tokens
        if point.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    }
    assert of_answers == {"input": 2 * len(HELLO.split()), "output": 2 * len(DEFAULT_DELTAS)}
    first_chunks = exporting.points("gen_ai.client.operation.time_to_first_chunk")
    assert sorted(point.count for point in first_chunks) == [1, 1]  # the two streams
    for instrument, points in (
        (metrics.DURATION, durations),
        (metrics.TOKEN_USAGE, tokens),
        (metrics.TIME_TO_FIRST_CHUNK, first_chunks),
    ):
        assert {(point.unit, point.bounds) for point in points} == {
            (instrument.unit, instrument.buckets)
        }
    [left] = exporting.points("alltkn.client.disconnects")
    assert (left.unit, left.value, left.attributes) == (
        "{call}",
        1,
        {"gen_ai.request.model": "other"},
    )


@pytest.mark.parametrize("preference", ["delta", "lowmemory"])
def test_delta_temporality_sends_each_call_once(
    driver: Driver, exporting: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, preference: str
) -> None:
    """What a backend that wants deltas (Datadog, say) is sent: each interval's counts, none
    twice, nothing for an interval without calls (cumulative would resend every total)."""
    telemetry.stop()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", preference)
    telemetry.start(load_settings())
    chat, name = driver.chat(), metrics.DURATION.name
    chat.complete(ask())
    exporting.wait_for(lambda: exporting.every_point(name))
    chat.complete(ask())
    telemetry.stop()
    points = exporting.every_point(name)
    assert [(point.delta, point.count) for point in points] == [(True, 1), (True, 1)]


def test_no_prompt_answer_end_user_or_key_is_in_any_byte_exported(
    driver: Driver, exporting: OtlpReceiver
) -> None:
    prompt, user, task = (f"{kind}-sentinel-{secrets.token_hex(6)}" for kind in "ptu")
    chat = driver.chat()
    chat.complete(ask(prompt, user=user, task=task))
    chat.stream(ask(prompt, user=user, task=task))
    failure(chat, "fake-error-400", stream=True)
    telemetry.stop()

    sent = exporting.sent()
    assert b"gen_ai.client.operation.duration" in sent  # the metrics, too
    for secret in (prompt, user, task, ANSWER, SENTINEL_KEY):
        assert secret.encode() not in sent


def test_unset_nothing_that_exports_is_even_imported(
    gateway_env: dict[str, str], gateway: FakeGateway
) -> None:
    """A whole command, streamed and not, with every import it makes listed (-X importtime)."""
    for mode in (["--no-stream"], []):
        done = run("-X", "importtime", "-m", PACKAGE, "ask", "hi", *mode)
        assert done.returncode == 0, done.stderr
        imported = [
            line.rsplit("|", 1)[-1].strip()
            for line in done.stderr.splitlines()
            if line.startswith("import time:")
        ]
        assert f"{PACKAGE}.telemetry" in imported  # the switch itself
        assert [name for name in imported if name.startswith(EXPORT_MODULES)] == []
    assert "traceparent" not in gateway.requests[0].headers


def test_the_cli_exports_its_calls_before_it_exits(
    gateway_env: dict[str, str], otlp: OtlpReceiver, gateway: FakeGateway
) -> None:
    """Nothing would be exported for a minute: what arrives was sent at the exit."""
    otlp.reset()
    env = otlp.env(OTEL_BSP_SCHEDULE_DELAY="60000", OTEL_METRIC_EXPORT_INTERVAL="60000")
    done = run("-m", PACKAGE, "ask", "hi", **env)
    assert (done.returncode, done.stdout) == (0, ANSWER + "\n"), done.stderr

    [span] = otlp.spans()
    assert (span.name, span.kind, span.parent_span_id) == ("chat gpt-4o-mini", "CLIENT", "")
    assert span.named_by(gateway.requests[0].headers["traceparent"])
    [duration] = otlp.points("gen_ai.client.operation.duration")
    assert duration.count == 1


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        pytest.param(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "collector.internal:4318",
            "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL",
            id="no-scheme",
        ),
        pytest.param(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector.internal:port/v1/traces",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT must be an http:// or https:// URL",
            id="bad-port",
        ),
        pytest.param(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "grpc",
            "OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf",
            id="grpc",
        ),
        pytest.param(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-api-key otlp-header-secret-1",
            "OTEL_EXPORTER_OTLP_HEADERS must be name=value pairs",
            id="headers",
        ),
        pytest.param(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "x api key=otlp-header-secret-2",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS must be name=value pairs",
            id="header-name",
        ),
        pytest.param(
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "zstd",
            "OTEL_EXPORTER_OTLP_COMPRESSION must be gzip or none",
            id="compression",
        ),
        pytest.param(
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/ca.pem",
            "OTEL_EXPORTER_OTLP_CERTIFICATE: No such file or directory",
            id="certificate",
        ),
        pytest.param(
            "OTEL_RESOURCE_ATTRIBUTES",
            "team",
            "OTEL_RESOURCE_ATTRIBUTES must be name=value pairs",
            id="resource",
        ),
        pytest.param(
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "monthly",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE must be cumulative, delta or",
            id="temporality",
        ),
        pytest.param(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            "4096",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE must be 1 to OTEL_BSP_MAX_QUEUE_SIZE (2048)",
            id="batch",
        ),
        pytest.param(
            "OTEL_BSP_SCHEDULE_DELAY",
            "000",
            "OTEL_BSP_SCHEDULE_DELAY must be above 0",
            id="no-delay",
        ),
        pytest.param(
            "OTEL_METRIC_EXPORT_INTERVAL",
            "000",
            "OTEL_METRIC_EXPORT_INTERVAL must be above 0",
            id="no-interval",
        ),
        pytest.param(
            "OTEL_BSP_SCHEDULE_DELAY",
            "soon",
            "OTEL_BSP_SCHEDULE_DELAY must be a whole number",
            id="number",
        ),
        pytest.param(
            "OTEL_TRACES_EXPORTER",
            "zipkin",
            "OTEL_TRACES_EXPORTER must be otlp or none",
            id="zipkin",
        ),
        pytest.param(
            "OTEL_TRACES_SAMPLER",
            "jaeger_remote",
            "OTEL_TRACES_SAMPLER must be always_on, always_off, traceidratio",
            id="sampler",
        ),
        pytest.param(
            "OTEL_TRACES_SAMPLER_ARG",
            "1.5",
            "OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1",
            id="ratio",
        ),
    ],
)
def test_a_bad_otel_variable_stops_the_command_with_one_line_naming_it(
    gateway_env: dict[str, str],
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    problem: str,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")  # ARG is read
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        main(["ask", "hi"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2
    assert error.startswith(f"error[config]: {problem}")
    assert error.count("\n") == 1
    assert value not in error  # a header's value, an endpoint's password: never shown
    assert not gateway.requests


def test_what_is_exported_follows_the_standard_switches() -> None:
    endpoint = "http://collector:4318"
    assert telemetry.signals({}) == set()
    assert telemetry.signals({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}) == {"traces", "metrics"}
    assert telemetry.signals({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": endpoint}) == {"metrics"}
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    assert telemetry.signals({**both, "OTEL_TRACES_EXPORTER": "none"}) == {"metrics"}
    assert telemetry.signals({**both, "OTEL_SDK_DISABLED": "true"}) == set()
    with pytest.raises(ConfigError):  # the trace endpoint's own setting wins
        telemetry.signals({**both, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318"})


def test_a_collector_that_is_down_costs_log_lines_never_an_answer(
    gateway_env: dict[str, str],
) -> None:
    """Its failures are JSON log lines naming the collector and what was dropped, never the
    exporter's header values (a collector's key)."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    header_secret = f"otlp-header-secret-{secrets.token_hex(8)}"
    done = run(
        "-m", PACKAGE, "ask", "hi", "--no-stream",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_EXPORTER_OTLP_HEADERS=f"x-team=a,x-api-key={header_secret}",
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, ANSWER + "\n"), done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line JSON
    exporters = [line["message"] for line in lines if line["logger"] == f"{PACKAGE}.otlp_wire"]
    assert f"OTLP traces export to 127.0.0.1:{closed} failed (ConnectError): 1 spans dropped" in (
        exporters
    )  # the export was tried, and failed: the exporter says so
    assert header_secret not in done.stderr
    assert SENTINEL_KEY not in done.stderr
