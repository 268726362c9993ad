"""What a batch's upstream calls did, from the instruments of `metrics.py` (the measurements OTLP
exports when it is on): calls, errors by category, retries and fallbacks, tokens by model,
duration percentiles. Printed at the end of `batch`; `--metrics-file` writes it as JSON."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from . import metrics


class CallSummary:
    """A `metrics.Sink` that keeps the totals (and every duration, for exact percentiles)."""

    def __init__(self) -> None:
        self.errors = Counter[str]()
        self.counts = Counter[str]()  # the counters: retries, fallbacks, ...
        self.tokens: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.durations: list[float] = []

    def record(self, measurement: metrics.Measurement) -> None:
        self.durations.append(measurement.duration_s)
        if error := measurement.attributes.get("error.type"):
            self.errors[error] += 1
        used = self.tokens[measurement.attributes["gen_ai.response.model"]]
        used["input"] += measurement.input_tokens or 0
        used["output"] += measurement.output_tokens or 0

    def add(self, counter: metrics.Instrument, attributes: metrics.Attributes) -> None:
        self.counts[counter.name] += 1

    def percentile(self, share: float) -> float | None:
        """Nearest rank: the smallest duration at least `share` of the calls took."""
        if not self.durations:
            return None
        ranked = sorted(self.durations)
        return ranked[max(math.ceil(share * len(ranked)) - 1, 0)]

    def as_json(self) -> dict[str, Any]:
        spent = {model: dict(used) for model, used in sorted(self.tokens.items()) if +used}
        percentiles = {"p50": self.percentile(0.5), "p95": self.percentile(0.95)}
        return {
            "calls": len(self.durations),
            "errors": dict(sorted(self.errors.items())),
            "retries": self.counts[metrics.RETRIES.name],
            "fallbacks": self.counts[metrics.FALLBACKS.name],
            "tokens": spent,
            "duration_s": {name: _round(value) for name, value in percentiles.items()},
        }

    def lines(self) -> str:
        summary = self.as_json()
        errors = ", ".join(f"{name} {count}" for name, count in summary["errors"].items())
        failed = f"{sum(self.errors.values())} failed" + (f" ({errors})" if errors else "")
        again = f"{summary['retries']} retries, {summary['fallbacks']} fallbacks"
        tokens = "; ".join(
            f"{model} {used.get('input', 0)} input + {used.get('output', 0)} output"
            for model, used in summary["tokens"].items()
        )
        p50, p95 = summary["duration_s"]["p50"], summary["duration_s"]["p95"]
        duration = f"p50 {p50} s, p95 {p95} s" if p50 is not None else "no calls"
        return (
            f"calls: {summary['calls']} upstream, {failed}, {again}\n"
            f"tokens: {tokens or 'none'}\n"
            f"duration: {duration}"
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def check_writable(path: Path) -> str | None:
    """Why `--metrics-file` could not be written at the end (checked before any call), or None."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return f"--metrics-file {path}: is a directory; name a file"
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        return f"--metrics-file {path}: cannot write in {folder}; choose a writable file path"
    return None


def write(path: Path, summary: CallSummary) -> None:
    """Whole or not at all: a temporary file beside `path`, then renamed over it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(summary.as_json(), out, indent=2)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
