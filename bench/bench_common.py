"""What the benchmarks share: baking a variant and running the bundled fake gateway."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE_DIR = Path(__file__).resolve().parents[1]


def bake(framework: str, into: Path) -> Path:
    """Bake `framework` with default answers under `into/framework`; returns the project."""
    project = cookiecutter(
        str(TEMPLATE_DIR),
        no_input=True,
        output_dir=str(into / framework),
        extra_context={"framework": framework},
    )
    return Path(project)


@contextmanager
def fake_gateway(
    project: Path,
    deltas: int = 20,
    *,
    first_token_delay: float = 0.05,
    delta_interval: float = 0.01,
) -> Iterator[tuple[str, int]]:
    """The project's fake gateway in its own process, answering like a real model: first token
    after 50 ms, then `deltas` deltas 10 ms apart (by default). Yields (base_url, pid)."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(project / "tests" / "fake_gateway.py"),
            "--first-token-delay",
            str(first_token_delay),
            "--delta-interval",
            str(delta_interval),
            "--deltas",
            str(deltas),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    base_url = process.stdout.readline().strip().removeprefix("base_url=")
    try:
        yield base_url, process.pid
    finally:
        process.terminate()
        process.wait()
