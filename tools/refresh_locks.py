"""Write (or check) the lock layers: each combination of the answers that change the generated
pyproject.toml's dependencies (`variants.LOCK_ANSWERS`) gets `_variants/lock-<...>/` with its
uv.lock and the hashed requirements files exported from it.

    python tools/refresh_locks.py            # after changing a dependency of the project template
    python tools/refresh_locks.py --upgrade  # also move every pin to the newest allowed version
    python tools/refresh_locks.py --check    # exit 1 if a layer does not match its bake

It bakes each combination (without docker, kubernetes or CI, which add no dependency) and runs
the bake's own `make lock` (or `make lock-check`), so the template and its projects share one
implementation. Needs uv (`pip install -r requirements-dev.txt`), make and the network.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
PROJECT_TEMPLATE = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
sys.path.insert(0, str(TEMPLATE_DIR / "hooks"))

from alltkn_hooks import variants  # noqa: E402

EXPORTS = ("requirements.lock.txt", "requirements-dev.lock.txt", "requirements-build.lock.txt")
# Answers of the bakes that only add files without dependencies.
PLAIN = {"docker": "no", "kubernetes": "no", "ci": "none"}


def combinations() -> list[dict[str, str]]:
    """Every accepted combination of the `LOCK_ANSWERS` (the pre-gen hook's refusals left out)."""
    from alltkn_hooks import checks

    choices = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
    values = [list_of(choices, name) for name in variants.LOCK_ANSWERS]
    found = []
    for combo in itertools.product(*values):
        answers = dict(zip(variants.LOCK_ANSWERS, combo, strict=True))
        if not checks.combination_problems({**PLAIN, **answers}):
            found.append(answers)
    return found


def list_of(choices: dict[str, object], name: str) -> list[str]:
    value = choices[name]
    if isinstance(value, list):
        return [str(v) for v in value]
    return ["keys", "none"] if name == "caller_auth" else [str(value)]


def uv_env() -> dict[str, str]:
    """PATH with this interpreter's directory first (uv installed next to it), no VIRTUAL_ENV."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def bake(answers: dict[str, str], root: Path) -> Path:
    from cookiecutter.main import cookiecutter

    name = variants.lock_layer(answers)
    config = root / "config.yaml"
    config.write_text(f"replay_dir: {json.dumps(str(root / 'replay'))}\n", encoding="utf-8")
    project = cookiecutter(
        str(TEMPLATE_DIR),
        no_input=True,
        output_dir=str(root / name),
        extra_context={**PLAIN, **answers},
        config_file=str(config),
    )
    return Path(project)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=uv_env(), capture_output=True, text=True)


def refresh(answers: dict[str, str], root: Path, check: bool, upgrade: bool) -> str | None:
    """Lock (or check) one combination; returns an error line, or None."""
    layer = variants.lock_layer(answers)
    project = bake(answers, root)
    if check:
        done = run(["make", "--no-print-directory", "lock-check"], project)
        if done.returncode != 0:
            said = [line for line in (done.stdout + done.stderr).splitlines() if "rror" in line]
            return next((line for line in said if not line.startswith("make")), "out of date")
        return None
    if upgrade:
        done = run(["uv", "lock", "--upgrade", "--quiet"], project)
        if done.returncode != 0:
            return f"{layer}: uv lock --upgrade failed:\n{done.stderr}"
    done = run(["make", "--no-print-directory", "lock"], project)
    if done.returncode != 0:
        return f"{layer}: make lock failed:\n{done.stdout}{done.stderr}"
    target = PROJECT_TEMPLATE / variants.VARIANTS_DIR / layer
    target.mkdir(parents=True, exist_ok=True)
    lock = (project / variants.LOCK_FILE).read_text(encoding="utf-8")
    named = f"name = {json.dumps(project.name)}"
    if lock.count(f"\n{named}\n") != 1:
        return f"{layer}: the project's name is not once in uv.lock"
    (target / variants.LOCK_FILE).write_text(
        lock.replace(f"\n{named}\n", f"\n{variants.LOCK_NAME_PLACEHOLDER}\n"), encoding="utf-8"
    )
    for name in EXPORTS:
        shutil.copyfile(project / name, target / name)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    parser.add_argument("--upgrade", action="store_true", help="newest allowed versions")
    args = parser.parse_args(argv)
    if shutil.which("uv", path=uv_env()["PATH"]) is None:
        print("error[lock]: uv is not installed. Run: pip install -r requirements-dev.txt")
        return 1
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        for answers in combinations():
            error = refresh(answers, Path(tmp), args.check, args.upgrade)
            print(f"{variants.lock_layer(answers)}: {error or 'ok'}")
            if error:
                errors.append(error)
    if errors and args.check:
        print("error[lock]: lock layers out of date. Run: python tools/refresh_locks.py")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
