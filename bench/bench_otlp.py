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
tests' `otlp_receiver.py`, which decodes every request), its metrics every second (the SDK's
default is a minute: the figure errs on the high side); the spans received are counted, to
show the export ran. Targets: at most 5% more CPU per stream, and the TTFT p50 unchanged beyond
noise (at most 1 ms added). About 4 minutes on the 2-core development machine, `--quick` 1.5.
Writes bench/results/otlp.json.
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
            exporting["OTEL_METRIC_EXPORT_INTERVAL"] = "1000"
            for name, project in projects.items():
                pair = {name: Relay(name, project), f"{name}_otlp": Relay(name, project, exporting)}
                otlp.reset()
                cpu = cpu_duel(pair, base_url, 20, 3 * scale)
                ttft = ttft_duel(pair, base_url, 30 * scale)
                spans = len(otlp.spans())
                results[name] = {"cpu_duel": cpu, "ttft_duel": ttft, "spans_received": spans}
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
        added = results[name]["ttft_duel"]["added_ttft_p50_ms"]
        rows += [
            (f"{name}: CPU per stream, OTLP on vs off (turns)", cpu, "<= 1.05", cpu <= 1.05),
            (f"{name}: added TTFT p50, 1 client (turns)", f"{added:+.2f} ms", "<= 1 ms", added <= 1),
        ]
    return [
        {"target": target, "measured": measured, "goal": goal, "met": bool(met)}
        for target, measured, goal, met in rows
    ]


def report(results: dict[str, Any]) -> None:
    for name in FRAMEWORKS:
        cpu, ttft = results[name]["cpu_duel"], results[name]["ttft_duel"]
        (off, off_cpu), (on, on_cpu) = cpu["cpu_ms_per_stream"].items()
        print(
            f"\n{name}: CPU per stream at {cpu['clients']} clients ({cpu['streams_each']} streams "
            f"each, taking turns): off {off_cpu} ms, OTLP on {on_cpu} ms, ratio {cpu['ratio']}"
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
