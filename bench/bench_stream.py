"""Streaming benchmark: the generated FastAPI and Flask services against the floor and a baseline.

Run from the template root, in an environment with the web variants' dependencies
(`pip install -r requirements-dev.txt`):

    python bench/bench_stream.py [--quick]

It bakes both web variants, starts the bundled fake gateway in its own process (first token
after 50 ms, then 20 deltas 10 ms apart), and measures in one run:

- `direct`: the openai SDK streaming from the fake itself (the floor);
- `baseline`: a straightforward FastAPI + AsyncOpenAI relay (bench/baseline_relay.py);
- `fastapi`, `flask`: the generated services, started as their READMEs say.

At 1, 20 and 100 concurrent streams (Flask also at 50, its target), after one uncounted
warm-up round, it reports TTFT and total time (p50/p95), the service's CPU time per stream and
failures; then 100 clients that hang up after their first delta of a 300-delta stream, and how
many of those upstream streams the fake saw aborted, how fast. `direct` is measured again right
before each path and level (at 1 client, alternately stream by stream), and each ratio uses that
neighbouring floor, so that a machine whose load drifts still compares like with like; for the
same reason the CPU target is judged on the baseline and the FastAPI service taking turns at 20
clients (`cpu_duel`). It prints ratios to `direct` (and CPU ratios to `baseline`), then each
target of the streaming issue with its measured value and PASS/FAIL, and writes
bench/results/stream.json. About 3.5 minutes; `--quick` about 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from bench_common import bake, fake_gateway
from openai import AsyncOpenAI

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
RESULTS = TEMPLATE_DIR / "bench" / "results" / "stream.json"
KEY = "bench-" + "k" * 40
PROMPT = {"prompt": "stream please"}
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Level:
    clients: int
    rounds: int


@dataclass
class Sample:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    failures: int = 0


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_command(name: str, project: Path | None, port: int) -> list[str]:
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
def service(name: str, project: Path | None, base_url: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    cwd = project if project else TEMPLATE_DIR / "bench"
    env = {
        **os.environ,
        "ALLTKN_API_KEY": KEY,
        "ALLTKN_BASE_URL": base_url,
        "ALLTKN_MAX_RETRIES": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(project / "src") if project else str(cwd),
    }
    process = subprocess.Popen(
        service_command(name, project, port),
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx2.post(url + "/v1/chat/stream", json=PROMPT, timeout=5).raise_for_status()
            break
        except httpx2.HTTPError:
            time.sleep(0.1)
    try:
        yield url, process.pid
    finally:
        process.terminate()
        process.wait()


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
    first = None
    try:
        async with client.stream("POST", url + "/v1/chat/stream", json=PROMPT) as response:
            async for line in response.aiter_lines():
                if first is None and line.startswith('data: {"delta"'):
                    first = time.perf_counter() - started
            ok = response.status_code == 200 and first is not None
    except httpx2.HTTPError:
        ok = False
    if not ok or first is None:
        sample.failures += 1
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
    except Exception:
        sample.failures += 1
        return
    if first is None:
        sample.failures += 1
        return
    sample.ttft.append(first)
    sample.total.append(time.perf_counter() - started)


async def run_level(
    target: str, url: str, level: Level, pid: int | None = None, *, floor_url: str = ""
) -> tuple[Sample, Sample, float | None]:
    """`level.rounds` streams per client, all clients at once, after one warm-up round (new
    connections, first-call caches) that is not counted; also the CPU time process `pid` used
    during the counted rounds. With `floor_url` (one client only), each stream of `target` is
    preceded by a direct one to `floor_url`, so that both see the same moment of a machine whose
    load drifts; returns (target's sample, direct sample, CPU)."""
    limits = httpx2.Limits(max_connections=level.clients + 10)
    sdk = AsyncOpenAI(
        base_url=floor_url or url,
        api_key=KEY,
        max_retries=0,
        http_client=httpx2.AsyncClient(limits=limits, timeout=30),
    )
    http = httpx2.AsyncClient(limits=limits, timeout=30)

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


async def hang_ups(url: str, clients: int) -> int:
    """Open `clients` streams, hang up each after its first delta; returns how many hung up."""
    hung = 0

    async def one() -> None:
        nonlocal hung
        async with (
            httpx2.AsyncClient(timeout=30) as http,
            http.stream("POST", url + "/v1/chat/stream", json=PROMPT) as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith('data: {"delta"'):
                    hung += 1
                    return

    await asyncio.gather(*(one() for _ in range(clients)))
    return hung


def cpu_duel(fastapi: Path, base_url: str, clients: int, turns: int) -> dict[str, Any]:
    """Service CPU per stream of the baseline and the FastAPI service, both running, taking
    turns at `clients` concurrent streams: on a machine whose load drifts, CPU time measured
    minutes apart differs by a third; turns a second apart compare like with like."""
    spent = {"baseline": 0.0, "fastapi": 0.0}
    streams = {"baseline": 0, "fastapi": 0}
    with (
        service("baseline", None, base_url) as (baseline_url, baseline_pid),
        service("fastapi", fastapi, base_url) as (fastapi_url, fastapi_pid),
    ):
        for _ in range(turns):
            for name, url, pid in (
                ("baseline", baseline_url, baseline_pid),
                ("fastapi", fastapi_url, fastapi_pid),
            ):
                sample, _, cpu = asyncio.run(run_level(name, url, Level(clients, 2), pid))
                spent[name] += cpu or 0.0
                streams[name] += len(sample.ttft)
    per_stream = {name: round(spent[name] / streams[name] * 1000, 2) for name in spent}
    return {
        "clients": clients,
        "streams_each": streams["fastapi"],
        "cpu_ms_per_stream": per_stream,
        "ratio": round(per_stream["fastapi"] / per_stream["baseline"], 3),
    }


def fake_stats(base_url: str) -> dict[str, int]:
    root = base_url.removesuffix("/api/v1")
    return dict(httpx2.get(root + "/_fake/stats", timeout=5).json())


def measure_hang_ups(url: str, base_url: str, clients: int) -> dict[str, Any]:
    before = fake_stats(base_url)["aborted_streams"]
    hung = asyncio.run(hang_ups(url, clients))
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
    }


def print_table(results: dict[str, Any], levels: list[Level]) -> None:
    print(
        f"\n{'path':9} {'clients':>7} {'TTFT p50':>9} {'p95':>8} {'direct':>10} {'ratio':>6} "
        f"{'added':>9} "
        f"{'total p50':>9} {'p95':>8} {'CPU/stream':>10} {'vs base':>7} {'fail':>4}"
    )
    for level in levels:
        key = str(level.clients)
        base = results["baseline"].get(key)
        for path in ("direct", "baseline", "fastapi", "flask"):
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
                f"{path:9} {level.clients:>7} {row['ttft_p50_ms']:>8.1f}ms "
                f"{row['ttft_p95_ms']:>6.1f}ms {floor:>8.1f}ms "
                f"{ratio:>6.2f} {added:>+7.1f}ms {row['total_p50_ms']:>7.1f}ms "
                f"{row['total_p95_ms']:>6.1f}ms {cpu if cpu is not None else '-':>8}ms "
                f"{vs_base:>7} {row['failures']:>4}"
            )
    duel = results["cpu_duel"]
    print(
        f"\nCPU per stream, baseline and fastapi taking turns at {duel['clients']} clients "
        f"({duel['streams_each']} streams each): baseline {duel['cpu_ms_per_stream']['baseline']}"
        f" ms, fastapi {duel['cpu_ms_per_stream']['fastapi']} ms, ratio {duel['ratio']}"
    )
    print("\nhang-ups (300-delta streams, clients leave after the first delta):")
    for path in ("baseline", "fastapi", "flask"):
        hang = results["hang_ups"][path]
        print(
            f"  {path:9} {hang['aborted']:>3} of {hang['hung_up']} aborted upstream, "
            f"all within {hang['all_aborted_within_ms']} ms"
        )


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The streaming issue's targets, each with the measured value and whether it is met."""
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
    ]
    return [
        {"target": name, "measured": measured, "goal": goal, "met": bool(met)}
        for name, measured, goal, met in targets
    ]


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\ntargets:")
    for target in targets:
        verdict = "PASS" if target["met"] else "FAIL"
        print(f"  {verdict}  {target['target']:42} {target['measured']!s:>22}  ({target['goal']})")


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
        "direct": {},
        "hang_ups": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        projects = {"fastapi": bake("fastapi", workdir), "flask": bake("flask", workdir)}
        with fake_gateway(projects["fastapi"], deltas=20) as (base_url, _):
            for name in ("baseline", "fastapi", "flask"):
                results[name] = {}
                with service(name, projects.get(name), base_url) as (url, pid):
                    for level in flask_levels if name == "flask" else levels:
                        # The floor is measured right before each path, so that a machine
                        # whose load drifts compares each path with its own moment.
                        if level.clients == 1:  # alternating, for a fair added TTFT
                            sample, direct, cpu = asyncio.run(
                                run_level(name, url, level, pid, floor_url=base_url)
                            )
                        else:
                            direct, _, _ = asyncio.run(run_level("direct", base_url, level))
                            sample, _, cpu = asyncio.run(run_level(name, url, level, pid))
                        row = summarize(sample, cpu)
                        row["direct_ttft_p50_ms"] = summarize(direct, None)["ttft_p50_ms"]
                        results[name][str(level.clients)] = row
                        results["direct"].setdefault(str(level.clients), summarize(direct, None))
            results["cpu_duel"] = cpu_duel(projects["fastapi"], base_url, 20, 2 * scale)
        with fake_gateway(projects["fastapi"], deltas=300) as (base_url, _):
            for name in ("baseline", "fastapi", "flask"):
                with service(name, projects.get(name), base_url) as (url, _):
                    results["hang_ups"][name] = measure_hang_ups(url, base_url, 100)
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
