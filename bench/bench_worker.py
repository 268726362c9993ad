"""Queue benchmark: `worker` processes' throughput against the ideal for their total concurrency,
and each worker's memory.

Run from the template root, in an environment with cookiecutter and the worker bake's
dependencies (`pip install cookiecutter celery redis "openai[aiohttp]" pydantic-settings rich`)
and Debian's `redis-server`:

    python bench/bench_worker.py [--quick] [--runs 1x8,2x8,2x32]

It bakes the script variant with `worker=celery`, starts a Redis and the bundled fake gateway in
its own process (first token after 50 ms, then 20 deltas 10 ms apart, so an answer takes about
250 ms) and measures in one run:

- `single`: the direct single-request latency (the openai SDK, one request at a time, median);
- for each run N x C (N `worker` processes, `--concurrency C`, threads pool): 1,000 jobs
  enqueued with `enqueue` (its own rate: jobs a second), then the N workers started. From the
  moment the last of them is ready to the last job finished (jobs counted in Redis every 10 ms),
  their throughput is compared with the ideal for their total concurrency, N x C / single jobs
  a second: the ratio is ideal / measured (1.0 is the ideal; 1.2 takes 20% longer). The jobs
  answered before the last worker was ready are left out of it. Then `collect` checks every
  job's row. Peak RSS and CPU per worker come from its own `wait4` after a warm shutdown.

A fresh Redis database (FLUSHALL) for each run. It prints a table and writes
bench/results/worker.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis
from bench_batch import cpu_seconds, single_latency
from bench_common import bake, fake_gateway, redis_server

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
RESULTS = TEMPLATE_DIR / "bench" / "results" / "worker.json"
KEY = "bench-" + "k" * 40
PACKAGE = "alltkn_service"
PENDING = "alltkn:queue:pending"  # jobs.PENDING: the jobs not finished yet


@dataclass
class Run:
    workers: int
    concurrency: int
    jobs: int
    enqueue_s: float = 0.0
    measured_jobs: int = 0  # answered once every worker was ready
    measured_s: float = 0.0
    ideal_per_s: float = 0.0
    peak_rss_mb: list[float] = field(default_factory=list)
    worker_cpu_s: list[float] = field(default_factory=list)
    gateway_cpu_s: float = 0.0
    rows_ok: int = 0
    exit_code: int = 0

    @property
    def name(self) -> str:
        return f"{self.workers}x{self.concurrency}"

    @property
    def per_s(self) -> float:
        return self.measured_jobs / self.measured_s

    @property
    def ratio(self) -> float:
        return self.ideal_per_s / self.per_s


def start_worker(env: dict[str, str], concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", PACKAGE, "worker", "--concurrency", str(concurrency)]
    with log.open("wb") as sink:
        return subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)


def wait_ready(process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while b"worker ready" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"a worker did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def measure(
    run: Run, project: Path, workdir: Path, env: dict[str, str], gateway_pid: int, single: float
) -> Run:
    client = redis.Redis.from_url(env["ALLTKN_QUEUE_URL"])
    client.flushall()
    source = workdir / f"{run.name}.in.jsonl"
    with source.open("w", encoding="utf-8") as rows:
        for index in range(run.jobs):
            text = f"Classify record {index}: the quick brown fox jumps over the lazy dog."
            rows.write(json.dumps({"id": f"r{index}", "prompt": text}) + "\n")
    started = time.perf_counter()
    enqueue = [sys.executable, "-m", PACKAGE, "enqueue", str(source)]
    ids = subprocess.run(enqueue, env=env, capture_output=True, check=True).stdout
    run.enqueue_s = time.perf_counter() - started
    logs = [workdir / f"{run.name}-worker{n}.log" for n in range(run.workers)]
    processes = [start_worker(env, run.concurrency, log) for log in logs]
    try:
        for process, log in zip(processes, logs, strict=True):
            wait_ready(process, log)
        gateway_cpu = cpu_seconds(gateway_pid)
        started, pending = time.perf_counter(), client.zcard(PENDING)
        while client.zcard(PENDING) > 0:
            time.sleep(0.01)
        run.measured_s, run.measured_jobs = time.perf_counter() - started, pending
        run.gateway_cpu_s = cpu_seconds(gateway_pid) - gateway_cpu
    finally:
        for process in processes:
            process.terminate()  # Celery's warm shutdown
        for process in processes:
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            run.peak_rss_mb.append(round(usage.ru_maxrss / 1024, 1))  # kilobytes on Linux
            run.worker_cpu_s.append(round(usage.ru_utime + usage.ru_stime, 2))
    (workdir / "jobs.txt").write_bytes(ids)
    output = workdir / f"{run.name}.out.jsonl"
    collect = [sys.executable, "-m", PACKAGE, "collect", str(workdir / "jobs.txt"), str(output)]
    run.exit_code = subprocess.run(collect, env=env, capture_output=True, check=False).returncode
    run.rows_ok = sum(1 for line in output.open("rb") if b'"content"' in line)
    run.ideal_per_s = run.workers * run.concurrency / single
    return run


def print_table(single: float, runs: list[Run]) -> None:
    print(f"\nsingle request (direct, SDK, median): {single * 1000:.1f} ms")
    print(
        f"\n{'run':6} {'jobs':>5} {'enqueue/s':>9} {'measured':>8} {'ideal/s':>8} {'jobs/s':>7} "
        f"{'ratio':>6} {'peak RSS per worker':>20} {'CPU per worker':>15} {'gw CPU':>7} {'ok':>5}"
    )
    for run in runs:
        rss = ", ".join(f"{mb:.1f}" for mb in run.peak_rss_mb) + " MB"
        cpu = ", ".join(f"{s:.1f}" for s in run.worker_cpu_s) + " s"
        print(
            f"{run.name:6} {run.jobs:>5} {run.jobs / run.enqueue_s:>9.0f} {run.measured_jobs:>8} "
            f"{run.ideal_per_s:>8.1f} {run.per_s:>7.1f} {run.ratio:>6.3f} {rss:>20} {cpu:>15} "
            f"{run.gateway_cpu_s / run.measured_s:>6.0%} {run.rows_ok:>5}"
        )
    print(
        "(measured: the jobs answered once every worker was ready; ratio: ideal / measured "
        "jobs a second; CPU per worker: user + system over its whole life, start-up included)"
    )


def parse_runs(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(n) for n in item.split("x")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(pair) != 2 or min(pair) < 1 for pair in pairs):
        raise SystemExit(f"error: --runs {text!r}: write NxC[,NxC...], e.g. 1x8,2x8")
    return [(pair[0], pair[1]) for pair in pairs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 jobs a run")
    parser.add_argument("--runs", default="1x8,2x8,2x32", help="workers x concurrency, each run")
    args = parser.parse_args()
    jobs = 200 if args.quick else 1_000
    plan = parse_runs(args.runs)
    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    try:
        project = bake("script", workdir, worker="celery")
        with redis_server(workdir) as (url, _), fake_gateway(project) as (base_url, gateway_pid):
            single = single_latency(base_url, samples=20)
            env = {
                **os.environ,
                "ALLTKN_API_KEY": KEY,
                "ALLTKN_BASE_URL": base_url,
                "ALLTKN_QUEUE_URL": url,
                "LOG_LEVEL": "INFO",  # the default; `worker ready` is an INFO line
                "PYTHONPATH": str(project / "src"),
            }
            for name in ("ALLTKN_QUEUE_RPM", "ALLTKN_QUEUE_TPM", "OTEL_EXPORTER_OTLP_ENDPOINT"):
                env.pop(name, None)
            runs = [
                measure(Run(n, c, jobs), project, workdir, env, gateway_pid, single)
                for n, c in plan
            ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(single, runs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "single_latency_ms": round(single * 1000, 2),
        "load_average": os.getloadavg(),
        "runs": [
            {**asdict(run), "name": run.name, "jobs_per_s": run.per_s, "ratio": run.ratio}
            for run in runs
        ],
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS.relative_to(TEMPLATE_DIR)}")
    failed = [run.name for run in runs if run.exit_code or run.rows_ok != run.jobs]
    if failed:
        print(f"error: runs {', '.join(failed)} did not answer every job", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
