"""Every upstream call, measured under the OpenTelemetry GenAI semantic conventions (their names,
units and bucket boundaries), so any backend reads it without a mapping.

`chat.py` reports each attempt here (`record`) and each retry, fallback and hang-up (`add`); the
sinks a process installs turn that into what it exports:
{%- if cookiecutter.framework != "script" %} `/metrics` (`prometheus.py`),{% endif %}
OTLP (`telemetry.py`, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set){% if cookiecutter.framework == "script" %}, the batch summary
(`batch_summary.py`){% endif %}. Without a sink nothing is done.
Attribute values are bounded, so are the series: model names from the configured set ("other"
for any other), error categories{% if cookiecutter.caller_auth == "keys" %}, caller names{% endif %}; never a prompt, an end user or a key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from .settings import Settings

OPERATION = "chat"
# The API the gateway speaks (the conventions' well-known value); `server.address` says where.
PROVIDER = "openai"
OTHER_MODEL = "other"


@dataclass(frozen=True)
class Instrument:
    name: str
    unit: str
    description: str
    buckets: tuple[float, ...] = ()  # a histogram's boundaries; none: a counter


_SECONDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TOKENS = tuple(float(4**power) for power in range(14))  # 1, 4, 16, ... 67108864

DURATION = Instrument(
    "gen_ai.client.operation.duration", "s", "GenAI operation duration.", _SECONDS
)
TOKEN_USAGE = Instrument(
    "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used.", _TOKENS
)
TIME_TO_FIRST_CHUNK = Instrument(
    "gen_ai.client.operation.time_to_first_chunk",
    "s",
    "Time to receive the first chunk of a streamed answer.",
    _SECONDS,
)
HISTOGRAMS = (DURATION, TOKEN_USAGE, TIME_TO_FIRST_CHUNK)
# Beyond the conventions: what the runbook asks about.
FALLBACKS = Instrument("alltkn.fallbacks", "{call}", "Calls moved on to a fallback model.")
RETRIES = Instrument("alltkn.retries", "{attempt}", "Upstream attempts tried again.")
CLIENT_DISCONNECTS = Instrument(
    "alltkn.client.disconnects", "{call}", "Calls whose consumer left before the answer ended."
)
REFUSED = Instrument(
    "alltkn.requests.refused", "{request}", "Requests refused before any upstream call."
)
COUNTERS = (FALLBACKS, RETRIES, CLIENT_DISCONNECTS, REFUSED)

# The attributes of each instrument, in order (a Prometheus series needs fixed label names).
CALL_ATTRIBUTES = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "server.address",
{%- if cookiecutter.caller_auth == "keys" %}
    "alltkn.caller",
{%- endif %}
)
ATTRIBUTES: dict[Instrument, tuple[str, ...]] = {
    DURATION: (*CALL_ATTRIBUTES, "error.type"),
    TOKEN_USAGE: (*CALL_ATTRIBUTES, "gen_ai.token.type"),
    TIME_TO_FIRST_CHUNK: CALL_ATTRIBUTES,
    FALLBACKS: ("gen_ai.request.model", "alltkn.fallback.model"),
    RETRIES: ("gen_ai.request.model", "error.type"),
    CLIENT_DISCONNECTS: ("gen_ai.request.model",),
{%- if cookiecutter.caller_auth == "keys" %}
    REFUSED: ("error.type", "alltkn.caller"),
{%- else %}
    REFUSED: ("error.type",),
{%- endif %}
}
Attributes = dict[str, str]


@dataclass(frozen=True)
class Measurement:
    """One upstream attempt: `attributes` has `error.type` (the category) only if it failed."""

    attributes: Attributes
    duration_s: float
    time_to_first_chunk_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class Sink(Protocol):
    def record(self, measurement: Measurement) -> None: ...

    def add(self, counter: Instrument, attributes: Attributes) -> None: ...


class Histogram(Protocol):
    def observe(self, value: float, /) -> None: ...


CallSeries = tuple[Histogram, Histogram, Histogram, Histogram]


def call_series(
    attributes: Attributes, series: Callable[[Instrument, Attributes], Histogram]
) -> CallSeries:
    """The four series of one attribute set: duration, first chunk, input and output tokens."""
    return (
        series(DURATION, attributes),
        series(TIME_TO_FIRST_CHUNK, attributes),
        series(TOKEN_USAGE, {**attributes, "gen_ai.token.type": "input"}),
        series(TOKEN_USAGE, {**attributes, "gen_ai.token.type": "output"}),
    )


def observe(measurement: Measurement, series: CallSeries) -> None:
    """One attempt's figures into its series (a sink caches them per attribute set)."""
    duration, first_chunk, input_tokens, output_tokens = series
    duration.observe(measurement.duration_s)
    if (first := measurement.time_to_first_chunk_s) is not None:
        first_chunk.observe(first)
    if (tokens := measurement.input_tokens) is not None:
        input_tokens.observe(tokens)
    if (tokens := measurement.output_tokens) is not None:
        output_tokens.observe(tokens)


_sinks: list[Sink] = []
_models: frozenset[str] = frozenset()
_server = ""


def configure(settings: Settings) -> None:
    """The model names that may be attribute values (the rest are "other"), and the gateway."""
    global _models, _server
    models = {settings.model, *settings.fallback_model_list}
{%- if cookiecutter.framework != "script" %}
    models |= settings.allowed_model_set or set()
{%- endif %}
    _models, _server = frozenset(models), urlsplit(settings.base_url).hostname or ""


def install(sink: Sink) -> None:
    if sink not in _sinks:
        _sinks.append(sink)


def uninstall(sink: Sink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def model(name: str | None) -> str:
    """A model name as an attribute value: a configured one, else "other" (a gateway's dated
    names or a free-form request would make a series each)."""
    return name if name in _models else OTHER_MODEL


def call_attributes(
    request_model: str,
    response_model: str | None,
    error_type: str | None = None,
{%- if cookiecutter.caller_auth == "keys" %}
    caller: str | None = None,
{%- endif %}
) -> Attributes:
    attributes = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": model(request_model),
        "gen_ai.response.model": model(response_model or request_model),
        "server.address": _server,
{%- if cookiecutter.caller_auth == "keys" %}
        "alltkn.caller": caller or "",
{%- endif %}
    }
    if error_type:
        attributes["error.type"] = error_type
    return attributes


def recording() -> bool:
    return bool(_sinks)


def record(measurement: Measurement) -> None:
    for sink in _sinks:
        sink.record(measurement)


def add(counter: Instrument, **attributes: str) -> None:
    """Count one event; keyword names are the attribute names with `_` for `.`."""
    if _sinks:
        named = {key: attributes.get(key.replace(".", "_"), "") for key in ATTRIBUTES[counter]}
        for sink in _sinks:
            sink.add(counter, named)
