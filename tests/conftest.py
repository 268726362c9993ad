"""Shared helpers for the template's own test suite.

- `TEMPLATE_DIR`, `PROJECT_TEMPLATE`, `SCANNER_PATH`: where things are in the template.
- `load_hook("pre_gen_project")`: a hook file imported as a plain module (its answers live only
  in its `__main__` block, so importing it renders nothing and runs nothing).
- `load_scanner()`: the generated project's `secret_scan.py`, imported from the template.
- `bake_cli(tmp_path, **answers)`: the real `cookiecutter` command in a subprocess, with its
  config, replay and cache directories inside `tmp_path`; the output goes to `out_dir(tmp_path)`.
- `cookiecutter_defaults()`: the default answers, with the derived slug and package rendered.
- Fixtures `pre_gen`, `post_gen`, `scanner`: those modules, loaded once per session.

Bake tests with pytest-cookies' `cookies` fixture can live alongside; nothing here overrides it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import pytest

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
HOOKS_DIR = TEMPLATE_DIR / "hooks"
PROJECT_TEMPLATE = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
SCANNER_PATH = PROJECT_TEMPLATE / "src" / "{{cookiecutter.package_name}}" / "secret_scan.py"


def load_module(path: Path, name: str) -> ModuleType:
    """Import the file at `path` as module `name` (registered in sys.modules, as dataclasses
    and pickling expect)."""
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_hook(name: str) -> ModuleType:
    """`load_hook("pre_gen_project")` -> hooks/pre_gen_project.py as a module."""
    return load_module(HOOKS_DIR / f"{name}.py", f"template_hook_{name}")


def load_scanner() -> ModuleType:
    return load_module(SCANNER_PATH, "template_secret_scan")


def cookiecutter_defaults() -> dict[str, str]:
    """Default answers as `--no-input` gives them (first choice; slug and package derived)."""
    raw = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
    answers = {k: v[0] if isinstance(v, list) else v for k, v in raw.items() if k[0] != "_"}
    slug = re.sub(r"[^a-z0-9]+", "-", answers["project_name"].lower()).strip("-")
    answers["project_slug"] = slug
    answers["package_name"] = slug.replace("-", "_")
    return answers


def out_dir(tmp_path: Path) -> Path:
    """Where `bake_cli` asks cookiecutter to write (created empty before each bake)."""
    return tmp_path / "out"


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The current environment with HOME and COOKIECUTTER_CONFIG pointed into `tmp_path`."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    config = home / "cookiecutter.yaml"
    config.write_text(
        f"replay_dir: {json.dumps(str(home / 'replay'))}\n"
        f"cookiecutters_dir: {json.dumps(str(home / 'cookiecutters'))}\n",
        encoding="utf-8",
    )
    return {**os.environ, "HOME": str(home), "COOKIECUTTER_CONFIG": str(config)}


def run_cookiecutter(
    tmp_path: Path,
    options: Sequence[str] = (),
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m cookiecutter <options> -o <out> TEMPLATE_DIR <extra>`, private config."""
    out = out_dir(tmp_path)
    out.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "cookiecutter",
        *options,
        "-o",
        str(out),
        str(TEMPLATE_DIR),
        *extra,
    ]
    return subprocess.run(
        command,
        env={**cli_env(tmp_path), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def bake_cli(tmp_path: Path, **answers: str) -> subprocess.CompletedProcess[str]:
    """Bake non-interactively with `answers` given as `key=value` extra context."""
    return run_cookiecutter(
        tmp_path, ["--no-input"], [f"{key}={value}" for key, value in answers.items()]
    )


@pytest.fixture(scope="session")
def pre_gen() -> ModuleType:
    return load_hook("pre_gen_project")


@pytest.fixture(scope="session")
def post_gen() -> ModuleType:
    return load_hook("post_gen_project")


@pytest.fixture(scope="session")
def scanner() -> ModuleType:
    return load_scanner()
