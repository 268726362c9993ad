"""What metrics and traces cost a stream: the generated web services with `ALLTKN_METRICS=off`,
with Prometheus (the default), with OTLP on top, and with OTLP sampling 1 trace in 10, in duels
run in one invocation.

Run from the template root, in an environment with the web variants' dependencies
(`pip install -r requirements-dev.txt`); Linux (CPU time is read from /proc):

    python bench/bench_metrics_cost.py [--quick] [--no-instructions]

For FastAPI and Flask (`caller_auth=none` bakes, run as bench_stream.py runs them: uvicorn, one
process, counting in memory; gunicorn, one worker, counting in files; the bundled fake gateway,
first token after 50 ms, then 20 deltas 10 ms apart) each duel runs its two services side by
side and takes turns, A B B A A B ..., so that a machine whose load drifts compares like with
like and neither side is always first (nor always started first: half the turns each). Each
turn is 20 concurrent streams per round, a few rounds (after an uncounted warm-up round); the
CPU time per stream is the service's user + system time (its workers included) over the turns,
and the ratio is B's over A's. Duels:

- `a_a`: Prometheus against itself: the noise a duel shows when nothing differs;
- `prometheus`: metrics off (A) against Prometheus (B);
- `otlp`: Prometheus (A) against Prometheus + OTLP (B), exporting to an OTLP/HTTP receiver in
  this process (the generated tests' `otlp_receiver.py`, which decodes every request), spans as
  the SDK batches them by default, metrics every 10 s (the SDK's default is a minute);
- `otlp_sampled`: the same with one trace in ten sampled (`OTEL_TRACES_SAMPLER=
  parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.1`; metrics still count every call).

Each duel also gives the spread of its turn-pair ratios (p10, p90). TTFT: metrics off against
Prometheus, and Prometheus against Prometheus + OTLP, at one client taking turns stream by stream
(bench_stream.ttft_duel). Instructions: with valgrind installed (and not `--no-instructions`), each
configuration is run once more under callgrind (instrumented only while it serves the measured
streams: `--instr-atstart=no`, `callgrind_control -i on`, then a dump) and the instructions per
stream are counted, which the machine's load does not change; their ratios are the same duels'
(Flask in one process on werkzeug: see `instructions`). Targets: at most 5% more CPU per stream (and
instructions), TTFT p50 unchanged beyond noise (at most 1 ms added). Writes
bench/results/metrics_cost.json. About 40 minutes on the 2-core development machine at load 12 to 20
(`--no-instructions` and `--only-instructions` split it in two), `--quick` about 12.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import bake, fake_gateway
from bench_stream import Level, Relay, run_level, service, ttft_duel

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
RESULTS = TEMPLATE_DIR / "bench" / "results" / "metrics_cost.json"
FRAMEWORKS = ("fastapi", "flask")
CLIENTS = 20
SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
# (duel, A, B): the configurations by name (`configurations`).
DUELS = (
    ("a_a", "prometheus", "prometheus"),
    ("prometheus", "off", "prometheus"),
    ("otlp", "prometheus", "otlp"),
    ("otlp_sampled", "prometheus", "otlp_sampled"),
)
LIMIT = 1.05


def configurations(otlp_url: str) -> dict[str, dict[str, str]]:
    exporting = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url, "OTEL_METRIC_EXPORT_INTERVAL": "10000"}
    return {
        "off": {"ALLTKN_METRICS": "off"},
        "prometheus": {},
        "otlp": exporting,
        "otlp_sampled": {**exporting, **SAMPLED},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns, for a smoke run")
    parser.add_argument("--no-instructions", action="store_true", help="skip callgrind")
    parser.add_argument("--only-instructions", action="store_true", help="callgrind alone")
    args = parser.parse_args()
    turns, rounds, pairs = (4, 3, 30) if args.quick else (20, 5, 80)
    counting = not args.no_instructions and shutil.which("valgrind") is not None
    results: dict[str, Any] = {"load_average_at_start": load()}
    print(f"load average at the start: {results['load_average_at_start']}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-metrics-cost-"))
    try:
        projects = {name: bake(name, workdir, caller_auth="none") for name in FRAMEWORKS}
        sys.path.insert(0, str(projects["fastapi"]))  # its tests' receiver
        from tests.otlp_receiver import OtlpReceiver

        with OtlpReceiver() as otlp, fake_gateway(projects["fastapi"]) as (base_url, _):
            configs = configurations(otlp.url)
            for name, project in projects.items():
                relays = {config: Relay(name, project, env) for config, env in configs.items()}
                row: dict[str, Any] = {}
                if counting:  # see `instructions`
                    row["instructions"] = instructions(relays, base_url, workdir)
                if args.only_instructions:
                    results[name] = row
                    continue
                for duel, a, b in DUELS:
                    row[duel] = cpu_duel(relays[a], relays[b], base_url, turns, rounds)
                    print(f"{name} {duel}: {summary(row[duel])}", flush=True)
                otlp.reset()
                row["ttft_prometheus"] = ttft_duel(
                    {"off": relays["off"], "prometheus": relays["prometheus"]}, base_url, pairs
                )
                row["ttft_otlp"] = ttft_duel(
                    {"prometheus": relays["prometheus"], "otlp": relays["otlp"]}, base_url, pairs
                )
                row["spans_received"] = len(otlp.spans())
                results[name] = row
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["load_average_at_end"] = load()
    results["targets"] = targets(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results_file = (
        RESULTS.with_stem("metrics_cost_instructions") if args.only_instructions else RESULTS
    )
    results_file.write_text(json.dumps(results, indent=2))
    report(results)
    print(f"\nwrote {results_file.relative_to(TEMPLATE_DIR)}")
    return 0


def load() -> list[float]:
    return [round(value, 1) for value in os.getloadavg()]


def cpu_duel(a: Relay, b: Relay, base_url: str, turns: int, rounds: int) -> dict[str, Any]:
    """CPU per stream of B over A, both running, taking turns A B B A A B ... at `CLIENTS`
    concurrent streams, `rounds` rounds a turn; started A then B for half the turns, then B
    then A."""
    spent = {"a": 0.0, "b": 0.0}
    streams = {"a": 0, "b": 0}
    failures = 0
    pair_ratios = []
    relays = {"a": a, "b": b}
    for half, (first, second) in enumerate([("a", "b"), ("b", "a")]):
        with (
            service(relays[first], base_url) as started_first,
            service(relays[second], base_url) as started_second,
        ):
            sides = {first: started_first, second: started_second}
            for turn in range(half * turns // 2, (half + 1) * turns // 2):
                per_stream = {}
                for side in ("a", "b") if turn % 2 == 0 else ("b", "a"):
                    url, pid = sides[side]
                    level = Level(CLIENTS, rounds)
                    sample, _, cpu = asyncio.run(run_level(side, url, level, pid))
                    spent[side] += cpu or 0.0
                    streams[side] += len(sample.ttft)
                    failures += sample.failures
                    per_stream[side] = (cpu or 0.0) / max(len(sample.ttft), 1)
                if per_stream["a"]:
                    pair_ratios.append(per_stream["b"] / per_stream["a"])
    ms = {side: round(spent[side] / streams[side] * 1000, 3) for side in spent}
    pair_ratios.sort()
    return {
        "streams_each": streams["a"],
        "failures": failures,
        "cpu_ms_per_stream": ms,
        "ratio": round(ms["b"] / ms["a"], 3),
        "pair_ratio_p10": round(pair_ratios[len(pair_ratios) // 10], 3),
        "pair_ratio_p50": round(statistics.median(pair_ratios), 3),
        "pair_ratio_p90": round(pair_ratios[(len(pair_ratios) * 9) // 10 - 1], 3),
    }


def instructions(relays: dict[str, Relay], base_url: str, workdir: Path) -> dict[str, Any]:
    """Instructions per stream of each configuration under callgrind, and the duels' ratios.
    Callgrind runs a service some 50 times slower, so what OpenTelemetry does on a timer would
    count many times over: no timed export here; the spans go out when a batch is full (320: the
    160 streams counted make 320 spans, one batch exported); the metrics' export, once a minute
    by default, is not counted. Sampling is left out (the CPU duel measures it). Flask is counted
    in one process on werkzeug's threaded server (bench_stream.FLASK_SINGLE), its metrics in
    memory: gunicorn's worker, forked under callgrind, dumped nothing; so Flask's counts are the
    app's and werkzeug's, not gunicorn's."""
    per_stream = {}
    untimed = {"OTEL_BSP_SCHEDULE_DELAY": "3600000", "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
               "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "320"}  # fmt: skip
    for config, relay in relays.items():
        if config == "otlp_sampled":
            continue
        out = workdir / f"callgrind-{relay.kind}-{config}"
        out.mkdir()
        wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={out}/out.%p")  # fmt: skip
        env = {**relay.env, **(untimed if "OTEL_EXPORTER_OTLP_ENDPOINT" in relay.env else {})}
        kind = "flask_single" if relay.kind == "flask" else relay.kind
        counted = Relay(kind, relay.project, env, relay.headers, wrapper)
        with service(counted, base_url) as (url, pid):
            asyncio.run(run_level(config, url, Level(CLIENTS, 1), None))  # warm, not counted
            tree = [str(p) for p in process_tree(pid)]
            control(["-i", "on", *tree])
            sample, _, _ = asyncio.run(run_level(config, url, Level(CLIENTS, 7), None))
            control(["-d", *tree])
            time.sleep(1)
        streams = CLIENTS * 8 - sample.failures  # run_level's warm-up round is counted here
        total = sum(
            int(line.split()[1])
            for dump in out.glob("out.*.*")  # the dumps: out.<pid>.<n>
            for line in dump.read_text().splitlines()
            if line.startswith("totals:")
        )
        if not total:
            raise SystemExit(f"callgrind dumped no instructions for {relay.kind} {config}")
        per_stream[config] = round(total / streams)
        print(f"{relay.kind} {config}: {per_stream[config]:,} instructions per stream", flush=True)
    return {
        "per_stream": per_stream,
        "ratios": {duel: round(per_stream[b] / per_stream[a], 3) for duel, a, b in DUELS[1:3]},
    }


def process_tree(root: int) -> list[int]:
    """`root` and its children (gunicorn's worker), from /proc."""
    found = [root]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == root:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def control(arguments: list[str]) -> None:
    subprocess.run(["callgrind_control", *arguments], capture_output=True, check=True, timeout=60)


def summary(duel: dict[str, Any]) -> str:
    ms = duel["cpu_ms_per_stream"]
    return (
        f"CPU per stream A {ms['a']} ms, B {ms['b']} ms ({duel['streams_each']} streams each, "
        f"{duel['failures']} failed): ratio {duel['ratio']} (turn pairs p10 "
        f"{duel['pair_ratio_p10']}, p50 {duel['pair_ratio_p50']}, p90 {duel['pair_ratio_p90']})"
    )


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in FRAMEWORKS:
        row = results[name]
        noise = abs(row["a_a"]["ratio"] - 1) if "a_a" in row else 0
        for duel, label in (("prometheus", "Prometheus vs off"), ("otlp", "+OTLP vs Prometheus"),
                            ("otlp_sampled", "+OTLP 1 in 10 vs Prometheus")):  # fmt: skip
            if duel in row:
                ratio = row[duel]["ratio"]
                rows.append((f"{name}: CPU per stream, {label}", ratio, f"<= {LIMIT}",
                             ratio <= LIMIT, f"A/A noise {noise:.3f}"))  # fmt: skip
            if duel in row.get("instructions", {}).get("ratios", {}):
                counted = row["instructions"]["ratios"][duel]
                rows.append((f"{name}: instructions per stream, {label}", counted,
                              f"<= {LIMIT}", counted <= LIMIT, "callgrind"))  # fmt: skip
        for duel in ("ttft_prometheus", "ttft_otlp") if "ttft_otlp" in row else ():
            added = row[duel]["added_ttft_p50_ms"]
            rows.append((f"{name}: added TTFT p50, 1 client ({duel[5:]})", f"{added:+.2f} ms",
                         "<= 1 ms", added <= 1, f"{row[duel]['pairs']} pairs"))  # fmt: skip
    return [
        {"target": target, "measured": measured, "goal": goal, "met": bool(met), "note": note}
        for target, measured, goal, met, note in rows
    ]


def report(results: dict[str, Any]) -> None:
    print(f"\nload average: {results['load_average_at_start']} at the start, "
          f"{results['load_average_at_end']} at the end")  # fmt: skip
    for name in FRAMEWORKS:
        row = results[name]
        for duel, a, b in DUELS if "a_a" in row else ():
            print(f"{name} {duel} ({a} vs {b}): {summary(row[duel])}")
        for duel in ("ttft_prometheus", "ttft_otlp") if "ttft_otlp" in row else ():
            ttft = row[duel]
            a, b = (key for key in ttft if isinstance(ttft[key], dict))
            print(
                f"{name}: TTFT p50 at 1 client ({ttft['pairs']} pairs): {a} "
                f"{ttft[a]['ttft_p50_ms']} ms, {b} {ttft[b]['ttft_p50_ms']} ms, added "
                f"{ttft['added_ttft_p50_ms']:+.2f} ms (median pair difference "
                f"{ttft['paired_difference_p50_ms']:+.2f} ms)"
            )
        if "spans_received" in row:
            print(f"{name}: {row['spans_received']} spans received")
        if "instructions" in row:
            counted = row["instructions"]
            print(f"{name}: instructions per stream {counted['per_stream']}, ratios "
                  f"{counted['ratios']}")  # fmt: skip
    print("\ntargets:")
    for target in results["targets"]:
        verdict = "PASS" if target["met"] else "FAIL"
        print(f"  {verdict}  {target['target']:52} {target['measured']!s:>10}  "
              f"({target['goal']}; {target['note']})")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
