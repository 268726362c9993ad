"""What `metrics.py` hands its sinks for each upstream attempt, through the real chat services
against the fake gateway: the GenAI attributes, durations, tokens and counters every exporter
builds on (the exporters have tests of their own)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from {{ cookiecutter.package_name }} import metrics, retry
from {{ cookiecutter.package_name }}.settings import load_settings

from .conftest import HELLO, Driver, ask, failure
from .fake_gateway import FakeGateway

STREAM = [pytest.param(False, id="complete"), pytest.param(True, id="stream")]


@dataclass
class Recorder:
    measurements: list[metrics.Measurement] = field(default_factory=list)
    counts: list[tuple[str, metrics.Attributes]] = field(default_factory=list)

    def record(self, measurement: metrics.Measurement) -> None:
        self.measurements.append(measurement)

    def add(self, counter: metrics.Instrument, attributes: metrics.Attributes) -> None:
        self.counts.append((counter.name, attributes))


@pytest.fixture
def recorder(gateway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    metrics.configure(load_settings())
    sink = Recorder()
    metrics.install(sink)
    yield sink
    metrics.uninstall(sink)


@pytest.mark.parametrize("stream", STREAM)
def test_an_answer_is_measured_with_the_conventions_attributes_and_its_tokens(
    driver: Driver, recorder: Recorder, gateway: FakeGateway, stream: bool
) -> None:
    chat = driver.chat()
    result = chat.stream(ask()) if stream else chat.complete(ask())
    [measured] = recorder.measurements
    assert measured.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini",
        "server.address": "127.0.0.1",
{%- if cookiecutter.caller_auth == "keys" %}
        "alltkn.caller": "",
{%- endif %}
    }
    assert result.usage is not None
    assert (measured.input_tokens, measured.output_tokens) == (
        len(HELLO.split()),
        result.usage.completion_tokens,
    )
    assert 0 < measured.duration_s < 5
    if stream:  # the first chunk came before the end
        assert measured.time_to_first_chunk_s is not None
        assert 0 < measured.time_to_first_chunk_s <= measured.duration_s
    else:
        assert measured.time_to_first_chunk_s is None
    assert recorder.counts == []


@pytest.mark.parametrize("stream", STREAM)
@pytest.mark.parametrize(
    ("model", "category"),
    [
        pytest.param("fake-error-401", "auth", id="auth"),
        pytest.param("fake-error-quota", "quota", id="quota"),
        pytest.param("fake-error-400", "invalid_request", id="invalid-request"),
        pytest.param("fake-error-429", "rate_limited", id="rate-limited"),
    ],
)
def test_a_failure_is_measured_with_its_category_as_error_type(
    driver: Driver, recorder: Recorder, stream: bool, model: str, category: str
) -> None:
    failure(driver.chat(), model, stream=stream)
    [measured] = recorder.measurements
    assert measured.attributes["error.type"] == category
    # A model nobody configured is one series, "other", whatever callers send.
    assert measured.attributes["gen_ai.request.model"] == "other"
    assert measured.input_tokens is None


def test_a_stream_cut_after_its_first_delta_is_stream_interrupted(
    driver: Driver, recorder: Recorder
) -> None:
    failure(driver.chat(), "fake-stream-cut", stream=True)
    [measured] = recorder.measurements
    assert measured.attributes["error.type"] == "stream_interrupted"
    assert measured.time_to_first_chunk_s is not None


def test_a_consumer_that_leaves_is_counted_as_a_disconnect(
    driver: Driver, recorder: Recorder
) -> None:
    driver.chat().stream(ask(model="fake-slow"), stop_after=1)
    [measured] = recorder.measurements
    assert measured.attributes["error.type"] == "client_disconnect"
    assert recorder.counts == [("alltkn.client.disconnects", {"gen_ai.request.model": "other"})]


@pytest.mark.parametrize("stream", STREAM)
def test_a_fallback_is_counted_from_and_to_with_one_measurement_per_attempt(
    driver: Driver, recorder: Recorder, stream: bool
) -> None:
    chat, request = driver.chat(), ask(model="fake-error-503-model")
    result = chat.stream(request) if stream else chat.complete(request)
    assert result.model == "gpt-4o"
    assert [m.attributes.get("error.type") for m in recorder.measurements] == [
        "model_not_found",
        None,
    ]
    assert recorder.measurements[1].attributes["gen_ai.request.model"] == "gpt-4o"
    assert recorder.counts == [
        ("alltkn.fallbacks", {"gen_ai.request.model": "other", "alltkn.fallback.model": "gpt-4o"})
    ]


@pytest.mark.parametrize("stream", STREAM)
def test_the_retries_the_sdk_makes_are_counted_once_each(
    driver: Driver,
    recorder: Recorder,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
) -> None:
    """`fake-429-once` answers 429 (Retry-After: 1 s) once; with one retry allowed the SDK
    tries again and the answer comes: one retry counted, not the final answer."""
    monkeypatch.setattr(retry, "backoff_s", lambda attempt: 0.01)
    chat = driver.chat(max_retries=1)
    request = ask(model="fake-429-once")
    chat.stream(request) if stream else chat.complete(request)
    assert len(gateway.requests_for("fake-429-once")) == 2
    assert recorder.counts == [
        ("alltkn.retries", {"gen_ai.request.model": "other", "error.type": "rate_limited"})
    ]
