"""detect-secrets in the generated project: the gateway-key plugin, the committed baseline, and
`make secrets`, the pre-commit hook and the CI jobs that run the check; a fresh bake of every
variant is clean under plain `detect-secrets scan` too.

The wiring is the same in every variant, so each check runs on one bake (baked once per session
by pytest-cookies' `cookies_session`; a test that changes a project works on a copy); only the
whole-bake scans run per variant. Planted keys are built at run time, from a 16-character
alphabet, so that only the gateway plugin (not the entropy plugins) can find them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from conftest import PROJECT_TEMPLATE

detect_secrets_version = pytest.importorskip("detect_secrets.__version__").VERSION

TOOLS_DIR = Path(sys.executable).parent
FRAMEWORKS = ["fastapi", "flask", "script"]
PLUGIN = "tools/detect_secrets_gateway.py"
BASELINE = ".secrets.baseline"
GATEWAY = "AI Gateway Key"
PIN = f"detect-secrets=={detect_secrets_version}"
# What this wiring writes or rewrites in the project: the plain scan must find nothing in it.
OWNED = [
    BASELINE,
    PLUGIN,
    "Makefile",
    ".pre-commit-config.yaml",
    "pyproject.toml",
    "README.md",
    "docs/CHECKLIST.md",
    "docs/TROUBLESHOOTING.md",
    ".github/workflows/secret-scan.yml",
    ".gitlab-ci.yml",
]
# .cruft.json is JSON (no comment can allowlist a line): the baseline leaves out these lines.
CRUFT_LINES = [
    '^\\s*"_?commit": "[0-9a-f]{40}",?$',
    '^\\s*"api_key_env_var": "[A-Z_][A-Z0-9_]*",?$',
]
# A 16-letter alphabet keeps a planted key under the Base64 entropy plugin's limit (4.5 bits).
ALPHABET = "aZ3kQ9mW2xR7tY5u"


def body(length: int, seed: int = 0) -> str:
    return "".join(random.Random(seed * 1000 + length).choice(ALPHABET) for _ in range(length))


# case -> (value planted in a new file, flagged by the gateway plugin?)
PLANTED_BY_ID = {
    "sk-48": ("sk-" + body(48), True),
    "sk-32": ("sk-" + body(32), True),
    "sk-64": ("sk-" + body(64), True),
    "sk-48-dash-digits": ("sk-" + body(48) + "-7", True),
    "sk-20": ("sk-" + body(20), False),
    "sk-31": ("sk-" + body(31), False),
    "sk-65": ("sk-" + body(65), False),
    "task-48": ("task-" + body(48), False),
}


# --- bakes and commands ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def baked(cookies_session: Any) -> Callable[..., Path]:
    """`baked(framework, ci="github")`: the project, baked once per session per pair; the web
    services with their Kubernetes manifests (opt-in), so every file type is scanned."""
    projects: dict[tuple[str, str], Path] = {}

    def bake(framework: str, ci: str = "github") -> Path:
        if (framework, ci) not in projects:
            k8s = {"kubernetes": "yes"} if framework != "script" else {}
            result = cookies_session.bake(extra_context={"framework": framework, "ci": ci, **k8s})
            assert result.exit_code == 0, result.exception
            projects[framework, ci] = Path(str(result.project_path))
        return projects[framework, ci]

    return bake


def copy(project: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(project, tmp_path / project.name, symlinks=True))


def env(tmp_path: Path, path: str | None = None) -> dict[str, str]:
    """A clean environment: this venv's tools (detect-secrets, python) first on PATH."""
    return {
        "PATH": path or f"{TOOLS_DIR}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
    }


def run(
    command: list[str], cwd: Path, environ: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=dict(environ), capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip


def tool(name: str) -> str:
    found = TOOLS_DIR / name
    if not found.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    return str(found)


def need(executable: str) -> None:
    if shutil.which(executable) is None:
        pytest.skip(f"{executable} is not installed")


def git_add_all(project: Path, environ: Mapping[str, str]) -> None:
    need("git")
    for command in (["git", "init", "-q"], ["git", "add", "-A"]):
        done = run(command, project, environ)
        assert done.returncode == 0, done.stderr


def plain_scan(project: Path, tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """`detect-secrets scan --all-files`: default plugins and filters, no baseline."""
    done = run([tool("detect-secrets"), "scan", "--all-files", "."], project, env(tmp_path))
    assert done.returncode == 0, done.stderr
    results: dict[str, list[dict[str, Any]]] = json.loads(done.stdout)["results"]
    return results


def described(project: Path, results: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """`path:line: type: line text` for each finding (the values here are decoys)."""
    out = []
    for path, findings in sorted(results.items()):
        lines = (project / path).read_text(encoding="utf-8").splitlines()
        for finding in findings:
            number = finding["line_number"]
            out.append(f"{path}:{number}: {finding['type']}: {lines[number - 1].strip()}")
    return out


def plant(project: Path, value: str, name: str = "notes/planted.txt") -> str:
    target = project / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f'value = "{value}"\n', encoding="utf-8")
    return name


def make_secrets(project: Path, environ: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    need("make")
    return run(["make", f"PY={sys.executable}", "secrets"], project, environ)


def baseline(project: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((project / BASELINE).read_text(encoding="utf-8"))
    return data


# --- the baseline and the plugin ---------------------------------------------------------------


def test_the_plugin_is_plain_python_outside_src() -> None:
    """Copied verbatim by cookiecutter (no Jinja), outside the package (not in the wheel or
    the image)."""
    source = (PROJECT_TEMPLATE / PLUGIN).read_text(encoding="utf-8")

    assert not re.search(r"\{\{|\{%|\{#", source)
    assert "class GatewayKeyDetector(RegexBasedDetector)" in source


def test_the_baseline_is_what_detect_secrets_writes(
    baked: Callable[..., Path], tmp_path: Path
) -> None:
    """Version, the default plugins plus the gateway plugin by relative path, the default
    filters plus the .cruft.json lines and the baseline itself, no results; `detect-secrets
    scan --baseline` over a clean checkout rewrites it unchanged (but for the date)."""
    project = copy(baked("fastapi"), tmp_path)
    data = baseline(project)
    empty = tmp_path / "empty"
    (empty / "tools").mkdir(parents=True)
    shutil.copy(project / PLUGIN, empty / PLUGIN)
    done = run(
        [tool("detect-secrets"), "scan", "--plugin", PLUGIN, "--exclude-lines", CRUFT_LINES[0],
         "--exclude-lines", CRUFT_LINES[1], "."],
        empty, env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    fresh = json.loads(done.stdout)
    for plugin in fresh["plugins_used"]:
        if plugin["name"] == "GatewayKeyDetector":
            assert plugin["path"] == f"file://{empty / PLUGIN}"
            plugin["path"] = f"file://{PLUGIN}"

    assert data["version"] == detect_secrets_version == "1.5.0"
    assert data["results"] == {}
    assert data["plugins_used"] == fresh["plugins_used"]
    # `scan --baseline` adds the filter that keeps the baseline itself out.
    itself = {"path": "detect_secrets.filters.common.is_baseline_file", "filename": BASELINE}
    assert data["filters_used"] == sorted(
        [*fresh["filters_used"], itself], key=lambda f: str(f["path"])
    )
    assert set(data) == {"version", "plugins_used", "filters_used", "results", "generated_at"}

    environ = env(tmp_path)
    git_add_all(project, environ)
    done = run([tool("detect-secrets"), "scan", "--baseline", BASELINE], project, environ)
    assert done.returncode == 0, done.stdout + done.stderr
    rewritten = baseline(project)
    assert {**rewritten, "generated_at": None} == {**data, "generated_at": None}


def test_the_check_fails_on_planted_gateway_keys_only(
    baked: Callable[..., Path], tmp_path: Path
) -> None:
    """`detect-secrets-hook --baseline .secrets.baseline` (what make, pre-commit and CI run) on
    new files: every gateway key is reported by the plugin, by place and never by value, and
    nothing else is; the default plugins alone miss them; the allowlist pragma silences one."""
    project = copy(baked("flask"), tmp_path)
    environ = env(tmp_path)
    names = {plant(project, value, f"notes/{case_id}.txt"): flagged
             for case_id, (value, flagged) in PLANTED_BY_ID.items()}  # fmt: skip
    hook = [tool("detect-secrets-hook"), "--baseline", BASELINE]

    done = run([*hook, *names], project, environ)
    reported = set(re.findall(r"Location:\s+(notes/\S+\.txt):1", done.stdout))
    assert reported == {name for name, flagged in names.items() if flagged}, done.stdout
    assert done.returncode == 1
    assert not any(value in done.stdout for value, _ in PLANTED_BY_ID.values())
    defaults = run([tool("detect-secrets"), "scan", *names], project, environ)
    assert json.loads(defaults.stdout)["results"] == {}

    name = next(name for name, flagged in names.items() if flagged)
    value = (project / name).read_text().strip()
    (project / name).write_text(f"{value}  # pragma: allowlist secret\n")
    assert run([*hook, name], project, environ).returncode == 0


# --- make, pre-commit, CI ----------------------------------------------------------------------


def test_make_secrets_outside_git_then_on_the_tracked_files(
    baked: Callable[..., Path], tmp_path: Path
) -> None:
    """A fresh bake passes as it is. Not a git checkout yet: the files `git add -A` would take
    (ignored ones left out), in a throwaway index, nothing left behind; once it is one: the
    tracked files only."""
    project = copy(baked("script"), tmp_path)
    environ = env(tmp_path)
    (project / ".env").write_text(f"ALLTKN_API_KEY=sk-{body(48, seed=1)}\n")  # git-ignored

    done = make_secrets(project, environ)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (project / ".git").exists()
    plant(project, "sk-" + body(48))
    done = make_secrets(project, environ)
    assert done.returncode != 0
    assert f"{GATEWAY}\nLocation:    notes/planted.txt:1" in done.stdout
    assert not (project / ".git").exists()

    (project / "notes" / "planted.txt").unlink()
    git_add_all(project, environ)
    assert make_secrets(project, environ).returncode == 0
    plant(project, "sk-" + body(48))
    assert make_secrets(project, environ).returncode == 0  # not tracked: not scanned
    run(["git", "add", "notes/planted.txt"], project, environ)
    done = make_secrets(project, environ)
    assert done.returncode != 0
    assert "Location:    notes/planted.txt:1" in done.stdout


def test_make_plan_runs_detect_secrets_against_the_baseline(baked: Callable[..., Path]) -> None:
    need("make")
    plan = run(["make", "-n", "PY=python", "secrets", "check"], baked("fastapi"), os.environ)

    assert plan.returncode == 0, plan.stderr
    assert "python -m detect_secrets.pre_commit_hook --baseline .secrets.baseline" in plan.stdout


def test_the_pre_commit_hook_uses_the_projects_detect_secrets(
    baked: Callable[..., Path], tmp_path: Path
) -> None:
    """The `repo: local` hook as written, offline, from a plain shell after `make dev` (the
    tool in .venv/bin, not on PATH): passes on the first commit, fails on a staged key."""
    pytest.importorskip("pre_commit")
    project = copy(baked("fastapi"), tmp_path)
    config = yaml.safe_load((project / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    (hook,) = [h for r in config["repos"] for h in r["hooks"] if h["id"] == "detect-secrets"]
    assert hook["args"] == ["--baseline", BASELINE]
    assert hook["language"] == "system"
    local = {"repos": [{"repo": "local", "hooks": [hook]}]}
    config_file = tmp_path / "hooks.yaml"
    config_file.write_text(yaml.safe_dump(local), encoding="utf-8")
    environ = {**env(tmp_path, path="/usr/bin:/bin"), "PRE_COMMIT_HOME": str(tmp_path / "pc")}
    command = [sys.executable, "-m", "pre_commit", "run", "--config", str(config_file)]
    git_add_all(project, environ)

    done = run([*command, "--all-files"], project, environ)
    assert done.returncode != 0
    assert "detect-secrets-hook not found: run make dev" in done.stdout

    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "detect-secrets-hook").symlink_to(tool("detect-secrets-hook"))
    done = run([*command, "--all-files"], project, environ)
    assert done.returncode == 0, done.stdout + done.stderr
    plant(project, "sk-" + body(48))
    run(["git", "add", "notes/planted.txt"], project, environ)
    done = run(command, project, environ)  # the staged files, as on `git commit`
    assert done.returncode != 0
    assert f"{GATEWAY}\nLocation:    notes/planted.txt:1" in done.stdout


def ci_commands(project: Path, ci: str) -> list[str]:
    """The secret-scan job's shell commands, in order."""
    if ci == "github":
        workflow = project / ".github" / "workflows" / "secret-scan.yml"
        steps = yaml.safe_load(workflow.read_text(encoding="utf-8"))["jobs"]["secret-scan"]
        return [step["run"] for step in steps["steps"] if "run" in step]
    job = yaml.safe_load((project / ".gitlab-ci.yml").read_text(encoding="utf-8"))["secret-scan"]
    return [*job.get("before_script", []), *job["script"]]


def needed_by(name: str) -> set[str]:
    """`name` and every distribution it needs, by this venv's metadata (no extras)."""
    found, todo = set(), [name]
    while todo:
        if (dist := canonicalize_name(todo.pop())) not in found:
            found.add(dist)
            needs = (Requirement(line) for line in metadata.requires(dist) or [])
            todo += [r.name for r in needs if not r.marker or r.marker.evaluate({"extra": ""})]
    return found


def hashed_pins(requirements: str) -> dict[str, str]:
    """`name==version` lines of a hashed requirements file by name, each with its hashes."""
    blocks = re.split(r"\n(?=\S)", requirements.strip())
    assert all("--hash=sha256:" in block for block in blocks), requirements
    return {canonicalize_name(b.split("==")[0]): b.split()[0] for b in blocks}


@pytest.mark.parametrize("ci", ["github", "gitlab"])
def test_the_ci_job_installs_detect_secrets_and_runs_the_check(
    baked: Callable[..., Path], tmp_path: Path, ci: str
) -> None:
    """The job's commands run for real in a checkout but for pip (this venv has detect-secrets):
    the requirements it installs with `--require-hashes --no-deps` are detect-secrets, at the
    version the project pins, and all it imports, with their hashes from the dev lock; the scan
    passes, then fails on a key."""
    project = copy(baked("flask", ci), tmp_path)
    environ = {**env(tmp_path), "RUNNER_TEMP": str(tmp_path)}
    git_add_all(project, environ)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    lines = [line for command in ci_commands(project, ci) for line in command.splitlines()]
    *installs, scan = (line.replace(" /tmp/", f" {tmp_path}/") for line in lines)
    pip = f"python -m pip install{' -q' * (ci == 'gitlab')} --require-hashes --no-deps -r "
    wanted = tmp_path / "detect-secrets.txt"

    assert PIN in pyproject["project"]["optional-dependencies"]["dev"]
    assert installs[-1].replace('"$RUNNER_TEMP', str(tmp_path)).rstrip('"') == pip + str(wanted)
    for line in installs[:-1]:
        assert run(["sh", "-c", line], project, environ).returncode == 0
    pins = hashed_pins(wanted.read_text(encoding="utf-8"))
    assert set(pins) == needed_by("detect-secrets")
    assert pins["detect-secrets"] == PIN
    assert scan == "make PY=python secrets"
    need("make")
    done = run(["sh", "-c", scan], project, environ)
    assert done.returncode == 0, done.stdout + done.stderr
    plant(project, "sk-" + body(64))
    run(["git", "add", "-A"], project, environ)
    done = run(["sh", "-c", scan], project, environ)
    assert done.returncode != 0
    assert GATEWAY in done.stdout


def test_a_cruft_json_as_cruft_rewrites_it_passes_the_check(
    baked: Callable[..., Path], tmp_path: Path
) -> None:
    """cruft rewrites .cruft.json in its own format on create and update: the template's commit
    and the key variable's name, which the default plugins flag and JSON cannot allowlist, are
    left out by the baseline's `should_exclude_line` filter."""
    project = copy(baked("fastapi"), tmp_path)
    state = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))
    state["commit"] = state["context"]["cookiecutter"]["_commit"] = "a1b2c3d4" * 5
    (project / ".cruft.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    (exclude,) = [
        f for f in baseline(project)["filters_used"] if f["path"].endswith("should_exclude_line")
    ]
    assert exclude["pattern"] == CRUFT_LINES
    assert plain_scan(project, tmp_path).get(".cruft.json")  # flagged without the baseline
    done = run(
        [tool("detect-secrets-hook"), "--baseline", BASELINE, ".cruft.json"], project, env(tmp_path)
    )
    assert done.returncode == 0, done.stdout


# --- the plain scan: detect-secrets' defaults, no plugin, no baseline --------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_plain_scan_of_the_whole_bake_is_clean(
    baked: Callable[..., Path], tmp_path: Path, framework: str
) -> None:
    """Every file of a fresh bake, .cruft.json included, is clean under the default plugins,
    and the plugin and baseline are there."""
    project = baked(framework)
    assert described(project, plain_scan(project, tmp_path)) == []
    assert {PLUGIN, BASELINE} <= {p.relative_to(project).as_posix() for p in project.rglob("*")}
