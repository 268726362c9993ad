"""Worker recycling benchmark: /metrics stays exact, fast and bounded while workers are replaced.

Run from the template root, in an environment with the web variants' dependencies
(`pip install -r requirements-dev.txt`); Linux (it finds uvicorn's workers in /proc):

    python bench/bench_metrics_recycle.py [--recycles N] [--rate R] [--recycle-every S]

It bakes both web variants (`caller_auth=none`), starts the bundled fake gateway in its own
process, and runs each service as its README says with 4 workers and PROMETHEUS_MULTIPROC_DIR
in a temporary directory, while 8 clients send R (12) chats a second between them (every 5th
streamed), each on a new connection, until N (200) workers were replaced, one every S (1.5)
seconds:

- FastAPI: one worker at a time is stopped with SIGTERM (its requests finish) and `serve`'s
  supervisor starts another, as it does for any worker that exits (each a new interpreter,
  about 1.2 s of CPU to boot);
- Flask: gunicorn's `--max-requests` (GUNICORN_CMD_ARGS), set from the traffic so that a worker
  is replaced about every S seconds, with `--max-requests-jitter` as gunicorn advises.

The traffic is set, not as fast as the clients can go: a service saturated by the benchmark
itself would time its own queue, not the scrape (an earlier version's clients and replacements,
as fast as they could go, kept the 2-core machine at load 8 and /healthz at seconds).

Every 100 ms a scraper in its own process (out of the clients' GIL) times GET /healthz then
GET /metrics, and reads the same directory as a scrape does to report the scrape's CPU time
(merging included), which the machine's load does not stretch; every fifth round it also holds
the clients and times a scrape with no request in flight. At the end: the last scrape's calls
and input and output tokens against the server's call log (one line per attempt, written from
the same record) and the answers the clients got; the scrape times (wall: p50, p95, max, beside
/healthz's and the same scrape before any recycling; CPU: p50, p95, max); the most files the
directory held. The targets, PASS/FAIL: totals exact, scrape under 100 ms (CPU p95; wall p95
while recycling, less /healthz, and with no request in flight), directory bounded (at most 2
files per worker, the 2 merged files and the lock). Writes bench/results/metrics_recycle.json.
About 12 minutes on the 2-core development machine, `--recycles 20` about 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
from bench_common import bake, fake_gateway, free_port
from prometheus_client.parser import text_string_to_metric_families

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
RESULTS = TEMPLATE_DIR / "bench" / "results" / "metrics_recycle.json"
KEY = "bench-" + "k" * 40
WORKERS = 4
CLIENTS = 8
# The scraper's requests a second: /healthz and /metrics every 0.1 s, a quiet scrape every 0.5 s.
SCRAPER_RATE = 22
BOUND = 2 * WORKERS + 3
# The scraper, in its own process (the clients' threads share this one's GIL, which would stretch
# its timings): per line read, "http" times GET /healthz then GET /metrics over a new connection
# each (wall ms, the machine's moment included); "cpu" reads the same directory as a scrape does
# and reports its CPU time (merging included), which the machine's load does not stretch.
SIDE_SCRAPER = """
import http.client, sys, time
from pathlib import Path
from alltkn_service.prometheus import PrometheusSink
sink, port = PrometheusSink(Path(sys.argv[1])), int(sys.argv[2])
def get(path):
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise SystemExit(f"GET {path}: {response.status}")
    return (time.perf_counter() - started) * 1000
for line in sys.stdin:
    try:
        if line.strip() == "cpu":
            started = time.thread_time()
            sink.exposition()
            print((time.thread_time() - started) * 1000, flush=True)
        elif line.strip() == "metrics":
            print(get("/metrics"), flush=True)
        else:
            print(get("/healthz"), get("/metrics"), flush=True)
    except (OSError, http.client.HTTPException) as exc:  # a failed scrape: counted, not fatal
        print("failed", type(exc).__name__, exc, flush=True)
"""
CLOSE = {"Connection": "close"}  # a new connection per request: the workers share the traffic
TIMEOUT = 120  # no answer given up on by the client: each one it missed would count as extra


def service_command(kind: str, port: int) -> list[str]:
    if kind == "fastapi":
        return [sys.executable, "-m", "alltkn_service", "serve", "--port", str(port)]
    return [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
            "--bind", f"127.0.0.1:{port}", "alltkn_service.app:app"]  # fmt: skip


class Run:
    """What the clients were answered and what the scraper saw."""

    def __init__(self, url: str, directory: Path, side: subprocess.Popen[str]) -> None:
        self.url, self.directory, self.side = url, directory, side
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answered = 0
        self.tokens = {"input": 0, "output": 0}
        self.failures: Counter[str] = Counter()
        self.scrape_ms: list[float] = []
        self.healthz_ms: list[float] = []  # just before each scrape: the machine's moment
        self.scrape_cpu_ms: list[float] = []
        self.quiet_ms: list[float] = []  # scrapes taken with no request in flight
        self.most_files = 0
        self.go = threading.Event()  # cleared: the clients hold their next request
        self.go.set()
        self.in_flight = 0

    def client(self, number: int, interval_s: float) -> None:
        """Chats and streams until stopped, one every `interval_s` (at once when late), on one
        client object (a new connection each)."""
        sent, http = number, httpx2.Client(headers=CLOSE, timeout=TIMEOUT)
        due = time.monotonic() + interval_s * number / CLIENTS  # the clients spread out
        while not self.stop.is_set():
            self.stop.wait(max(due - time.monotonic(), 0))
            due = max(due + interval_s, time.monotonic() - interval_s)  # no burst after a stall
            self.go.wait()
            sent += 1
            with self.lock:
                self.in_flight += 1
            try:
                usage = self.stream(http) if sent % 5 == 0 else self.chat(http)
            except (httpx2.HTTPError, ValueError) as exc:
                with self.lock:
                    self.failures[type(exc).__name__] += 1
                    self.in_flight -= 1
                continue
            with self.lock:
                self.in_flight -= 1
                self.answered += 1
                self.tokens["input"] += usage["prompt_tokens"]
                self.tokens["output"] += usage["completion_tokens"]

    def chat(self, http: httpx2.Client) -> dict[str, int]:
        answer = http.post(self.url + "/v1/chat", json={"prompt": "a b c"})
        answer.raise_for_status()
        return dict(answer.json()["usage"])

    def stream(self, http: httpx2.Client) -> dict[str, int]:
        with http.stream(
            "POST", self.url + "/v1/chat/stream", json={"prompt": "a b c d"}
        ) as response:
            response.raise_for_status()
            done = [line for line in response.iter_lines() if line.startswith('data: {"model"')]
        if not done:
            raise ValueError("the stream ended without its done event")
        return dict(json.loads(done[0].removeprefix("data: "))["usage"])

    def scrape(self) -> str:
        """GET /metrics, for its text (the totals)."""
        response = httpx2.get(self.url + "/metrics", headers=CLOSE, timeout=TIMEOUT)
        response.raise_for_status()
        return response.text

    def ask_side(self, what: str) -> list[float]:
        """The side scraper's answer to `what` ("http", "metrics", "cpu"): its timings, ms."""
        stdin, stdout = self.side.stdin, self.side.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(what + "\n")
        stdin.flush()
        answer = stdout.readline()
        if not answer:
            raise httpx2.HTTPError(f"the side scraper stopped ({what})")
        if answer.startswith("failed "):
            raise httpx2.HTTPError(answer.removeprefix("failed ").strip())
        return [float(value) for value in answer.split()]

    def timed_scrape(self) -> None:
        """GET /healthz then GET /metrics, each timed: the difference is the scrape's own cost,
        whatever the load on the machine at that moment."""
        healthz, scrape = self.ask_side("http")
        self.healthz_ms.append(healthz)
        self.scrape_ms.append(scrape)

    def quiet_scrape(self) -> None:
        """Hold the clients, wait for the requests in flight to finish, time one scrape: its
        wall time with nothing else asked of the service (the directory as recycling left it)."""
        self.go.clear()
        try:
            deadline = time.monotonic() + 30
            while self.in_flight and time.monotonic() < deadline:
                time.sleep(0.005)
            self.quiet_ms += self.ask_side("metrics")
        finally:
            self.go.set()

    def scraper(self) -> None:
        rounds = 0
        while not self.stop.wait(0.1):
            rounds += 1
            if rounds % 5 == 0:  # every half second or so
                try:
                    self.quiet_scrape()
                except httpx2.HTTPError as exc:
                    with self.lock:
                        self.failures[f"quiet scrape {exc}"[:120]] += 1
            self.most_files = max(self.most_files, len(os.listdir(self.directory)))
            self.scrape_cpu_ms += self.ask_side("cpu")
            try:
                self.timed_scrape()
            except httpx2.HTTPError as exc:
                with self.lock:
                    self.failures[f"scrape {exc}"[:120]] += 1


def logged(log: Path) -> dict[str, float]:
    """The calls and tokens of the server's call log lines (`upstream_call`), every worker's."""
    found = {"calls": 0.0, "input_tokens": 0.0, "output_tokens": 0.0, "answered": 0.0}
    for line in log.read_text(errors="replace").splitlines():
        if '"upstream_call"' in line:
            call = json.loads(line)
            found["calls"] += 1
            found["input_tokens"] += call["prompt_tokens"] or 0
            found["output_tokens"] += call["completion_tokens"] or 0
            found["answered"] += call["status"] == "ok"
    return found


def totals(text: str) -> dict[str, float]:
    """The calls and the input and output tokens a scrape counts (every label set)."""
    found = {"calls": 0.0, "input_tokens": 0.0, "output_tokens": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gen_ai_client_operation_duration_seconds_count":
                found["calls"] += sample.value
            elif sample.name == "gen_ai_client_token_usage_sum":
                found[sample.labels["gen_ai_token_type"] + "_tokens"] += sample.value
    return found


def uvicorn_workers(supervisor: int) -> list[int]:
    """The live worker processes `serve` started (multiprocessing spawn), from /proc."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == supervisor and fields[0] != "Z" and b"spawn_main" in command:
            workers.append(int(stat.parent.name))
    return workers


def recycle_uvicorn(process: subprocess.Popen[bytes], recycles: int, every_s: float) -> int:
    stopped: set[int] = set()
    last = 0.0
    while len(stopped) < recycles:
        time.sleep(max(last + every_s - time.monotonic(), 0.05))
        live = [pid for pid in uvicorn_workers(process.pid) if pid not in stopped]
        if len(live) == WORKERS:  # one down at a time: three serve while it boots
            os.kill(live[0], signal.SIGTERM)
            stopped.add(live[0])
            last = time.monotonic()
    deadline = time.monotonic() + 60
    while len(uvicorn_workers(process.pid)) < WORKERS and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(stopped)


def recycle_gunicorn(log: Path, recycles: int) -> int:
    """Wait for gunicorn (`--max-requests`) to have booted `recycles` replacement workers."""
    booted, partial = 0, b""
    with log.open("rb") as written:
        while booted - WORKERS < recycles:
            *lines, partial = (partial + written.read()).split(b"\n")  # what was written since
            booted += sum(b"Booting worker" in line for line in lines)
            time.sleep(0.1)
    return booted - WORKERS


def measure(
    kind: str, project: Path, base_url: str, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    directory = workdir / f"metrics-{kind}"
    port, log = free_port(), workdir / f"{kind}.log"
    env = {
        **os.environ,
        "ALLTKN_API_KEY": KEY,
        "ALLTKN_BASE_URL": base_url,
        "ALLTKN_MAX_RETRIES": "0",
        # The call log (one line per attempt, from the same record as the metrics) is the
        # server's own account to check the scrape against; gunicorn's "Booting worker" lines
        # count its recycles.
        "LOG_LEVEL": "INFO",
        "PYTHONPATH": str(project / "src"),
        "WEB_CONCURRENCY": str(WORKERS),
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }
    if kind == "flask":
        # Replaced at FastAPI's pace: gunicorn counts every request, the scraper's too. The
        # jitter, as gunicorn advises, keeps the workers from all leaving at once (and adds a
        # quarter to a worker's life on average).
        most = round((args.rate + SCRAPER_RATE) * args.recycle_every / 1.25)
        env["GUNICORN_CMD_ARGS"] = f"--max-requests {most} --max-requests-jitter {most // 2}"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            service_command(kind, port), cwd=project, env=env, stdout=sink, stderr=sink
        )
    side = subprocess.Popen(
        [sys.executable, "-c", SIDE_SCRAPER, str(directory), str(port)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    run = Run(f"http://127.0.0.1:{port}", directory, side)
    try:
        deadline = time.monotonic() + 180  # 4 workers booting on a loaded machine
        while True:
            try:
                run.scrape()
                break
            except httpx2.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{kind} did not serve:\n{log.read_text()}") from None
                time.sleep(0.2)
        for _ in range(20):  # the baseline: a fresh directory, no worker replaced yet
            run.timed_scrape()
        baseline = sorted(run.scrape_ms)
        run.scrape_ms.clear()
        run.healthz_ms.clear()
        interval_s = CLIENTS / args.rate
        threads = [
            threading.Thread(target=run.client, args=(n, interval_s)) for n in range(CLIENTS)
        ]
        threads.append(threading.Thread(target=run.scraper))
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        if kind == "fastapi":
            replaced = recycle_uvicorn(process, args.recycles, args.recycle_every)
        else:
            replaced = recycle_gunicorn(log, args.recycles)
        run.stop.set()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        text = run.scrape()  # the last word: after every answer
        files_after = sorted(os.listdir(directory))
    finally:
        process.terminate()
        process.wait(timeout=60)
        side.terminate()
        side.wait()
    said = log.read_text(errors="replace")
    if "Traceback" in said:  # the first one, for whoever reads the results
        run.failures[said[said.index("Traceback") :][:2000]] += 1
    scraped = totals(text)
    times = sorted(run.scrape_ms)
    pairs = zip(run.scrape_ms, run.healthz_ms, strict=True)
    own = sorted(scrape - healthz for scrape, healthz in pairs)
    healthz = sorted(run.healthz_ms)
    cpu = sorted(run.scrape_cpu_ms)
    quiet = sorted(run.quiet_ms) or [float("nan")]
    return {
        "workers_replaced": replaced,
        "seconds": round(seconds, 1),
        "answered": run.answered,
        "client_failures": dict(run.failures),
        "answered_tokens": run.tokens,
        "scraped": scraped,
        "logged": (calls := logged(log)),
        # Every call the workers made, counted once; every answer a client got among them.
        "exact": all(scraped[name] == calls[name] for name in scraped)
        and calls["answered"] >= run.answered,
        "scrapes": len(times),
        "scrape_ms": {"p50": pct(times, 0.5), "p95": pct(times, 0.95), "max": round(times[-1], 1)},
        "healthz_ms": {"p50": pct(healthz, 0.5), "p95": pct(healthz, 0.95)},
        "scrape_minus_healthz_ms": {"p50": pct(own, 0.5), "p95": pct(own, 0.95)},
        "scrape_cpu_ms": {"p50": pct(cpu, 0.5), "p95": pct(cpu, 0.95), "max": pct(cpu, 1)},
        "quiet_scrape_ms": {
            "count": len(run.quiet_ms),
            "p50": pct(quiet, 0.5),
            "p95": pct(quiet, 0.95),
        },
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "baseline_scrape_ms": {"p50": pct(baseline, 0.5), "p95": pct(baseline, 0.95)},
        "most_files": run.most_files,
        "files_after": files_after,
    }


def pct(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


def targets(row: dict[str, Any]) -> list[tuple[str, str, bool]]:
    cpu = row["scrape_cpu_ms"]
    return [
        ("totals exact (calls, input and output tokens: scrape = call log)",
         f"{row['scraped']['calls']:.0f} scraped / {row['logged']['calls']:.0f} logged / "
         f"{row['answered']} answered", row["exact"]),
        ("scrape under 100 ms while recycling (its CPU time, merging included: p95, max)",
         f"{cpu['p95']} ms, {cpu['max']} ms", cpu["p95"] < 100),
        ("scrape under 100 ms in wall time while recycling (p95, max)",
         f"{row['scrape_ms']['p95']} ms, {row['scrape_ms']['max']} ms",
         row["scrape_ms"]["p95"] < 100),
        ("scrape under 100 ms in wall time, less /healthz just before it (p95)",
         f"{(own := row['scrape_minus_healthz_ms']['p95'])} ms", own < 100),
        ("scrape under 100 ms in wall time with no request in flight (p95)",
         f"{row['quiet_scrape_ms']['p95']} ms", row["quiet_scrape_ms"]["p95"] < 100),
        (f"directory bounded (<= {BOUND} files)", f"at most {row['most_files']}",
         row["most_files"] <= BOUND and len(row["files_after"]) <= BOUND),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recycles", type=int, default=200, help="workers to replace (200)")
    parser.add_argument("--rate", type=float, default=12, help="client requests a second (12)")
    parser.add_argument("--recycle-every", type=float, default=1.5,
                        help="seconds between two replacements (1.5)")  # fmt: skip
    args = parser.parse_args()
    results: dict[str, Any] = {"workers": WORKERS, "clients": CLIENTS, "rate": args.rate,
                               "recycle_every_s": args.recycle_every}  # fmt: skip
    results["load_average_at_start"] = [round(x, 1) for x in os.getloadavg()]
    print(f"load average at the start: {results['load_average_at_start']}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    try:
        projects = {kind: bake(kind, workdir, caller_auth="none") for kind in ("fastapi", "flask")}
        with fake_gateway(projects["flask"], deltas=5, first_token_delay=0.01) as (base_url, _):
            for kind, project in projects.items():
                results[kind] = measure(kind, project, base_url, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    failed = False
    for kind in ("fastapi", "flask"):
        row = results[kind]
        print(
            f"{kind}: {row['workers_replaced']} workers replaced in {row['seconds']} s, "
            f"{row['answered']} answers ({sum(row['client_failures'].values())} errors), "
            f"{row['scrapes']} scrapes: {row['scrape_ms']['p50']} ms p50, "
            f"{row['scrape_ms']['p95']} ms p95, {row['scrape_ms']['max']} ms max; /healthz "
            f"just before: {row['healthz_ms']['p50']} ms p50, {row['healthz_ms']['p95']} ms p95; "
            f"scrape less /healthz: {row['scrape_minus_healthz_ms']['p50']} ms p50, "
            f"{row['scrape_minus_healthz_ms']['p95']} ms p95 (before any recycling: scrape "
            f"{row['baseline_scrape_ms']['p50']} ms p50, {row['baseline_scrape_ms']['p95']} ms "
            f"p95); CPU per scrape {row['scrape_cpu_ms']['p50']} ms p50, "
            f"{row['scrape_cpu_ms']['p95']} ms p95, {row['scrape_cpu_ms']['max']} ms max; "
            f"at most {row['most_files']} files, {len(row['files_after'])} at the end; "
            f"{row['quiet_scrape_ms']['count']} scrapes with no request in flight: "
            f"{row['quiet_scrape_ms']['p50']} ms p50, {row['quiet_scrape_ms']['p95']} ms p95; "
            f"load average at the end {row['load_average']}"
        )
        for name, value, ok in targets(row):
            failed |= not ok
            print(f"  {'PASS' if ok else 'FAIL'}  {name}: {value}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
