"""Traces and metrics over OTLP/HTTP, when the environment names a collector: the standard
OpenTelemetry variables, read from the environment (not .env), as every OpenTelemetry SDK does.

- `OTEL_EXPORTER_OTLP_ENDPOINT` (http://collector:4318: both signals), or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (one each, the full
  URL); unset, nothing is exported. `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none` /
  `OTEL_METRICS_EXPORTER=none`, turn it off.
- `OTEL_SERVICE_NAME` (default: the project's name), `OTEL_RESOURCE_ATTRIBUTES`,
  `OTEL_EXPORTER_OTLP_HEADERS` (a collector's key: masked in the logs), `..._TIMEOUT`,
  `..._COMPRESSION`, `..._CERTIFICATE`, `OTEL_BSP_*`, `OTEL_METRIC_EXPORT_INTERVAL`: as
  OpenTelemetry's Python SDK reads them (`otlp_wire.py`). `OTEL_TRACES_SAMPLER`: always_on,
  always_off, traceidratio (`OTEL_TRACES_SAMPLER_ARG`), each also parentbased_.

What is exported (`otlp.py`): a SERVER span per request to the web service, continuing the
caller's W3C `traceparent`; a CLIENT span per upstream attempt, whose `traceparent` goes to the
gateway (with the caller's `tracestate`, never their `baggage`); `metrics.py`'s instruments.
Never a prompt, an answer, an end user or a key.

Off, the exporting modules are not even imported and `tracing` is None: all the chat path
checks. What is pending goes out at exit (`stop`); a collector that is down costs log lines,
never a request, and holds an exit up for at most `otlp.EXIT_WAIT_S`.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .logs import configure_logging
from .settings import ConfigError, Settings

if TYPE_CHECKING:
    from .otlp import Exporting, Tracing

PROTOCOL = "http/protobuf"  # the one this project sends
SIGNALS = ("TRACES", "METRICS")
SAMPLERS = ("always_on", "always_off", "traceidratio")  # and parentbased_ each
# Numbers, refused at start when they are not.
_NUMBERS = (
    "OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_EXPORT_TIMEOUT", "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_METRIC_EXPORT_INTERVAL", "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
)  # fmt: skip
_INTERVALS = ("OTEL_BSP_SCHEDULE_DELAY", "OTEL_METRIC_EXPORT_INTERVAL")  # 0: a thread would spin

tracing: Tracing | None = None  # the spans' maker, while traces are exported
_exporting: Exporting | None = None


def signals(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """What to export ("traces", "metrics"); `ConfigError` for a variable the exporter could not
    use (it would log an error at every export instead)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return frozenset()
    on = set()
    for signal in SIGNALS:
        name = f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
        name = name if environ.get(name, "").strip() else "OTEL_EXPORTER_OTLP_ENDPOINT"
        exporter = environ.get(f"OTEL_{signal}_EXPORTER", "").strip().lower() or "otlp"
        if not environ.get(name, "").strip() or exporter == "none":
            continue
        if exporter != "otlp":
            raise ConfigError(f"OTEL_{signal}_EXPORTER must be otlp or none (OTLP is exported)")
        _check_endpoint(name, environ[name])
        protocol = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
        protocol = protocol if environ.get(protocol) else "OTEL_EXPORTER_OTLP_PROTOCOL"
        if environ.get(protocol, PROTOCOL).strip() != PROTOCOL:
            raise ConfigError(f"{protocol} must be {PROTOCOL}, the one OTLP protocol sent")
        on.add(signal.lower())
    if on:
        for name in _NUMBERS:
            value, whole = environ.get(name, "").strip(), name.startswith("OTEL_BSP_")
            if value and not (value if whole else value.replace(".", "", 1)).isdigit():
                raise ConfigError(f"{name} must be a {'whole ' if whole else ''}number, 0 or more")
            if value and name in _INTERVALS and not float(value):
                raise ConfigError(f"{name} must be above 0 (milliseconds)")
        header_values(frozenset(on), environ)
    if "traces" in on:
        sampler(environ)
    return frozenset(on)


def sampler(environ: Mapping[str, str] = os.environ) -> tuple[bool, float | None]:
    """OTEL_TRACES_SAMPLER (and _ARG), the specification's samplers: (parent-based, the ratio of
    new traces kept, or None for all)."""
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    root = name.removeprefix("parentbased_")
    if root not in SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER must be {', '.join(SAMPLERS)}, or one of them "
                          "after parentbased_ (the default: parentbased_always_on)")  # fmt: skip
    if root != "traceidratio":
        return name != root, None if root == "always_on" else 0.0
    value = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1"
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError("OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1, such as 0.1")
    return name != root, ratio


def _check_endpoint(name: str, url: str) -> None:
    problem = f"{name} must be an http:// or https:// URL, such as http://otel-collector:4318"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ConfigError(problem) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(problem)  # the value is not shown: it may hold a password


def header_values(on: frozenset[str], environ: Mapping[str, str] = os.environ) -> list[str]:
    """The values of the headers sent with the signals `on` (a collector's key, say), to mask in
    the logs; `ConfigError` names a variable that is not name=value pairs."""
    from .otlp_wire import headers  # only when exporting

    return [value for signal in on for value in headers(signal, environ).values()]


def start(settings: Settings) -> None:
    """Export what the environment asks for, from this process (once); `ConfigError` names a
    variable that is wrong."""
    global tracing, _exporting
    on = signals()
    if not on or _exporting is not None:
        return
    if secrets := header_values(on):  # masked in any line that would show one
        configure_logging(settings.log_level, secrets=secrets)
    from . import otlp  # only now

    _exporting = otlp.Exporting(settings, on)
    tracing = _exporting.tracing
    atexit.register(stop)


def start_or_exit(settings: Settings) -> None:
    """For entry points: the one-line problem and exit 2 instead of a traceback."""
    try:
        start(settings)
    except ConfigError as exc:
        print(f"error[config]: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def stop() -> None:
    """Export what is pending and stop exporting (at exit: `start` registered it)."""
    global tracing, _exporting
    atexit.unregister(stop)
    if _exporting is not None:
        _exporting.stop()
    tracing = _exporting = None
