"""Shared helpers for the template's own test suite.

- `TEMPLATE_DIR`, `PROJECT_TEMPLATE`, `SCANNER_PATH`: where things are in the template.
- `HOOKS_DIR` is put first on `sys.path`, as the rendered hooks do, so tests import the shared
  package directly (`from alltkn_hooks import checks`).
- `load_hook("pre_gen_project")`: a hook file imported as a plain module (its answers and the
  template directory live only in its `__main__` block, so importing it renders nothing and
  runs nothing).
- `load_scanner()`: the template's generation-time scanner, `hooks/alltkn_hooks/secret_scan.py`.
- `bake_cli(tmp_path, **answers)`: the real `cookiecutter` command in a subprocess, with its
  config, replay and cache directories inside `tmp_path`; the output goes to `out_dir(tmp_path)`.
  `run_cookiecutter` is the same with any options, and any template (`copy_template` makes one
  a test may alter).
- `refusal_lines(stderr)`: a refused run's error lines and its last line, the replay hint.
- `cookiecutter_defaults()`: the default answers, with the derived slug and package rendered;
  `hook_answers()` adds what cookiecutter adds before the hooks run (`_repo_dir`).
- Fixtures `pre_gen`, `post_gen`, `scanner`: those modules, loaded once per session;
  `hook_home`: a private HOME, temporary directory and cookiecutter config (its replay
  directory is `hook_home / "replay"`), with no secret-named variable left in the environment.

Bake tests with pytest-cookies' `cookies` fixture can live alongside; nothing here overrides it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import jinja2
import pytest

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
HOOKS_DIR = TEMPLATE_DIR / "hooks"
PROJECT_TEMPLATE = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
SCANNER_PATH = HOOKS_DIR / "alltkn_hooks" / "secret_scan.py"
EXTENSION_FILE = TEMPLATE_DIR / "alltkn_template_dir.py"
if str(HOOKS_DIR) not in sys.path:
    sys.path.insert(0, str(HOOKS_DIR))


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
    from alltkn_hooks import secret_scan

    return secret_scan


def cookiecutter_defaults() -> dict[str, str]:
    """Default answers as `--no-input` gives them (first choice; slug and package derived)."""
    raw = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
    answers = {k: v[0] if isinstance(v, list) else v for k, v in raw.items() if k[0] != "_"}
    slug = re.sub(r"[^a-z0-9]+", "-", answers["project_name"].lower()).strip("-")
    answers["project_slug"] = slug
    answers["package_name"] = slug.replace("-", "_")
    # Defaults that depend on earlier answers (caller_auth: keys for the web services).
    for name, value in answers.items():
        if "{{" in value:
            answers[name] = jinja2.Environment().from_string(value).render(cookiecutter=answers)
    return answers


# Headless Chromium as the browser tests launch it: Debian's build, no network of its own.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

REPLAY_HINT = "To answer again with your other answers kept, run: cookiecutter --replay-file "


def refusal_lines(stderr: str) -> tuple[list[str], str | None]:
    """A refused run's stderr: its `error:` lines, and its last line when that is the replay
    hint (`cookiecutter --replay-file ...`, which asks again for the refused answers alone)."""
    lines = stderr.splitlines()
    if lines and lines[-1].startswith(REPLAY_HINT):
        return lines[:-1], lines[-1]
    return lines, None


def hook_answers(**overrides: object) -> dict[str, object]:
    """The answers as the hooks get them from cookiecutter (with `_repo_dir`, which the hooks
    do not use)."""
    return {**cookiecutter_defaults(), "_repo_dir": str(TEMPLATE_DIR), **overrides}


def secret_named(name: str) -> bool:
    """True for environment variables whose values the hooks refuse to see templated."""
    return load_scanner().SECRET_ENV_NAME_RE.search(name) is not None


def out_dir(tmp_path: Path) -> Path:
    """Where `bake_cli` asks cookiecutter to write (created empty before each bake)."""
    return tmp_path / "out"


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The current environment with HOME and COOKIECUTTER_CONFIG pointed into `tmp_path`, and
    without secret-named variables (the hooks match their values)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    config = home / "cookiecutter.yaml"
    config.write_text(
        f"replay_dir: {json.dumps(str(home / 'replay'))}\n"
        f"cookiecutters_dir: {json.dumps(str(home / 'cookiecutters'))}\n",
        encoding="utf-8",
    )
    kept = {name: value for name, value in os.environ.items() if not secret_named(name)}
    return {**kept, "HOME": str(home), "COOKIECUTTER_CONFIG": str(config)}


def run_cookiecutter(
    tmp_path: Path,
    options: Sequence[str] = (),
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    template: Path = TEMPLATE_DIR,
) -> subprocess.CompletedProcess[str]:
    """`python -m cookiecutter <options> -o <out> <template> <extra>`, private config."""
    out = out_dir(tmp_path)
    out.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "cookiecutter",
        *options,
        "-o",
        str(out),
        str(template),
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


def copy_template(destination: Path) -> Path:
    """A copy of the template (cookiecutter.json, the Jinja extension, hooks, project) that a
    test may alter."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    destination.mkdir(parents=True)
    shutil.copy2(TEMPLATE_DIR / "cookiecutter.json", destination)
    shutil.copy2(EXTENSION_FILE, destination)
    shutil.copytree(HOOKS_DIR, destination / "hooks", ignore=ignore)
    shutil.copytree(PROJECT_TEMPLATE, destination / PROJECT_TEMPLATE.name, ignore=ignore)
    return destination


def bake_cli(tmp_path: Path, **answers: str) -> subprocess.CompletedProcess[str]:
    """Bake non-interactively with `answers` given as `key=value` extra context."""
    return run_cookiecutter(
        tmp_path, ["--no-input"], [f"{key}={value}" for key, value in answers.items()]
    )


@pytest.fixture
def hook_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Everything the hooks read from the machine, made private to the test."""
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    config = home / "cookiecutter.yaml"
    config.write_text(f"replay_dir: {json.dumps(str(home / 'replay'))}\n", encoding="utf-8")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("COOKIECUTTER_CONFIG", str(config))
    monkeypatch.setattr(tempfile, "tempdir", str(home / "tmp"))
    for name in [name for name in os.environ if secret_named(name)]:
        monkeypatch.delenv(name)
    return home


@pytest.fixture(scope="session")
def pre_gen() -> ModuleType:
    return load_hook("pre_gen_project")


@pytest.fixture(scope="session")
def post_gen() -> ModuleType:
    return load_hook("post_gen_project")


@pytest.fixture(scope="session")
def scanner() -> ModuleType:
    return load_scanner()
