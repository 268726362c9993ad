"""Traces and metrics of the real server process over OTLP (`telemetry.py`), received by an
OTLP/HTTP endpoint on loopback (`otlp_receiver.py`): a SERVER span per request, continuing the
caller's W3C traceparent and ending with the response (a stream's too), the upstream spans its
children (a stream's retries too, made while it is relayed), the traceparent at the gateway,
the metrics; no prompt, answer or key in any byte exported. Unset, nothing that exports is
imported."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ANSWER, HELLO, SENTINEL_KEY
from .fake_gateway import FakeGateway
from .live_server import Server, free_port, parse_events, run_server
from .otlp_receiver import OtlpReceiver, Span, wait_for

# What only exporting imports (otlp.py, otlp_wire.py), and what only the tests install.
# (FastAPI and redis import opentelemetry's API and SDK if installed; the project has neither.)
EXPORT_MODULES = ("{{ cookiecutter.package_name }}.otlp", "opentelemetry.proto")


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def server(
    gateway: FakeGateway, otlp: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Exporting to `otlp`, with a fallback model (for a stream's second attempt)."""
    log_dir = tmp_path_factory.mktemp("telemetry")
    with run_server(gateway, log_dir, ALLTKN_FALLBACK_MODELS="gpt-4o", **otlp.env()) as live:
        yield live


def stream(server: Server, body: dict[str, str], **headers: str) -> str:
    """`POST /v1/chat/stream`, read to its `done` event; its request id."""
    with server.stream(body, headers=headers) as response:
        assert parse_events(response.read().decode())[-1][0] == "done"
        return response.headers["x-request-id"]


def caller() -> tuple[str, str, dict[str, str]]:
    """A caller's trace id and span id, and the traceparent header naming them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


def spans_of(otlp: OtlpReceiver, request_id: str, upstream: int = 1) -> tuple[Span, list[Span]]:
    """The SERVER span of the request `request_id` and its `upstream` children, once exported."""

    def found() -> tuple[Span, list[Span]] | None:
        spans = otlp.spans()
        mine = [s for s in spans if s.attributes.get("alltkn.request_id") == request_id]
        servers = [span for span in mine if span.kind == "SERVER"]
        children = [span for span in mine if span.kind == "CLIENT"]
        if len(servers) == 1 and len(children) == upstream:
            return servers[0], sorted(children, key=lambda span: span.start_ns)
        return None

    return otlp.wait_for(found)


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/stream"])
def test_a_request_is_a_server_span_in_the_callers_trace_and_its_call_a_child(
    server: Server, otlp: OtlpReceiver, gateway: FakeGateway, path: str
) -> None:
    trace_id, caller_span, headers = caller()
    response = server.post(path, {"prompt": HELLO}, headers=headers)
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]

    request, [upstream] = spans_of(otlp, request_id)
    assert (request.name, request.kind, request.status) == (f"POST {path}", "SERVER", "UNSET")
    assert (request.trace_id, request.parent_span_id) == (trace_id, caller_span)
    assert request.attributes == {
        "http.request.method": "POST",
        "http.route": path,
        "url.path": path,
        "url.scheme": "http",
        "http.response.status_code": 200,
        "alltkn.request_id": request_id,
    }
    assert (upstream.name, upstream.kind) == ("chat gpt-4o-mini", "CLIENT")
    assert (upstream.trace_id, upstream.parent_span_id) == (trace_id, request.span_id)
    assert upstream.attributes["gen_ai.usage.input_tokens"] == len(HELLO.split())
    logged = server.call_log(request_id)["upstream_request_id"]
    assert upstream.attributes["alltkn.upstream_request_id"] == logged
{%- if cookiecutter.caller_auth == "keys" %}
    assert upstream.attributes["alltkn.caller"] == "tests"
{%- endif %}
    [sent] = gateway.requests_for("gpt-4o-mini")
    assert upstream.named_by(sent.headers["traceparent"])
    assert request.end_ns >= upstream.end_ns  # a stream's: once its response has ended


def test_a_streams_retries_while_it_is_relayed_are_children_of_its_request(
    server: Server, otlp: OtlpReceiver, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No first token within ALLTKN_TIMEOUT_S: the next attempt, on the fallback model, is
    made after the response started{% if cookiecutter.framework == "flask" %}, in the relay's reader thread{% else %}, in the response's task{% endif %}."""
    monkeypatch.setattr(gateway, "hang_seconds", 1.5)  # more than the server's 1 s timeout
    _, _, headers = caller()
    request_id = stream(server, {"prompt": "hi", "model": "fake-stream-slow-start"}, **headers)

    request, [first, second] = spans_of(otlp, request_id, upstream=2)
    assert first.name == "chat fake-stream-slow-start"
    assert first.attributes["error.type"] == "timeout"
    assert (second.name, second.status) == ("chat gpt-4o", "UNSET")
    assert first.parent_span_id == second.parent_span_id == request.span_id
    assert request.attributes["http.response.status_code"] == 200


@pytest.mark.parametrize(
    ("model", "status", "category", "server_error"),
    [
        pytest.param("fake-error-429", 429, "rate_limited", None, id="429"),
        pytest.param("fake-error-401", 502, "auth", "502", id="502"),
    ],
)
def test_a_failure_marks_the_upstream_span_and_a_5xx_the_server_span(
    server: Server,
    otlp: OtlpReceiver,
    model: str,
    status: int,
    category: str,
    server_error: str | None,
) -> None:
    response = server.post("/v1/chat", {"prompt": "hi", "model": model})  # no traceparent
    assert response.status_code == status

    request, [upstream] = spans_of(otlp, response.headers["x-request-id"])
    assert request.parent_span_id == ""  # a trace of its own
    assert request.attributes["http.response.status_code"] == status
    assert request.attributes.get("error.type") == server_error  # a 4xx is the caller's
    assert request.status == ("ERROR" if server_error else "UNSET")
    assert (upstream.status, upstream.attributes["error.type"]) == ("ERROR", category)


def test_health_checks_are_not_traced_nor_unknown_routes_named_after_their_path(
    server: Server, otlp: OtlpReceiver
) -> None:
    assert server.request("GET", "/healthz").status_code == 200
    response = server.request("GET", "/no/such/route")
    assert response.status_code == 404

    def found() -> Span | None:
        spans = [span for span in otlp.spans() if span.kind == "SERVER"]
        by_id = response.headers["x-request-id"]
        return next((s for s in spans if s.attributes["alltkn.request_id"] == by_id), None)

    unknown = otlp.wait_for(found)
    assert unknown.name == "GET"  # no route: the method alone (a path is unbounded)
    assert "http.route" not in unknown.attributes
    assert not [span for span in otlp.spans() if span.attributes.get("url.path") == "/healthz"]


def test_the_metrics_and_nothing_secret_go_out(server: Server, otlp: OtlpReceiver) -> None:
    prompt, user = (f"{kind}-sentinel-{secrets.token_hex(6)}" for kind in ("prompt", "user"))
    body = {"prompt": prompt, "user": user, "task": f"task-{user}"}
    assert server.post("/v1/chat", body).status_code == 200
    stream(server, body)

    def streamed() -> bool:  # the stream's first chunk was measured, and exported
        return any(p.count for p in otlp.points("gen_ai.client.operation.time_to_first_chunk"))

    otlp.wait_for(streamed)
    for name, unit in (
        ("gen_ai.client.operation.duration", "s"),
        ("gen_ai.client.token.usage", "{token}"),
        ("gen_ai.client.operation.time_to_first_chunk", "s"),
    ):
        assert {point.unit for point in otlp.points(name)} == {unit}
    sent = otlp.sent()
    for secret in (prompt, user, body["task"], ANSWER, SENTINEL_KEY, server.key or SENTINEL_KEY):
        assert secret.encode() not in sent


def test_a_collector_that_is_down_costs_log_lines_never_a_request(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    dead = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    quick = {"OTEL_BSP_SCHEDULE_DELAY": "10", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    with run_server(gateway, tmp_path, **dead, **quick) as live:
        assert live.post("/v1/chat", {"prompt": "hi"}).status_code == 200
        stream(live, {"prompt": "hi"})

        def failed() -> list[dict[str, str]]:  # the exporter's lines, JSON like every other
            lines = [json.loads(line) for line in live.output().splitlines()]
            return [line for line in lines if line["logger"].endswith(".otlp_wire")]

        assert {line["level"] for line in wait_for(failed)} <= {"WARNING", "ERROR"}


def test_a_server_told_to_stop_sends_what_it_holds(gateway: FakeGateway, tmp_path: Path) -> None:
    """A rolling update's SIGTERM: the spans and counts not yet sent (a minute's delay here) go
    out before the server exits."""
    with OtlpReceiver() as collector:
        minute = {"OTEL_BSP_SCHEDULE_DELAY": "60000", "OTEL_METRIC_EXPORT_INTERVAL": "60000"}
        with run_server(gateway, tmp_path, **collector.env(**minute)) as live:
            answer = live.post("/v1/chat", {"prompt": "hi"})
            assert answer.status_code == 200
            assert not collector.spans()
        request_id = answer.headers["x-request-id"]
        mine = [s for s in collector.spans() if s.attributes.get("alltkn.request_id") == request_id]
        assert sorted(span.kind for span in mine) == ["CLIENT", "SERVER"]
        [calls] = collector.points("gen_ai.client.operation.duration")
        assert calls.count == 1


def test_unset_nothing_that_exports_is_even_imported(gateway: FakeGateway, tmp_path: Path) -> None:
    """Every module the server imports, at start and while it serves, is listed by Python
    (PYTHONPROFILEIMPORTTIME) in its output: nothing of opentelemetry for a request."""
    with run_server(gateway, tmp_path, PYTHONPROFILEIMPORTTIME="1") as live:
        ready = len(live.output())
        assert live.post("/v1/chat", {"prompt": "hi"}).status_code == 200
        stream(live, {"prompt": "hi"})
        assert "traceparent" not in gateway.requests_for("gpt-4o-mini")[0].headers
    at_start, serving = imports(live.output()[:ready]), imports(live.output()[ready:])
    assert "{{ cookiecutter.package_name }}.telemetry" in at_start
    assert [name for name in at_start + serving if name.startswith(EXPORT_MODULES)] == []


def imports(output: str) -> list[str]:
    """The modules in Python's -X importtime lines."""
    lines = output.splitlines()
    return [line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")]
