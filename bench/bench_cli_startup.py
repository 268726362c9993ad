"""How long the generated CLI takes to print `--help`, against the interpreter's own start.

Bakes each framework (default answers) and runs, interleaved so that every command sees the same
machine state, N times each:

- `python -c pass`: the interpreter's start, the floor;
- `python -c "import openai"`: what `--help` cost while the CLI imported the SDK eagerly;
- `python -m <package> --help` of each bake: the target is under 0.3 s;
- `python -m <package> ask --help` of the FastAPI bake: `ask` loads its request model (pydantic),
  not the SDK.

Prints the median and p90 wall time of each and the ratios to both baselines. The bakes run from
their `src/` (not installed: `importlib.metadata` looks for the description and finds none, the
same search as an installed project's).

    python bench/bench_cli_startup.py [--runs 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import bake

TARGET_S = 0.3
PACKAGE = "alltkn_service"
FRAMEWORKS = ("fastapi", "flask", "script")


def wall_s(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each command")
    parser.add_argument("--json", type=Path, help="write the figures here")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ}
        for name in ("PYTHONPATH", "ALLTKN_API_KEY"):
            env.pop(name, None)
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], env),
            'python -c "import openai"': ([sys.executable, "-c", "import openai"], env),
        }
        for framework in FRAMEWORKS:
            project = bake(framework, Path(scratch))
            project_env = {**env, "PYTHONPATH": str(project / "src")}
            help_command = [sys.executable, "-m", PACKAGE, "--help"]
            commands[f"{framework}: --help"] = (help_command, project_env)
            if framework == "fastapi":
                ask_help = [sys.executable, "-m", PACKAGE, "ask", "--help"]
                commands["fastapi: ask --help"] = (ask_help, project_env)
        for command, command_env in commands.values():  # warm the file cache and .pyc files
            wall_s(command, command_env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(options.runs):
            for name, (command, command_env) in commands.items():
                times[name].append(wall_s(command, command_env))

    load = os.getloadavg()[0]
    floor = statistics.median(times["python -c pass"])
    eager = statistics.median(times['python -c "import openai"'])
    results = {}
    print(f"{options.runs} runs each, load average {load:.1f}")
    print(f"{'command':<30} {'median':>8} {'p90':>8} {'/ pass':>7} {'/ openai':>9}")
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        results[name] = {"median_s": median, "p90_s": p90}
        ratios = f"{median / floor:>6.2f}x {median / eager:>8.2f}x"
        print(f"{name:<30} {median:>7.3f}s {p90:>7.3f}s {ratios}")
    helps = {name: r["median_s"] for name, r in results.items() if name.endswith(": --help")}
    slowest = max(helps.values())
    verdict = "PASS" if slowest < TARGET_S else "FAIL"
    print(f"--help, slowest median {slowest:.3f}s: target under {TARGET_S}s: {verdict}")
    if options.json:
        options.json.write_text(
            json.dumps({"runs": options.runs, "load": load, "results": results}, indent=2) + "\n"
        )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
