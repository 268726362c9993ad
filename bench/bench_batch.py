"""Batch benchmark: the script variant's `batch` command against the ideal, and its memory.

Run from the template root, in an environment with cookiecutter and the script variant's
dependencies (`pip install cookiecutter "openai[aiohttp]" pydantic-settings rich`):

    python bench/bench_batch.py [--quick]

It bakes the script variant, starts the bundled fake gateway in its own process (first token
after 50 ms, then 20 deltas 10 ms apart, so a non-stream answer takes about 250 ms) and measures
in one run:

- `single`: the direct single-request latency (the openai SDK, one request at a time, median);
- `batch`: `python -m <package> batch` over 1,000 distinct prompts at concurrency 50, compared
  with the ideal 1,000 / 50 x single; the target is <= 1.15 x ideal and peak RSS <= 150 MB;
- `flat`: the same over 10,000 prompts, to show that memory stays flat (input streamed).

Wall time is the batch's own (from its summary) and the whole process's (interpreter start and
imports included). Peak RSS is the batch process's own (`wait4`), RSS samples come from /proc.
CPU use of the batch and of the fake gateway tells which side would be the bottleneck. It prints
a table of ratios and writes bench/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_common import bake, fake_gateway

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
RESULTS = TEMPLATE_DIR / "bench" / "results" / "batch.json"
KEY = "bench-" + "k" * 40
PACKAGE = "alltkn_service"
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_RATIO = 1.15
TARGET_RSS_MB = 150.0
WALL_RE = re.compile(r"wall time ([0-9.]+) s")


@dataclass
class Run:
    name: str
    prompts: int
    concurrency: int
    batch_wall_s: float = 0.0
    process_wall_s: float = 0.0
    ideal_s: float = 0.0
    peak_rss_mb: float = 0.0
    rss_mb_at: dict[str, float] = field(default_factory=dict)
    batch_cpu_s: float = 0.0
    gateway_cpu_s: float = 0.0
    rows_ok: int = 0
    exit_code: int = 0

    @property
    def ratio(self) -> float:
        return self.batch_wall_s / self.ideal_s

    @property
    def process_ratio(self) -> float:
        return self.process_wall_s / self.ideal_s


# -- processes ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def running(pid: int) -> bool:
    """Whether the child still runs, without reaping it (wait4 must get its rusage)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def lines_in(path: Path) -> int:
    try:
        with path.open("rb") as rows:
            return sum(1 for _ in rows)
    except OSError:
        return 0


# -- measurements ------------------------------------------------------------------------------


def single_latency(base_url: str, samples: int) -> float:
    """Median seconds of one non-stream request with the openai SDK, one at a time."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    timings = []
    for index in range(samples + 3):
        started = time.perf_counter()
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"warm {index}"}]
        )
        if index >= 3:  # the first requests open the connection
            timings.append(time.perf_counter() - started)
    client.close()
    return statistics.median(timings)


def write_input(path: Path, prompts: int) -> Path:
    with path.open("w", encoding="utf-8") as rows:
        for index in range(prompts):
            text = f"Classify record {index}: the quick brown fox jumps over the lazy dog."
            rows.write(json.dumps({"id": f"r{index}", "prompt": text}) + "\n")
    return path


def run_batch(
    run: Run, project: Path, workdir: Path, base_url: str, gateway_pid: int, single: float
) -> Run:
    source = write_input(workdir / f"{run.name}.in.jsonl", run.prompts)
    output = workdir / f"{run.name}.out.jsonl"
    env = {
        **os.environ,
        "ALLTKN_API_KEY": KEY,
        "ALLTKN_BASE_URL": base_url,
        "PYTHONPATH": str(project / "src"),
    }
    command = [sys.executable, "-m", PACKAGE, "batch", str(source), str(output)]
    command += ["--concurrency", str(run.concurrency)]
    gateway_cpu = cpu_seconds(gateway_pid)
    with (workdir / f"{run.name}.stderr").open("w") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        samples = sample_rss(process, output, run.prompts)
        assert process.stdout is not None
        summary = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        run.process_wall_s = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    run.exit_code = process.returncode
    run.gateway_cpu_s = cpu_seconds(gateway_pid) - gateway_cpu
    run.batch_cpu_s = usage.ru_utime + usage.ru_stime
    run.peak_rss_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
    run.rss_mb_at = samples
    match = WALL_RE.search(summary)
    run.batch_wall_s = float(match.group(1)) if match else float("nan")
    run.ideal_s = run.prompts / run.concurrency * single
    run.rows_ok = sum(1 for line in output.open("rb") if b'"content"' in line)
    return run


def sample_rss(process: subprocess.Popen[str], output: Path, total: int) -> dict[str, float]:
    """RSS when 10%, 25%, 50%, 75% and 90% of the rows are written (polled every 50 ms)."""
    marks = {10: 0.0, 25: 0.0, 50: 0.0, 75: 0.0, 90: 0.0}
    taken: dict[str, float] = {}
    while running(process.pid) and len(taken) < len(marks):
        done = lines_in(output) * 100 / total
        for mark in marks:
            if done >= mark and f"{mark}%" not in taken and (rss := rss_mb(process.pid)):
                taken[f"{mark}%"] = round(rss, 1)
        time.sleep(0.05)
    return taken


# -- report ------------------------------------------------------------------------------------


def print_table(single: float, runs: list[Run]) -> None:
    print(f"\nsingle request (direct, SDK, median): {single * 1000:.1f} ms")
    print(
        f"\n{'run':6} {'prompts':>7} {'conc':>4} {'ideal':>7} {'batch':>7} {'ratio':>6} "
        f"{'process':>8} {'ratio':>6} {'peak RSS':>9} {'batch CPU':>9} {'gw CPU':>7} {'ok':>6}"
    )
    for run in runs:
        print(
            f"{run.name:6} {run.prompts:>7} {run.concurrency:>4} {run.ideal_s:>6.2f}s "
            f"{run.batch_wall_s:>6.2f}s {run.ratio:>6.3f} {run.process_wall_s:>7.2f}s "
            f"{run.process_ratio:>6.3f} {run.peak_rss_mb:>7.1f}MB "
            f"{run.batch_cpu_s / run.process_wall_s:>8.0%} "
            f"{run.gateway_cpu_s / run.process_wall_s:>6.0%} {run.rows_ok:>6}"
        )
    for run in runs:
        curve = ", ".join(f"{mark} {mb} MB" for mark, mb in run.rss_mb_at.items())
        print(f"RSS during {run.name}: {curve}")
    batch, flat = runs[0], runs[-1]
    growth = flat.peak_rss_mb / batch.peak_rss_mb
    print(
        f"\ntargets: batch/ideal {batch.ratio:.3f} (<= {TARGET_RATIO}), "
        f"peak RSS {batch.peak_rss_mb:.1f} MB (<= {TARGET_RSS_MB:.0f} MB); "
        f"peak RSS with {flat.prompts} prompts is x{growth:.2f} that with {batch.prompts}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 and 2,000 prompts")
    args = parser.parse_args()
    small, large = (200, 2_000) if args.quick else (1_000, 10_000)
    workdir = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        project = bake("script", workdir)
        with fake_gateway(project) as (base_url, gateway_pid):
            single = single_latency(base_url, samples=20)
            runs = [
                run_batch(Run("batch", small, 50), project, workdir, base_url, gateway_pid, single),
                run_batch(Run("flat", large, 50), project, workdir, base_url, gateway_pid, single),
            ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(single, runs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "single_latency_ms": round(single * 1000, 2),
        "targets": {"ratio": TARGET_RATIO, "peak_rss_mb": TARGET_RSS_MB},
        "runs": [
            {**asdict(run), "ratio": run.ratio, "process_ratio": run.process_ratio} for run in runs
        ],
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS.relative_to(TEMPLATE_DIR)}")
    failed = [run.name for run in runs if run.exit_code or run.rows_ok != run.prompts]
    if failed:
        print(f"error: runs {', '.join(failed)} did not answer every prompt", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
