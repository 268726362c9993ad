"""Streaming benchmark: the generated FastAPI and Flask services against the floor and a baseline.

Run from the template root, in an environment with the web variants' dependencies
(`pip install -r requirements-dev.txt`):

    python bench/bench_stream.py [--quick]

It bakes both web variants, starts the bundled fake gateway in its own process (first token
after 50 ms, then 20 deltas 10 ms apart), and measures in one run:

- `direct`: the openai SDK streaming from the fake itself (the floor);
- `baseline`: a straightforward FastAPI + AsyncOpenAI relay (bench/baseline_relay.py);
- `fastapi`, `flask`: the generated services, started as their READMEs say.

At 1, 20 and 100 concurrent streams it reports TTFT and total time (p50/p95), the service's CPU
time per stream and failures; then 100 clients that hang up after their first delta of a
300-delta stream, and how many of those upstream streams the fake saw aborted, how fast.
It prints ratios to `direct` (and CPU ratios to `baseline`) and writes bench/results/stream.json.
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
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "alltkn_service.app:app",
            "--port",
            str(port),
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
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "baseline_relay:app",
        "--port",
        str(port),
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


async def run_level(target: str, url: str, level: Level) -> Sample:
    sample = Sample()
    limits = httpx2.Limits(max_connections=level.clients + 10)
    if target == "direct":
        client = AsyncOpenAI(
            base_url=url,
            api_key=KEY,
            max_retries=0,
            http_client=httpx2.AsyncClient(limits=limits, timeout=30),
        )

        async def one() -> None:
            await direct_stream(client, sample)
    else:
        http = httpx2.AsyncClient(limits=limits, timeout=30)

        async def one() -> None:
            await relay_stream(http, url, sample)

    async def worker() -> None:
        for _ in range(level.rounds):
            await one()

    await asyncio.gather(*(worker() for _ in range(level.clients)))
    return sample


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
        f"\n{'path':9} {'clients':>7} {'TTFT p50':>9} {'p95':>8} {'ratio':>6} {'added':>7} "
        f"{'total p50':>9} {'p95':>8} {'CPU/stream':>10} {'vs base':>7} {'fail':>4}"
    )
    for level in levels:
        key = str(level.clients)
        direct = results["direct"][key]
        base = results["baseline"][key]
        for path in ("direct", "baseline", "fastapi", "flask"):
            row = results[path][key]
            ratio = row["ttft_p50_ms"] / direct["ttft_p50_ms"]
            added = row["ttft_p50_ms"] - direct["ttft_p50_ms"]
            cpu = row["cpu_ms_per_stream"]
            vs_base = (
                f"{cpu / base['cpu_ms_per_stream']:.2f}"
                if cpu and base["cpu_ms_per_stream"]
                else "-"
            )
            print(
                f"{path:9} {level.clients:>7} {row['ttft_p50_ms']:>8.1f}ms "
                f"{row['ttft_p95_ms']:>6.1f}ms "
                f"{ratio:>6.2f} {added:>+6.1f}ms {row['total_p50_ms']:>7.1f}ms "
                f"{row['total_p95_ms']:>6.1f}ms {cpu if cpu is not None else '-':>8}ms "
                f"{vs_base:>7} {row['failures']:>4}"
            )
    print("\nhang-ups (300-delta streams, clients leave after the first delta):")
    for path in ("baseline", "fastapi", "flask"):
        hang = results["hang_ups"][path]
        print(
            f"  {path:9} {hang['aborted']:>3} of {hang['hung_up']} aborted upstream, "
            f"all within {hang['all_aborted_within_ms']} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    levels = [Level(1, 10 * rounds), Level(20, rounds), Level(100, rounds)]
    results: dict[str, Any] = {"levels": [level.clients for level in levels], "hang_ups": {}}
    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        projects = {"fastapi": bake("fastapi", workdir), "flask": bake("flask", workdir)}
        with fake_gateway(projects["fastapi"], deltas=20) as (base_url, _):
            results["direct"] = {
                str(level.clients): summarize(
                    asyncio.run(run_level("direct", base_url, level)), None
                )
                for level in levels
            }
            for name in ("baseline", "fastapi", "flask"):
                results[name] = {}
                with service(name, projects.get(name), base_url) as (url, pid):
                    for level in levels:
                        cpu_before = cpu_seconds(pid)
                        sample = asyncio.run(run_level(name, url, level))
                        cpu = cpu_seconds(pid) - cpu_before
                        results[name][str(level.clients)] = summarize(sample, cpu)
        with fake_gateway(projects["fastapi"], deltas=300) as (base_url, _):
            for name in ("baseline", "fastapi", "flask"):
                with service(name, projects.get(name), base_url) as (url, _):
                    results["hang_ups"][name] = measure_hang_ups(url, base_url, 100)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(results, levels)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {RESULTS.relative_to(TEMPLATE_DIR)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
