"""Slow tier: each variant installed with pip into a fresh virtualenv, its own checks run there.

This is what a team does on day one (`make dev` without uv: the hashed lock, then the project
without build isolation; then `make check`: ruff, mypy
--strict, the secret scan, pytest), on the Python version the team picked, so it proves the
generated project installs and passes on its own. Each variant also carries a different
docker / kubernetes / ci combination; those options add no Python, so three bakes cover them.
The FastAPI one also carries the Celery worker, so the queue's suite runs here, its load proofs
(marked `slow` in the project) included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

VARIANTS = [
    pytest.param(
        "fastapi",
        "3.12",
        {"kubernetes": "yes", "worker": "celery"},
        id="fastapi-py3.12-docker-k8s-github-celery",
    ),
    pytest.param("flask", "3.10", {"kubernetes": "no", "ci": "gitlab"}, id="flask-py3.10-gitlab"),
    pytest.param("script", "3.13", {"docker": "no", "ci": "none"}, id="script-py3.13-bare"),
]


def find_python(version: str) -> str | None:
    """An interpreter for `version`: on PATH, or installed by pyenv (whose shims may refuse)."""
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    installed = sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"))
    candidates += [str(path) for path in installed]
    if sys.version.startswith(f"{version}."):
        candidates.append(sys.executable)
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "--version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and probe.stdout.startswith(f"Python {version}."):
            return candidate
    return None


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize(("framework", "python_version", "options"), VARIANTS)
def test_variant_installs_and_passes_its_own_checks(
    cookies: Any, tmp_path: Path, framework: str, python_version: str, options: dict[str, str]
) -> None:
    python = find_python(python_version)
    if python is None:
        pytest.skip(f"Python {python_version} is not installed on this machine")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = cookies.bake(
        extra_context={"framework": framework, "python_version": python_version, **options}
    )
    assert result.exit_code == 0, result.exception
    project = Path(str(result.project_path))
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"

    run([python, "-m", "venv", str(venv)], cwd=project)
    # pytest-xdist only to overlap the suite's waits (servers starting, timeouts) in this tier,
    # which runs three projects' checks next to the rest of the template suite.
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q"]
    # As `make dev` without uv: only the hashed lock, then the project with the locked backend;
    # so the universal lock is shown to install on each of these Pythons.
    run([*pip, "--require-hashes", "--no-deps", "-r", "requirements-dev.lock.txt"], cwd=project)
    run([*pip, "--no-deps", "--no-build-isolation", "-e", "."], cwd=project)
    run([str(bin_dir / "python"), "-m", "pip", "check"], cwd=project)
    run([*pip, "pytest-xdist"], cwd=project)
    # The tests must not depend on anything in the caller's environment.
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    env["PYTEST_ADDOPTS"] = "-n 2"
    # `make check` = lint, typecheck, secrets, test: what the generated CI runs.
    output = run(["make", f"PY={bin_dir / 'python'}", "check"], project, env)
    tests = output.strip().splitlines()[-1]
    assert " passed" in tests
    assert "failed" not in tests
    assert "skipped" not in tests
