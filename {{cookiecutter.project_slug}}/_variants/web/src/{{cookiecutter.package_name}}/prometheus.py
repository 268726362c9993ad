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
from typing import Any, Generic, TypeVar

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


M = TypeVar("M", Counter, Histogram)


class _Series(Generic[M]):
    """A metric's labelled children by their label values: a dict lookup per observation."""

    def __init__(self, metric: M, attributes: tuple[str, ...]) -> None:
        self.metric: M = metric
        self.attributes = attributes
        self.children: dict[tuple[str, ...], M] = {}

    def child(self, attributes: metrics.Attributes) -> M:
        values = tuple(attributes.get(name, "") for name in self.attributes)
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


class PrometheusSink:
    """A `metrics.Sink` of Prometheus metrics, and their exposition."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        # What a scrape reads: the metrics' own registry in memory; else every process's files.
        self.registry = CollectorRegistry()
        histograms = {i: self._series(Histogram, i, buckets=i.buckets) for i in metrics.HISTOGRAMS}
        self._duration = histograms[metrics.DURATION]
        self._first_chunk = histograms[metrics.TIME_TO_FIRST_CHUNK]
        self._tokens = histograms[metrics.TOKEN_USAGE]
        self._counters = {i: self._series(Counter, i) for i in metrics.COUNTERS}
        if directory is not None:
            self.registry = CollectorRegistry()
            self.registry.register(_Files(directory))

    def _series(self, kind: type[M], instrument: metrics.Instrument, **options: Any) -> _Series[M]:
        attributes = metrics.ATTRIBUTES[instrument]
        labels = [label_name(attribute) for attribute in attributes]
        name, help_text = prometheus_name(instrument), instrument.description
        return _Series(kind(name, help_text, labels, registry=self.registry, **options), attributes)

    def record(self, measurement: metrics.Measurement) -> None:
        attributes = measurement.attributes
        self._duration.child(attributes).observe(measurement.duration_s)
        if (first := measurement.time_to_first_chunk_s) is not None:
            self._first_chunk.child(attributes).observe(first)
        tokens_by_type = ("input", measurement.input_tokens), ("output", measurement.output_tokens)
        for kind, tokens in tokens_by_type:
            if tokens is not None:
                self._tokens.child({**attributes, "gen_ai.token.type": kind}).observe(tokens)

    def add(self, counter: metrics.Instrument, attributes: metrics.Attributes) -> None:
        self._counters[counter].child(attributes).inc()

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
