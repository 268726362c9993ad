"""What exporting spans and metrics over OTLP costs a stream: the generated web services with
`OTEL_EXPORTER_OTLP_ENDPOINT` set (telemetry.py) against the same services without, in one run.

Run from the template root, in an environment with the web variants' dependencies
(`pip install -r requirements-dev.txt`):

    python bench/bench_otlp.py [--quick]

For FastAPI and Flask (`caller_auth=none` bakes; the bundled fake gateway as in
bench_stream.py: first token after 50 ms, then 20 deltas 10 ms apart) the two services run side
by side and take turns, so that a machine whose load drifts compares like with like: CPU per
stream at 20 concurrent streams (`cpu_duel`), TTFT at one client, stream by stream
(`ttft_duel`). A CPU duel favours one side by several per cent on a busy machine (an A/A duel,
the same service twice, came out at 1.09), so each is run both ways round and the ratio is
the geometric mean of the two, in which the order cancels out. The exporting service sends to
an OTLP/HTTP receiver in this process (the generated tests' `otlp_receiver.py`, which decodes
every request), its spans as the SDK batches them by default, its metrics every 10 s (the
SDK's default is a minute); the spans received are counted, to show the export ran. The CPU is
measured again with one trace in ten sampled (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`,
`OTEL_TRACES_SAMPLER_ARG=0.1`; the metrics still count every call). Targets: at most 5% more
CPU per stream, the TTFT p50 unchanged beyond noise (at most 1 ms added). About 10 minutes on
the 2-core development machine, `--quick` 4. Writes bench/results/otlp.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_common import bake, fake_gateway
from bench_stream import Relay, cpu_duel, ttft_duel

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
RESULTS = TEMPLATE_DIR / "bench" / "results" / "otlp.json"
FRAMEWORKS = ("fastapi", "flask")
SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns, for a smoke run")
    scale = 1 if parser.parse_args().quick else 3
    results: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-otlp-"))
    try:
        projects = {name: bake(name, workdir, caller_auth="none") for name in FRAMEWORKS}
        sys.path.insert(0, str(projects["fastapi"]))  # its tests' receiver
        from tests.otlp_receiver import OtlpReceiver

        with OtlpReceiver() as otlp, fake_gateway(projects["fastapi"]) as (base_url, _):
            exporting = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}
            exporting["OTEL_METRIC_EXPORT_INTERVAL"] = "10000"
            sampled = {**exporting, **SAMPLED}
            for name, project in projects.items():
                off, on = Relay(name, project), Relay(name, project, exporting)
                otlp.reset()
                results[name] = {
                    "cpu": both_ways(off, on, base_url, 3 * scale),
                    "ttft_duel": ttft_duel({name: off, f"{name}_otlp": on}, base_url, 30 * scale),
                    "spans_received": len(otlp.spans()),
                    "cpu_sampled": both_ways(
                        off, Relay(name, project, sampled), base_url, 3 * scale
                    ),
                }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["targets"] = targets(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    report(results)
    print(f"\nwrote {RESULTS.relative_to(TEMPLATE_DIR)}")
    return 0


def both_ways(off: Relay, on: Relay, base_url: str, turns: int) -> dict[str, Any]:
    """CPU per stream of `on` over `off` at 20 clients, taking turns, `off` first then `on`
    first; `ratio` is the geometric mean of the two ratios."""
    off_first = cpu_duel({"off": off, "on": on}, base_url, 20, turns)
    on_first = cpu_duel({"on": on, "off": off}, base_url, 20, turns)
    ratios = [duel["cpu_ms_per_stream"]["on"] / duel["cpu_ms_per_stream"]["off"]
              for duel in (off_first, on_first)]  # fmt: skip
    ratio = round(math.sqrt(ratios[0] * ratios[1]), 3)
    return {"off_first": off_first, "on_first": on_first, "ratio": ratio}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in FRAMEWORKS:
        cpu, sampled = results[name]["cpu"]["ratio"], results[name]["cpu_sampled"]["ratio"]
        added = results[name]["ttft_duel"]["added_ttft_p50_ms"]
        rows += [
            (f"{name}: CPU per stream, OTLP on vs off (both ways)", cpu, "<= 1.05", cpu <= 1.05),
            (f"{name}: the same, 1 trace in 10 sampled", sampled, "<= 1.05", sampled <= 1.05),
            (f"{name}: added TTFT p50, 1 client", f"{added:+.2f} ms", "<= 1 ms", added <= 1),
        ]
    return [
        {"target": target, "measured": measured, "goal": goal, "met": bool(met)}
        for target, measured, goal, met in rows
    ]


def report(results: dict[str, Any]) -> None:
    for name in FRAMEWORKS:
        ttft, off, on = results[name]["ttft_duel"], name, f"{name}_otlp"
        for label, cpu in (
            ("OTLP on", results[name]["cpu"]),
            ("1 in 10", results[name]["cpu_sampled"]),
        ):
            first, second = cpu["off_first"], cpu["on_first"]
            print(
                f"{name}, {label}: CPU per stream at 20 clients, taking turns ("
                f"{first['streams_each']} streams each way), ms: off first "
                f"{first['cpu_ms_per_stream']}, on first {second['cpu_ms_per_stream']}; "
                f"ratio {cpu['ratio']}"
            )
        print(
            f"{name}: TTFT p50 at 1 client ({ttft['pairs']} pairs): off "
            f"{ttft[off]['ttft_p50_ms']} ms, OTLP on {ttft[on]['ttft_p50_ms']} ms, added "
            f"{ttft['added_ttft_p50_ms']:+.2f} ms (median pair difference "
            f"{ttft['paired_difference_p50_ms']:+.2f} ms); "
            f"{results[name]['spans_received']} spans received"
        )
    print("\ntargets:")
    for target in results["targets"]:
        verdict = "PASS" if target["met"] else "FAIL"
        print(f"  {verdict}  {target['target']:48} {target['measured']!s:>10}  ({target['goal']})")


if __name__ == "__main__":
    raise SystemExit(main())
