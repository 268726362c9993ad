"""Bake every variant and check what a team gets: the right files, fully rendered, lint-clean."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alltkn_hooks import variants
from conftest import cookiecutter_defaults

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
PROJECT_TEMPLATE = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
VARIANTS_DIR = PROJECT_TEMPLATE / "_variants"
FRAMEWORKS = ["fastapi", "flask", "script"]
# `${{ ... }}` is a GitHub Actions expression, not Jinja.
JINJA_LEFTOVER = re.compile(r"(?<!\$)\{\{|\{%|\{#|cookiecutter\.")


def default_options(framework: str) -> dict[str, str]:
    """The docker / kubernetes / ci / caller_auth answers `--no-input` gives for `framework`."""
    defaults = cookiecutter_defaults()
    return {
        "docker": defaults["docker"],
        "kubernetes": defaults["kubernetes"],
        "ci": defaults["ci"],
        "caller_auth": "keys" if framework != "script" else "none",
        "worker": defaults["worker"],
    }


def expected_files(
    post_gen: ModuleType,
    package_name: str,
    framework: str,
    options: Mapping[str, str] | None = None,
) -> set[str]:
    """Every file the project template holds for these options, as paths in the baked project,
    plus the `.cruft.json` the post-gen hook writes. `options`: docker, kubernetes, ci (the
    defaults for `framework` when None)."""
    chosen = default_options(framework) if options is None else options
    shared = [p for p in PROJECT_TEMPLATE.rglob("*") if VARIANTS_DIR not in p.parents]
    expected = {p.relative_to(PROJECT_TEMPLATE).as_posix() for p in shared if p.is_file()}
    expected.add(".cruft.json")
    for layer in variants.layers_for(framework, chosen):
        layer_dir = VARIANTS_DIR / layer
        layer_files = [p for p in layer_dir.rglob("*") if p.is_file()]
        expected |= {p.relative_to(layer_dir).as_posix() for p in layer_files}
    return {
        path.replace("{{cookiecutter.package_name}}", package_name)
        for path in expected
        if "__pycache__" not in path and not path.endswith(".pyc")
    }


def baked_files(project: Path) -> set[str]:
    return {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}


def bake(cookies: Any, **answers: str) -> Path:
    result = cookies.bake(extra_context=answers)
    assert result.exit_code == 0, result.exception
    assert result.exception is None
    return Path(str(result.project_path))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_variant_has_exactly_its_files(
    cookies: Any, post_gen: ModuleType, framework: str
) -> None:
    project = bake(cookies, framework=framework)

    assert project.name == "alltkn-service"
    assert baked_files(project) == expected_files(post_gen, "alltkn_service", framework)
    assert not (project / "_variants").exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_celery_worker_bake_has_exactly_its_files(
    cookies: Any, post_gen: ModuleType, framework: str
) -> None:
    k8s = {"docker": "yes", "kubernetes": "yes"} if framework != "script" else {}
    project = bake(cookies, framework=framework, worker="celery", **k8s)
    options = {**default_options(framework), "worker": "celery", **k8s}

    assert baked_files(project) == expected_files(post_gen, "alltkn_service", framework, options)
    modules = {path.name for path in (project / "src" / "alltkn_service").glob("*.py")}
    queue = {"worker.py", "jobs.py", "queue_cli.py", "chat_sync.py", "limiter.py", "rows.py"}
    assert queue <= modules
    # POST /v1/jobs and GET /v1/jobs/{id}: web bakes only.
    web = {"jobs_http.py", "jobs_api.py"}
    assert web & modules == (web if framework != "script" else set())
    assert (project / "k8s" / "worker-deployment.yaml").is_file() == (framework != "script")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_nothing_is_left_unrendered(cookies: Any, framework: str) -> None:
    project = bake(cookies, framework=framework)

    leftovers = [
        f"{path.relative_to(project)}:{number}: {line.strip()}"
        for path in sorted(project.rglob("*"))
        if path.is_file()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if JINJA_LEFTOVER.search(line)
    ]
    assert leftovers == []


CUSTOM = {
    "project_name": 'Ops "Copilot" \\ Desk',
    "project_slug": "ops-copilot",
    "package_name": "ops_copilot",
    "description": 'Answers "ops" questions \\ fast; 中文 too',
    "default_model": "deepseek-chat",
    "alltkn_base_url": "https://gateway.internal.example/api/v1",
    "api_key_env_var": "OPS_GATEWAY_KEY",
    "key_owner": "Platform team (Alice)",
    "log_access": "SRE on-call",
    "billing_group": "ops-budget",
    "python_version": "3.10",
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_answers_reach_the_project_intact(cookies: Any, framework: str) -> None:
    project = bake(cookies, framework=framework, **CUSTOM)
    package = project / "src" / "ops_copilot"

    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["name"] == "ops-copilot"
    assert pyproject["project"]["description"] == CUSTOM["description"]
    assert pyproject["project"]["scripts"] == {"ops-copilot": "ops_copilot.cli:main"}
    for module in package.glob("*.py"):
        compile(module.read_text(encoding="utf-8"), str(module), "exec")
    settings = (package / "settings.py").read_text(encoding="utf-8")
    assert 'KEY_ENV_VAR = "OPS_GATEWAY_KEY"' in settings
    assert 'DEFAULT_MODEL = "deepseek-chat"' in settings
    assert 'DEFAULT_BASE_URL = "https://gateway.internal.example/api/v1"' in settings
    env_example = (project / ".env.example").read_text(encoding="utf-8").splitlines()
    assert "OPS_GATEWAY_KEY=" in env_example  # present and empty
    checklist = (project / "docs" / "CHECKLIST.md").read_text(encoding="utf-8")
    for answer in ("Platform team (Alice)", "SRE on-call", "ops-budget", "Python 3.10"):
        assert answer in checklist
    assert (project / ".python-version").read_text().strip() == "3.10"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dependencies_match_the_framework(cookies: Any, framework: str) -> None:
    project = bake(cookies, framework=framework)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    names = {re.split(r"[<>=\[ ]", dep)[0].lower() for dep in pyproject["project"]["dependencies"]}

    assert {"openai", "pydantic-settings"} <= names
    assert ("fastapi" in names) == (framework == "fastapi")
    assert ("uvicorn" in names) == (framework == "fastapi")
    assert ("flask" in names) == (framework == "flask")
    assert ("gunicorn" in names) == (framework == "flask")
    assert ("rich" in names) == (framework == "script")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_env_files_are_ignored_but_the_example_is_not(cookies: Any, framework: str) -> None:
    project = bake(cookies, framework=framework)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    for name in (".env", ".env.local", ".env.production"):
        (project / name).write_text("X=1\n")

    ignored = subprocess.run(
        ["git", "check-ignore", ".env", ".env.local", ".env.production", ".env.example"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert ignored == [".env", ".env.local", ".env.production"]


@pytest.mark.parametrize(
    "answers",
    [pytest.param({"framework": fw}, id=fw) for fw in FRAMEWORKS]
    + [pytest.param({"framework": "fastapi", **CUSTOM}, id="fastapi-custom-answers")]
    # The longest names pre-gen accepts still fit the project's 100 columns.
    + [
        pytest.param(
            {"framework": fw, "project_slug": "s" * 40, "package_name": "p" * 28},
            id=f"{fw}-longest-names",
        )
        for fw in FRAMEWORKS
    ]
    + [pytest.param({"framework": fw, "worker": "celery"}, id=f"{fw}-celery") for fw in FRAMEWORKS],
)
def test_generated_code_passes_ruff(cookies: Any, answers: dict[str, str]) -> None:
    project = bake(cookies, **answers)
    for command in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command],
            cwd=project,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


# Entry points of each variant: what its commands, servers and config files import first.
ENTRY_MODULES = {
    "fastapi": ["__main__", "cli", "app"],
    "flask": ["__main__", "cli", "app"],
    "script": ["__main__", "cli"],
}
# Distribution -> the import that uses it; `openai[aiohttp]` is used by the aiohttp client.
DISTRIBUTION_IMPORTS = {
    "openai": "openai",
    "openai[aiohttp]": "DefaultAioHttpClient",
    "pydantic": "pydantic",
    "pydantic-settings": "pydantic_settings",
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "httptools": "uvicorn",  # uvicorn's HTTP parser, picked up by uvicorn when installed
    "flask": "flask",
    "redis": "redis",  # the callers' limits and the queue's pace (limiter.py)
    "celery": "celery",  # the queue's worker (worker.py)
    "gunicorn": "gunicorn",
    "prometheus-client": "prometheus_client",
    "rich": "rich",
}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(sibling modules imported with `from . import x` / `from .x import y`, every name
    imported from outside the package)."""
    import ast

    siblings: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                siblings.add(node.module)
            else:
                siblings |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            external.add(node.module.split(".")[0])
            external |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            external |= {alias.name.split(".")[0] for alias in node.names}
    return siblings, external


@pytest.mark.parametrize(
    ("framework", "caller_auth"),
    [
        *[pytest.param(framework, None, id=framework) for framework in FRAMEWORKS],
        pytest.param("fastapi", "none", id="fastapi-open"),
        pytest.param("flask", "none", id="flask-open"),
        *[pytest.param(fw, "worker", id=f"{fw}-celery-worker") for fw in FRAMEWORKS],
    ],
)
def test_each_variant_ships_only_what_it_runs(
    cookies: Any, framework: str, caller_auth: str | None
) -> None:
    """Every module of the bake is reachable from the variant's entry points, every class it
    defines is used, and every dependency is imported by reachable code."""
    answers = {"caller_auth": caller_auth} if caller_auth not in (None, "worker") else {}
    if caller_auth == "worker":
        answers = {"worker": "celery"}
    project = bake(cookies, framework=framework, **answers)
    package = project / "src" / "alltkn_service"
    modules = {path.stem: path for path in package.glob("*.py")}
    reached: set[str] = set()
    external: set[str] = set()
    todo = [name for name in ENTRY_MODULES[framework] if name in modules]
    if (project / "gunicorn.conf.py").is_file():
        external |= _imports(project / "gunicorn.conf.py")[1]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        siblings, names = _imports(modules[name])
        external |= names
        todo += [sibling for sibling in siblings if sibling in modules]
    assert set(modules) - {"__init__"} <= reached, f"never imported: {set(modules) - reached}"

    source = {name: path.read_text(encoding="utf-8") for name, path in modules.items()}
    for name, text in source.items():
        for cls in re.findall(r"^class (\w+)", text, flags=re.MULTILINE):
            uses = sum(len(re.findall(rf"\b{cls}\b", other)) for other in source.values())
            assert uses > 1, f"{name}.py: class {cls} is never used"

    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    for dependency in pyproject["project"]["dependencies"]:
        distribution = re.split(r"[<>=; ]", dependency)[0].lower()
        used_by = DISTRIBUTION_IMPORTS[distribution]
        assert used_by in external, f"{distribution} is a dependency but nothing imports it"
    assert ("DefaultAioHttpClient" in external) == (framework != "flask")
