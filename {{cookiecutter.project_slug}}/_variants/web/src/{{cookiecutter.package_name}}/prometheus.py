"""`GET /metrics`: the instruments of `metrics.py` as Prometheus metrics, named as OpenTelemetry
maps its names to Prometheus (`.` to `_`, unit `s` as `_seconds`, `{...}` units dropped, counters
ending `_total`): `gen_ai_client_operation_duration_seconds`, `gen_ai_client_token_usage` (one
observation per `gen_ai_token_type`, input and output), ..., `alltkn_requests_refused_total`;
label names are the attribute names with `_` for `.`. Several workers count in one directory
(`metrics_dir.py`), which a scrape adds up; one process counts in memory.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import SecretStr

from . import metrics, metrics_dir

CONTENT_TYPE = CONTENT_TYPE_LATEST
_UNIT_SUFFIXES = {"s": "_seconds"}  # annotations such as `{token}` name no unit
# The same series with and without the directory (which has no `_created` samples).
disable_created_metrics()


def prometheus_name(instrument: metrics.Instrument) -> str:
    """Without a counter's `_total`, which prometheus_client adds."""
    return instrument.name.replace(".", "_") + _UNIT_SUFFIXES.get(instrument.unit, "")


def label_name(attribute: str) -> str:
    return attribute.replace(".", "_")


class PrometheusSink:
    """A `metrics.Sink` of Prometheus metrics, and their exposition. The labelled children of
    an attribute set are looked up once, then kept: a record costs one dict lookup before the
    observations (the sets are few: `metrics.py` bounds them)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        # What a scrape reads: the metrics' own registry in memory; else every process's files.
        self.registry = CollectorRegistry()
        self._metrics: dict[metrics.Instrument, Any] = {
            **{i: self._metric(Histogram, i, buckets=i.buckets) for i in metrics.HISTOGRAMS},
            **{i: self._metric(Counter, i) for i in metrics.COUNTERS},
        }
        # An attribute set's children: duration, time to first chunk, input and output tokens.
        self._calls: dict[tuple[tuple[str, str], ...], metrics.CallSeries] = {}
        self._counted: dict[tuple[metrics.Instrument, tuple[str, ...]], Counter] = {}
        if directory is not None:
            self.registry = CollectorRegistry()
            self.registry.register(_Files(directory))

    def _metric(self, kind: type[Any], instrument: metrics.Instrument, **options: Any) -> Any:
        labels = [label_name(attribute) for attribute in metrics.ATTRIBUTES[instrument]]
        name, help_text = prometheus_name(instrument), instrument.description
        return kind(name, help_text, labels, registry=self.registry, **options)

    def _child(self, instrument: metrics.Instrument, attributes: metrics.Attributes) -> Any:
        values = [attributes.get(name, "") for name in metrics.ATTRIBUTES[instrument]]
        return self._metrics[instrument].labels(*values)

    def record(self, measurement: metrics.Measurement) -> None:
        attributes = measurement.attributes
        key = tuple(attributes.items())
        if (children := self._calls.get(key)) is None:
            children = self._calls[key] = metrics.call_series(attributes, self._child)
        metrics.observe(measurement, children)

    def add(self, counter: metrics.Instrument, attributes: metrics.Attributes) -> None:
        key = (counter, tuple(attributes.values()))
        child = self._counted.get(key)
        if child is None:
            child = self._counted[key] = self._child(counter, attributes)
        child.inc()

    def exposition(self) -> bytes:
        """The Prometheus text format: every worker's counts, exact."""
        if self.directory is None:
            return generate_latest(self.registry)
        with metrics_dir.merged(self.directory):
            return generate_latest(self.registry)


class _Files:
    """prometheus_client's sum of the processes' files, minus any a process has just created
    (`metrics_dir.files`): its `MultiProcessCollector` would fail on one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        paths = [str(path) for path in metrics_dir.files(self.directory.glob("*.db"))]
        summed: Iterable[Metric] = MultiProcessCollector.merge(paths, accumulate=True)
        return summed


@cache
def sink() -> PrometheusSink:
    """The process's one sink: two would write over each other's counts in the same file."""
    named = os.environ.get(metrics_dir.ENV, "").strip()
    return PrometheusSink(Path(named) if named else None)


def authorized(authorization: str | None, token: SecretStr | None) -> bool:
    """Whether a scrape may read: any, without ALLTKN_METRICS_TOKEN; else `Bearer <token>`."""
    if token is None:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    expected = token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)
