"""The generated project's locks: every bake carries a uv.lock that matches its pyproject.toml and
the hashed requirements files exported from it, whatever its slug; `make lock-check` says so,
and says what to run when they drift.

The lock layers are written by `tools/refresh_locks.py`; `--check` bakes each combination and
runs its `make lock-check` (uv re-reads the package index, so these tests need the network).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TEMPLATE_DIR

UV = Path(sys.executable).parent / "uv"
EXPORTS = ["requirements.lock.txt", "requirements-dev.lock.txt", "requirements-build.lock.txt"]


def uv_env() -> dict[str, str]:
    if not UV.exists() and shutil.which("uv") is None:
        pytest.skip("uv is not installed (python -m pip install -r requirements-dev.txt)")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = f"{UV.parent}{os.pathsep}{env['PATH']}"
    return env


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=uv_env(), capture_output=True, text=True, check=False, timeout=600
    )


def test_every_lock_layer_matches_its_bake() -> None:
    """All the combinations of framework, caller_auth and worker: uv.lock and the exports are
    current."""
    done = run([sys.executable, "tools/refresh_locks.py", "--check"], TEMPLATE_DIR)
    layers = re.findall(r"^(lock-[\w-]+): ok$", done.stdout, re.MULTILINE)

    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(layers) == [
        "lock-fastapi-keys",
        "lock-fastapi-keys-celery",
        "lock-fastapi-none",
        "lock-fastapi-none-celery",
        "lock-flask-keys",
        "lock-flask-keys-celery",
        "lock-flask-none",
        "lock-flask-none-celery",
        "lock-script-none",
        "lock-script-none-celery",
    ]


def test_a_bake_under_another_name_is_locked_and_installs_only_hashed_files(
    cookies: Any,
) -> None:
    result = cookies.bake(
        extra_context={"framework": "fastapi", "project_name": "Billing Bot", "caller_auth": "none"}
    )
    assert result.exit_code == 0, result.exception
    project = Path(str(result.project_path))
    lock = (project / "uv.lock").read_text(encoding="utf-8")

    assert '\nname = "billing-bot"\n' in lock
    assert "{{" not in lock
    done = run(["make", "--no-print-directory", "lock-check"], project)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in EXPORTS:
        lines = (project / name).read_text(encoding="utf-8").splitlines()
        pins = [line for line in lines if line and not line.startswith((" ", "#"))]
        assert pins, name
        assert all(re.match(r"^[\w.-]+==[\w.+]+( ;.*)? \\$", pin) for pin in pins), name
    runtime = (project / "requirements.lock.txt").read_text(encoding="utf-8")
    dev = (project / "requirements-dev.lock.txt").read_text(encoding="utf-8")
    assert "\nfastapi==" in runtime
    assert "\npytest==" not in runtime  # the image gets no dev tools
    assert "\nredis==" not in runtime  # no caller keys, no Redis
    assert "\npytest==" in dev
    assert "\nhatchling==" in dev


@pytest.mark.parametrize("framework", ["fastapi", "script"])
def test_a_celery_worker_bake_is_locked_and_installs_from_its_lock(
    cookies: Any, framework: str
) -> None:
    """worker=celery adds Celery and Redis: the bake gets its own lock layer, current, and
    `make dev` installs exactly that lock (with uv, or pip with the hashed export)."""
    result = cookies.bake(extra_context={"framework": framework, "worker": "celery"})
    assert result.exit_code == 0, result.exception
    project = Path(str(result.project_path))

    assert '\nname = "alltkn-service"\n' in (project / "uv.lock").read_text(encoding="utf-8")
    done = run(["make", "--no-print-directory", "lock-check"], project)
    assert done.returncode == 0, done.stdout + done.stderr
    runtime = (project / "requirements.lock.txt").read_text(encoding="utf-8")
    assert "\ncelery==" in runtime
    assert "\nredis==" in runtime
    dry = run(["make", "--no-print-directory", "-n", "dev"], project)
    assert "uv sync --locked --extra dev" in dry.stdout, dry.stdout + dry.stderr
    no_uv = run(["make", "--no-print-directory", "-n", "dev", "UV="], project)
    assert "--require-hashes --no-deps -r requirements-dev.lock.txt" in no_uv.stdout, no_uv.stdout


def test_lock_check_names_the_fix_when_a_dependency_changes(cookies: Any) -> None:
    result = cookies.bake(extra_context={"framework": "script"})
    assert result.exit_code == 0, result.exception
    project = Path(str(result.project_path))
    exported = project / "requirements.lock.txt"
    exported.write_text(exported.read_text(encoding="utf-8") + "six==1.17.0\n", encoding="utf-8")

    stale_export = run(["make", "--no-print-directory", "lock-check"], project)
    assert stale_export.returncode != 0
    assert (
        "error[lock]: requirements.lock.txt does not match uv.lock. Run: make lock"
        in stale_export.stdout
    )

    pyproject = project / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    pyproject.write_text(text.replace('"rich>=13.7",', '"rich>=13.7",\n    "six>=1.16",'))
    stale_lock = run(["make", "--no-print-directory", "lock-check"], project)
    assert stale_lock.returncode != 0
    assert "uv lock" in stale_lock.stderr  # uv: "The lockfile ... needs to be updated"

    fixed = run(["make", "--no-print-directory", "lock"], project)
    assert fixed.returncode == 0, fixed.stderr
    assert "\nsix==" in exported.read_text(encoding="utf-8")
    assert run(["make", "--no-print-directory", "lock-check"], project).returncode == 0
