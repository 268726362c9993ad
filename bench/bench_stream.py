"""Streaming benchmark: the generated FastAPI and Flask services against the floor and a baseline.

Run from the template root, in an environment with the web variants' dependencies
(`pip install -r requirements-dev.txt`) and Debian's `redis-server`:

    python bench/bench_stream.py [--quick]

It bakes both web variants, starts the bundled fake gateway in its own process (first token
after 50 ms, then 20 deltas 10 ms apart), and measures in one run:

- `direct`: the openai SDK streaming from the fake itself (the floor);
- `baseline`: a straightforward FastAPI + AsyncOpenAI relay (bench/baseline_relay.py);
- `fastapi`, `flask`: the generated services, started as their READMEs say, baked with
  `caller_auth=none` (the open service these figures have always measured);
- `fastapi_keys`: FastAPI, caller keys + limits (Redis on loopback): a `caller_auth=keys` bake
  whose one caller (made with `keys create`) has requests-per-minute, tokens-per-minute and
  daily limits too high ever to refuse, its counters in a `redis-server` the benchmark starts
  on a free loopback port (nothing saved), every request with `Authorization: Bearer <key>`.

At 1, 20 and 100 concurrent streams (Flask also at 50, its target), after one uncounted
warm-up round, it reports TTFT and total time (p50/p95), the service's CPU time per stream and
failures; then 100 clients that hang up after their first delta of a 300-delta stream, and how
many of those upstream streams the fake saw aborted, how fast. `direct` is measured again right
before each path and level (at 1 client, alternately stream by stream), and each ratio uses that
neighbouring floor, so that a machine whose load drifts still compares like with like; for the
same reason the CPU target is judged on the baseline and the FastAPI service taking turns at 20
clients (`cpu_duel`). It prints ratios to `direct` (and CPU ratios to `baseline`), then each
target of the streaming issue with its measured value and PASS/FAIL, and writes
bench/results/stream.json.

The caller-keys issue's targets are judged the same way, against the open FastAPI service in
the same run: the limiter's added TTFT p50 at 1 client (<= 1 ms) on the two services taking
turns stream by stream (`keys_ttft_duel`), and its CPU per stream (<= 1.20 x) on the two taking
turns at 20 clients (`keys_cpu_duel`; Redis's own CPU is reported beside it); and no failed
stream at any level (each failure is counted with its status and error category, e.g.
`503 limiter_unavailable`). About 7.5 minutes on the 2-core development machine, `--quick`
about 3.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from bench_common import bake, fake_gateway, free_port, redis_server
from openai import AsyncOpenAI

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
RESULTS = TEMPLATE_DIR / "bench" / "results" / "stream.json"
KEY = "bench-" + "k" * 40
PROMPT = {"prompt": "stream please"}
TICKS = os.sysconf("SC_CLK_TCK")
# The benchmark's caller: limits on every axis, too high for any run to reach.
CALLER_LIMITS = {"rpm": 1_000_000, "tpm": 1_000_000_000, "daily_tokens": 1_000_000_000}
PATHS = ("direct", "baseline", "fastapi", "fastapi_keys", "flask")
RELAYS = ("baseline", "fastapi", "fastapi_keys", "flask")


@dataclass
class Level:
    clients: int
    rounds: int


@dataclass
class Sample:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    failures: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # failures: status and category

    def failed(self, reason: str) -> None:
        self.failures += 1
        self.reasons[reason] += 1


@dataclass(frozen=True)
class Relay:
    """One measured relay: how it starts (`kind`: baseline, fastapi or flask), from which bake,
    with which extra environment, and the headers its requests carry; `wrapper`: a command it
    runs under (valgrind, for bench_metrics_cost.py's instruction counts)."""

    kind: str
    project: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    wrapper: tuple[str, ...] = ()


# -- processes ---------------------------------------------------------------------------------

# The Flask app in one process, on werkzeug's threaded server (Flask's own dependency), its
# request lines off: what callgrind can count (gunicorn's forked worker dumped nothing).
FLASK_SINGLE = """
import logging, sys
from werkzeug.serving import run_simple
from alltkn_service.app import app
logging.getLogger("werkzeug").setLevel(logging.WARNING)
run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True)
"""


def service_command(name: str, port: int) -> list[str]:
    if name == "fastapi":
        # As the generated README runs it: httptools is a dependency, the loop is asyncio.
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "alltkn_service.app:app",
            "--port",
            str(port),
            "--loop",
            "asyncio",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    if name == "flask":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "alltkn_service.app:app",
        ]
    if name == "flask_single":  # bench_metrics_cost.py's instruction counts (see there)
        return [sys.executable, "-c", FLASK_SINGLE, str(port)]
    # What `pip install fastapi uvicorn` runs (h11, asyncio), pinned so that the generated
    # service's extra (httptools) being installed here does not change the baseline.
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "baseline_relay:app",
        "--port",
        str(port),
        "--loop",
        "asyncio",
        "--http",
        "h11",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


@contextmanager
def service(relay: Relay, base_url: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    project = relay.project
    cwd = project if project else TEMPLATE_DIR / "bench"
    env = {
        **os.environ,
        "ALLTKN_API_KEY": KEY,
        "ALLTKN_BASE_URL": base_url,
        "ALLTKN_MAX_RETRIES": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(project / "src") if project else str(cwd),
        **relay.env,
    }
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [*relay.wrapper, *service_command(relay.kind, port)],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + (120 if relay.wrapper else 20)
        try:
            while True:
                try:
                    httpx2.post(
                        url + "/v1/chat/stream", json=PROMPT, headers=relay.headers, timeout=5
                    ).raise_for_status()
                    break
                except httpx2.HTTPError as exc:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        said = log.read().decode(errors="replace")
                        raise SystemExit(f"{relay.kind} did not serve ({exc}):\n{said}") from None
                    time.sleep(0.1)
            yield url, process.pid
        finally:
            process.terminate()
            process.wait()


def add_caller(project: Path, callers_file: Path) -> str:
    """A caller with every limit set (too high to refuse), made as the README says; its key."""
    limits = [f"--{name.replace('_', '-')}={value}" for name, value in CALLER_LIMITS.items()]
    made = subprocess.run(
        [sys.executable, "-m", "alltkn_service", "keys", "create", "bench", *limits],
        cwd=project,
        env={
            **os.environ,
            "ALLTKN_API_KEY": KEY,
            "ALLTKN_CALLERS_FILE": str(callers_file),
            "PYTHONPATH": str(project / "src"),
        },
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip()


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU of a process and its children (gunicorn workers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if root_pid in (pid, ppid):
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


# -- load --------------------------------------------------------------------------------------


async def relay_stream(client: httpx2.AsyncClient, url: str, sample: Sample) -> None:
    started = time.perf_counter()
    first, why = None, "no delta"
    try:
        async with client.stream("POST", url + "/v1/chat/stream", json=PROMPT) as response:
            async for line in response.aiter_lines():
                if first is None and line.startswith('data: {"delta"'):
                    first = time.perf_counter() - started
                elif '"category":' in line:  # an error answer, or an error event
                    why = line.split('"category":', 1)[1].split(",", 1)[0].strip(' "')
            ok = response.status_code == 200 and first is not None
            why = f"{response.status_code} {why}"
    except httpx2.HTTPError as exc:
        ok, why = False, type(exc).__name__
    if not ok or first is None:
        sample.failed(why)
        return
    sample.ttft.append(first)
    sample.total.append(time.perf_counter() - started)


async def direct_stream(client: AsyncOpenAI, sample: Sample) -> None:
    started = time.perf_counter()
    first = None
    try:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
        )
        async with stream:
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
    except Exception as exc:
        sample.failed(type(exc).__name__)
        return
    if first is None:
        sample.failed("no delta")
        return
    sample.ttft.append(first)
    sample.total.append(time.perf_counter() - started)


async def run_level(
    target: str,
    url: str,
    level: Level,
    pid: int | None = None,
    *,
    floor_url: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[Sample, Sample, float | None]:
    """`level.rounds` streams per client, all clients at once, after one warm-up round (new
    connections, first-call caches) that is not counted; also the CPU time process `pid` used
    during the counted rounds. With `floor_url` (one client only), each stream of `target` is
    preceded by a direct one to `floor_url`, so that both see the same moment of a machine whose
    load drifts; returns (target's sample, direct sample, CPU). `headers`: sent with every
    request to `url` (a caller key)."""
    limits = httpx2.Limits(max_connections=level.clients + 10)
    sdk = AsyncOpenAI(
        base_url=floor_url or url,
        api_key=KEY,
        max_retries=0,
        http_client=httpx2.AsyncClient(limits=limits, timeout=30),
    )
    http = httpx2.AsyncClient(limits=limits, timeout=30, headers=headers)

    async def one(sample: Sample, floor: Sample) -> None:
        if floor_url:
            await direct_stream(sdk, floor)
        if target == "direct":
            await direct_stream(sdk, sample)
        else:
            await relay_stream(http, url, sample)

    async def worker(sample: Sample, floor: Sample, rounds: int) -> None:
        for _ in range(rounds):
            await one(sample, floor)

    await asyncio.gather(*(worker(Sample(), Sample(), 1) for _ in range(level.clients)))
    cpu_before = cpu_seconds(pid) if pid else 0.0
    sample, floor = Sample(), Sample()
    await asyncio.gather(*(worker(sample, floor, level.rounds) for _ in range(level.clients)))
    return sample, floor, (cpu_seconds(pid) - cpu_before if pid else None)


async def hang_ups(url: str, clients: int, headers: dict[str, str]) -> int:
    """Open `clients` streams, hang up each after its first delta; returns how many hung up."""
    hung = 0

    async def one() -> None:
        nonlocal hung
        async with (
            httpx2.AsyncClient(timeout=30, headers=headers) as http,
            http.stream("POST", url + "/v1/chat/stream", json=PROMPT) as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith('data: {"delta"'):
                    hung += 1
                    return

    await asyncio.gather(*(one() for _ in range(clients)))
    return hung


def cpu_duel(
    relays: dict[str, Relay],
    base_url: str,
    clients: int,
    turns: int,
    *,
    also: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """Service CPU per stream of two relays (the reference first), both running, taking turns
    at `clients` concurrent streams: on a machine whose load drifts, CPU time measured minutes
    apart differs by a third; turns a second apart compare like with like. `also`: (name, pid)
    of a process the second relay uses (Redis), whose CPU during its turns is reported too."""
    (reference, first), (contender, second) = relays.items()
    spent = {reference: 0.0, contender: 0.0}
    streams = {reference: 0, contender: 0}
    also_spent = 0.0
    with (
        service(first, base_url) as (first_url, first_pid),
        service(second, base_url) as (second_url, second_pid),
    ):
        for _ in range(turns):
            for name, relay, url, pid in (
                (reference, first, first_url, first_pid),
                (contender, second, second_url, second_pid),
            ):
                also_before = cpu_seconds(also[1]) if also and name == contender else 0.0
                sample, _, cpu = asyncio.run(
                    run_level(name, url, Level(clients, 2), pid, headers=relay.headers)
                )
                if also and name == contender:
                    also_spent += cpu_seconds(also[1]) - also_before
                spent[name] += cpu or 0.0
                streams[name] += len(sample.ttft)
    per_stream = {name: round(spent[name] / streams[name] * 1000, 2) for name in spent}
    duel: dict[str, Any] = {
        "clients": clients,
        "streams_each": streams[contender],
        "cpu_ms_per_stream": per_stream,
        "ratio": round(per_stream[contender] / per_stream[reference], 3),
    }
    if also:
        # Includes the warm-up rounds' share: an upper bound.
        duel[f"{also[0]}_cpu_ms_per_stream"] = round(also_spent / streams[contender] * 1000, 3)
    return duel


def ttft_duel(relays: dict[str, Relay], base_url: str, pairs: int) -> dict[str, Any]:
    """TTFT of two relays (the reference first), both running, one client taking turns stream
    by stream (the order swapped every pair), so that both see the same moments of a machine
    whose load drifts; the added TTFT is the difference of their medians."""
    (reference, first), (contender, second) = relays.items()

    async def run(urls: dict[str, str]) -> tuple[dict[str, Sample], list[float]]:
        samples = {reference: Sample(), contender: Sample()}
        differences = []  # contender - reference, pair by pair
        clients = {
            name: httpx2.AsyncClient(timeout=30, headers=relay.headers)
            for name, relay in relays.items()
        }
        async with clients[reference], clients[contender]:
            for _ in range(5):  # warm-up, not counted
                for name in samples:
                    await relay_stream(clients[name], urls[name], Sample())
            for index in range(pairs):
                order = [reference, contender] if index % 2 == 0 else [contender, reference]
                ttft = {}
                for name in order:
                    before = len(samples[name].ttft)
                    await relay_stream(clients[name], urls[name], samples[name])
                    if len(samples[name].ttft) > before:
                        ttft[name] = samples[name].ttft[-1]
                if len(ttft) == 2:
                    differences.append(ttft[contender] - ttft[reference])
        return samples, differences

    with service(first, base_url) as (first_url, _), service(second, base_url) as (second_url, _):
        samples, differences = asyncio.run(run({reference: first_url, contender: second_url}))
    rows = {name: summarize(sample, None) for name, sample in samples.items()}
    return {
        "clients": 1,
        "pairs": pairs,
        reference: rows[reference],
        contender: rows[contender],
        "added_ttft_p50_ms": round(
            rows[contender]["ttft_p50_ms"] - rows[reference]["ttft_p50_ms"], 2
        ),
        "paired_difference_p50_ms": round(pct(differences, 0.5) * 1000, 2),
    }


def fake_stats(base_url: str) -> dict[str, int]:
    root = base_url.removesuffix("/api/v1")
    return dict(httpx2.get(root + "/_fake/stats", timeout=5).json())


def measure_hang_ups(
    url: str, base_url: str, clients: int, headers: dict[str, str]
) -> dict[str, Any]:
    before = fake_stats(base_url)["aborted_streams"]
    hung = asyncio.run(hang_ups(url, clients, headers))
    hung_at = time.perf_counter()
    aborted, settled_after = 0, None
    while time.perf_counter() - hung_at < 5:
        aborted = fake_stats(base_url)["aborted_streams"] - before
        if aborted >= hung:
            settled_after = time.perf_counter() - hung_at
            break
        time.sleep(0.005)
    return {
        "clients": clients,
        "hung_up": hung,
        "aborted": aborted,
        "all_aborted_within_ms": (
            None if settled_after is None else round(settled_after * 1000, 1)
        ),
    }


# -- report ------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(sample: Sample, cpu: float | None) -> dict[str, Any]:
    streams = len(sample.ttft)
    return {
        "streams": streams,
        "failures": sample.failures,
        "ttft_p50_ms": round(pct(sample.ttft, 0.5) * 1000, 2),
        "ttft_p95_ms": round(pct(sample.ttft, 0.95) * 1000, 2),
        "total_p50_ms": round(pct(sample.total, 0.5) * 1000, 2),
        "total_p95_ms": round(pct(sample.total, 0.95) * 1000, 2),
        "cpu_ms_per_stream": None if cpu is None or not streams else round(cpu / streams * 1000, 2),
        "failure_reasons": dict(sample.reasons),
    }


def print_table(results: dict[str, Any], levels: list[Level]) -> None:
    print(
        f"\n{'path':12} {'clients':>7} {'TTFT p50':>9} {'p95':>8} {'direct':>10} {'ratio':>6} "
        f"{'added':>9} "
        f"{'total p50':>9} {'p95':>8} {'CPU/stream':>10} {'vs base':>7} {'fail':>4}"
    )
    for level in levels:
        key = str(level.clients)
        base = results["baseline"].get(key)
        for path in PATHS:
            row = results[path].get(key)
            if row is None:
                continue
            floor = row.get("direct_ttft_p50_ms", row["ttft_p50_ms"])
            ratio = row["ttft_p50_ms"] / floor
            added = row["ttft_p50_ms"] - floor
            cpu = row["cpu_ms_per_stream"]
            vs_base = (
                f"{cpu / base['cpu_ms_per_stream']:.2f}"
                if cpu and base and base["cpu_ms_per_stream"]
                else "-"
            )
            print(
                f"{path:12} {level.clients:>7} {row['ttft_p50_ms']:>8.1f}ms "
                f"{row['ttft_p95_ms']:>6.1f}ms {floor:>8.1f}ms "
                f"{ratio:>6.2f} {added:>+7.1f}ms {row['total_p50_ms']:>7.1f}ms "
                f"{row['total_p95_ms']:>6.1f}ms {cpu if cpu is not None else '-':>8}ms "
                f"{vs_base:>7} {row['failures']:>4}"
            )
    for level in levels:
        for path in PATHS:
            row = results[path].get(str(level.clients))
            if row and row["failures"]:
                print(f"  failed, {path} at {level.clients} clients: {row['failure_reasons']}")
    print("\nfastapi_keys: FastAPI, caller keys + limits (Redis on loopback)")
    for duel in (results["cpu_duel"], results["keys_cpu_duel"]):
        (a, a_cpu), (b, b_cpu) = duel["cpu_ms_per_stream"].items()
        redis_cpu = duel.get("redis_cpu_ms_per_stream")
        print(
            f"\nCPU per stream, {a} and {b} taking turns at {duel['clients']} clients "
            f"({duel['streams_each']} streams each): {a} {a_cpu} ms, {b} {b_cpu} ms, "
            f"ratio {duel['ratio']}"
            + ("" if redis_cpu is None else f"; redis-server {redis_cpu} ms per {b} stream")
        )
    duel = results["keys_ttft_duel"]
    print(
        f"TTFT p50, fastapi and fastapi_keys taking turns at 1 client ({duel['pairs']} pairs): "
        f"fastapi {duel['fastapi']['ttft_p50_ms']} ms, fastapi_keys "
        f"{duel['fastapi_keys']['ttft_p50_ms']} ms, added {duel['added_ttft_p50_ms']:+.2f} ms "
        f"(median pair difference {duel['paired_difference_p50_ms']:+.2f} ms)"
    )
    print("\nhang-ups (300-delta streams, clients leave after the first delta):")
    for path in RELAYS:
        hang = results["hang_ups"][path]
        print(
            f"  {path:12} {hang['aborted']:>3} of {hang['hung_up']} aborted upstream, "
            f"all within {hang['all_aborted_within_ms']} ms"
        )


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The streaming issue's targets and the caller-keys issue's (`keys:`), each with the
    measured value and whether it is met."""
    fastapi, flask, direct = results["fastapi"], results["flask"], results["direct"]

    def ratio(row: dict[str, Any], clients: str) -> float:
        return round(row[clients]["ttft_p50_ms"] / row[clients]["direct_ttft_p50_ms"], 3)

    cpu_ratio = results["cpu_duel"]["ratio"]
    added = round(fastapi["1"]["ttft_p50_ms"] - fastapi["1"]["direct_ttft_p50_ms"], 2)
    fastapi_failures = sum(row["failures"] for row in fastapi.values())
    hang, flask_hang = results["hang_ups"]["fastapi"], results["hang_ups"]["flask"]

    def all_aborted_within(row: dict[str, Any], limit_ms: float) -> bool:
        within = row["all_aborted_within_ms"]
        return row["aborted"] == row["hung_up"] == row["clients"] and within <= limit_ms

    # Without buffering the first delta arrives long before the gateway's last one (the
    # fake takes ~250 ms per answer); a buffered stream would deliver both at the end.
    unbuffered = flask["1"]["ttft_p50_ms"] < direct["1"]["total_p50_ms"] / 2
    ratio_20, ratio_100 = ratio(fastapi, "20"), ratio(fastapi, "100")
    # Caller keys + limits, against the open FastAPI service, taking turns.
    keys_added = results["keys_ttft_duel"]["added_ttft_p50_ms"]
    keys_cpu = results["keys_cpu_duel"]["ratio"]
    keys_failures = sum(row["failures"] for row in results["fastapi_keys"].values())
    keys_failures += results["keys_ttft_duel"]["fastapi_keys"]["failures"]
    targets = [
        ("fastapi: added TTFT p50, 1 client", f"{added:+.2f} ms", "<= 1 ms", added <= 1),
        ("fastapi: TTFT ratio, 20 clients", ratio_20, "<= 1.10", ratio_20 <= 1.10),
        ("fastapi: TTFT ratio, 100 clients", ratio_100, "<= 1.30", ratio_100 <= 1.30),
        ("fastapi: failures, all levels", fastapi_failures, "0", fastapi_failures == 0),
        ("fastapi: CPU per stream vs baseline (turns)", cpu_ratio, "<= 0.50", cpu_ratio <= 0.5),
        (
            "fastapi: hang-ups aborted upstream",
            f"{hang['aborted']}/{hang['hung_up']} in {hang['all_aborted_within_ms']} ms",
            "100/100 in <= 100 ms",
            all_aborted_within(hang, 100),
        ),
        (
            "flask: first delta before the gateway ends",
            f"{flask['1']['ttft_p50_ms']} ms",
            f"< {direct['1']['total_p50_ms'] / 2:.0f} ms",
            unbuffered,
        ),
        ("flask: failures, 50 clients", flask["50"]["failures"], "0", flask["50"]["failures"] == 0),
        (
            "flask: hang-ups aborted upstream",
            f"{flask_hang['aborted']}/{flask_hang['hung_up']} "
            f"in {flask_hang['all_aborted_within_ms']} ms",
            "100/100 in <= 1000 ms",
            all_aborted_within(flask_hang, 1000),
        ),
        (
            "keys: added TTFT p50 vs fastapi, 1 client (turns)",
            f"{keys_added:+.2f} ms",
            "<= 1 ms",
            keys_added <= 1,
        ),
        ("keys: CPU per stream vs fastapi (turns)", keys_cpu, "<= 1.20", keys_cpu <= 1.20),
        ("keys: failures, all levels", keys_failures, "0", keys_failures == 0),
    ]
    return [
        {"target": name, "measured": measured, "goal": goal, "met": bool(met)}
        for name, measured, goal, met in targets
    ]


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\ntargets:")
    for target in targets:
        verdict = "PASS" if target["met"] else "FAIL"
        print(f"  {verdict}  {target['target']:50} {target['measured']!s:>22}  ({target['goal']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    scale = 1 if args.quick else 3
    levels = [Level(1, 10 * scale), Level(20, 3 * scale), Level(100, 2 * scale)]
    flask_levels = [*levels[:2], Level(50, 2 * scale), levels[2]]
    results: dict[str, Any] = {
        "levels": [level.clients for level in levels],
        "flask_levels": [level.clients for level in flask_levels],
        "fastapi_keys_caller": CALLER_LIMITS,
        "direct": {},
        "hang_ups": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        keys_project = bake("fastapi", workdir, caller_auth="keys")
        callers_file = workdir / "callers.json"
        caller_key = add_caller(keys_project, callers_file)
        with redis_server(workdir) as (redis_url, redis_pid):
            relays = {
                "baseline": Relay("baseline"),
                "fastapi": Relay("fastapi", bake("fastapi", workdir, caller_auth="none")),
                "fastapi_keys": Relay(
                    "fastapi",
                    keys_project,
                    env={
                        "ALLTKN_CALLERS_FILE": str(callers_file),
                        "ALLTKN_LIMITS_REDIS_URL": redis_url,
                    },
                    headers={"Authorization": f"Bearer {caller_key}"},
                ),
                "flask": Relay("flask", bake("flask", workdir, caller_auth="none")),
            }
            fake_project = keys_project
            with fake_gateway(fake_project, deltas=20) as (base_url, _):
                for name, relay in relays.items():
                    results[name] = {}
                    with service(relay, base_url) as (url, pid):
                        for level in flask_levels if name == "flask" else levels:
                            # The floor is measured right before each path, so that a machine
                            # whose load drifts compares each path with its own moment.
                            if level.clients == 1:  # alternating, for a fair added TTFT
                                sample, direct, cpu = asyncio.run(
                                    run_level(
                                        name,
                                        url,
                                        level,
                                        pid,
                                        floor_url=base_url,
                                        headers=relay.headers,
                                    )
                                )
                            else:
                                direct, _, _ = asyncio.run(run_level("direct", base_url, level))
                                sample, _, cpu = asyncio.run(
                                    run_level(name, url, level, pid, headers=relay.headers)
                                )
                            row = summarize(sample, cpu)
                            row["direct_ttft_p50_ms"] = summarize(direct, None)["ttft_p50_ms"]
                            results[name][str(level.clients)] = row
                            results["direct"].setdefault(
                                str(level.clients), summarize(direct, None)
                            )
                pair = {"baseline": relays["baseline"], "fastapi": relays["fastapi"]}
                results["cpu_duel"] = cpu_duel(pair, base_url, 20, 2 * scale)
                keys_pair = {"fastapi": relays["fastapi"], "fastapi_keys": relays["fastapi_keys"]}
                results["keys_ttft_duel"] = ttft_duel(keys_pair, base_url, 30 * scale)
                results["keys_cpu_duel"] = cpu_duel(
                    keys_pair, base_url, 20, 3 * scale, also=("redis", redis_pid)
                )
            with fake_gateway(fake_project, deltas=300) as (base_url, _):
                for name in RELAYS:
                    relay = relays[name]
                    with service(relay, base_url) as (url, _):
                        results["hang_ups"][name] = measure_hang_ups(
                            url, base_url, 100, relay.headers
                        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["targets"] = check_targets(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print_table(results, flask_levels)
    print_targets(results["targets"])
    print(f"\nwrote {RESULTS.relative_to(TEMPLATE_DIR)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
