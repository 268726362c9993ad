"""What exporting spans and metrics over OTLP costs a stream: the generated web services with
`OTEL_EXPORTER_OTLP_ENDPOINT` set (telemetry.py) against the same services without, in one run.

Run from the template root, in an environment with the web variants' dependencies
(`pip install -r requirements-dev.txt`):

    python bench/bench_otlp.py [--quick]

For FastAPI and Flask (`caller_auth=none` bakes; the bundled fake gateway as in
bench_stream.py: first token after 50 ms, then 20 deltas 10 ms apart) the two services run side
by side and take turns, so that a machine whose load drifts compares like with like: CPU per
stream at 20 concurrent streams (`cpu_duel`), TTFT at one client, stream by stream
(`ttft_duel`). The exporting one sends to an OTLP/HTTP receiver in this process (the generated
tests' `otlp_receiver.py`, which decodes every request), its spans as the SDK batches them by
default, its metrics every 10 s (the SDK's default is a minute); the spans received are
counted, to show the export ran. Targets: at most 5% more CPU per stream, and the TTFT p50
unchanged beyond noise (at most 1 ms added). The CPU is also measured with one trace in ten
sampled (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.1`; the
metrics still count every call). About 6 minutes on the 2-core development machine, `--quick`
2. Writes bench/results/otlp.json.
"""

from __future__ import annotations

import argparse
import json
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
                    "cpu_duel": cpu_duel({name: off, f"{name}_otlp": on}, base_url, 20, 3 * scale),
                    "ttft_duel": ttft_duel({name: off, f"{name}_otlp": on}, base_url, 30 * scale),
                    "spans_received": len(otlp.spans()),
                    "cpu_duel_sampled": cpu_duel(
                        {name: off, f"{name}_otlp_sampled": Relay(name, project, sampled)},
                        base_url,
                        20,
                        3 * scale,
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


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in FRAMEWORKS:
        cpu = results[name]["cpu_duel"]["ratio"]
        sampled = results[name]["cpu_duel_sampled"]["ratio"]
        added = results[name]["ttft_duel"]["added_ttft_p50_ms"]
        rows += [
            (f"{name}: CPU per stream, OTLP on vs off (turns)", cpu, "<= 1.05", cpu <= 1.05),
            (f"{name}: the same, 1 trace in 10 sampled", sampled, "<= 1.05", sampled <= 1.05),
            (f"{name}: added TTFT p50, 1 client", f"{added:+.2f} ms", "<= 1 ms", added <= 1),
        ]
    return [
        {"target": target, "measured": measured, "goal": goal, "met": bool(met)}
        for target, measured, goal, met in rows
    ]


def report(results: dict[str, Any]) -> None:
    for name in FRAMEWORKS:
        ttft = results[name]["ttft_duel"]
        for duel in results[name]["cpu_duel"], results[name]["cpu_duel_sampled"]:
            (off, off_cpu), (on, on_cpu) = duel["cpu_ms_per_stream"].items()
            print(
                f"{name}: CPU per stream at {duel['clients']} clients ({duel['streams_each']} "
                f"streams each, taking turns): off {off_cpu} ms, {on} {on_cpu} ms, "
                f"ratio {duel['ratio']}"
            )
        on = f"{name}_otlp"
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
