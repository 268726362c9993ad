"""Template updates reach generated projects: `.cruft.json`, `cruft check`, `cruft update`.

The template (this working tree, uncommitted changes included) is committed into a scratch git
repository and cloned, as a team would clone it; projects are generated from the clone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import cli_env, copy_template, out_dir, run_cookiecutter

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Template Test",
    "GIT_AUTHOR_EMAIL": "template-test@example.invalid",
    "GIT_COMMITTER_NAME": "Template Test",
    "GIT_COMMITTER_EMAIL": "template-test@example.invalid",
}


def cruft_command() -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        import cruft  # noqa: F401
    except ImportError:
        pytest.skip("cruft is not installed (python -m pip install -r requirements-dev.txt)")
    return [sys.executable, "-m", "cruft"]


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def git(cwd: Path, env: dict[str, str], *args: str) -> str:
    done = run(["git", *args], cwd, env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def git_status(cwd: Path, env: dict[str, str]) -> list[str]:
    """`git status --porcelain` lines, untracked files included."""
    done = run(["git", "status", "--porcelain", "--untracked-files=all"], cwd, env)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def template_clone(tmp_path: Path, env: dict[str, str]) -> Path:
    """A git repository holding the template, and a clone of it."""
    origin = copy_template(tmp_path / "origin")
    git(origin, env, "init", "-q", "-b", "main")
    git(origin, env, "add", "-A")
    git(origin, env, "commit", "-q", "-m", "template v1")
    clone = tmp_path / "template"
    git(tmp_path, env, "clone", "-q", str(origin), str(clone))
    return clone


def assert_no_template_drift(cruft: list[str], project: Path, env: dict[str, str]) -> None:
    """An up-to-date project: `cruft diff` shows nothing (no `.cruft.json` from cruft's temp
    clone either) and the working tree is clean."""
    diff = run([*cruft, "diff", "--exit-code"], project, env)
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout + diff.stderr
    assert git_status(project, env) == []


def test_cookiecutter_writes_cruft_json_without_secrets_or_machine_paths(
    tmp_path: Path,
) -> None:
    env = {**cli_env(tmp_path), **GIT_IDENTITY}
    template = template_clone(tmp_path, env)
    commit = git(template, env, "rev-parse", "HEAD")
    done = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(out_dir(tmp_path)),
         str(template), "framework=flask", "ci=gitlab"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    state = json.loads((out_dir(tmp_path) / "alltkn-service" / ".cruft.json").read_text())
    answers = state["context"]["cookiecutter"]
    assert state["template"] == str(template.resolve())
    assert state["commit"] == commit
    assert answers["_commit"] == commit
    assert answers["framework"] == "flask"
    assert answers["ci"] == "gitlab"
    assert answers["api_key_env_var"] == "ALLTKN_API_KEY"  # the name, never a value
    assert not {"_repo_dir", "_output_dir", "_copy_without_render"} & set(answers)


def test_a_template_outside_git_records_no_commit(tmp_path: Path) -> None:
    template = copy_template(tmp_path / "plain-copy")
    assert run_cookiecutter(tmp_path, ["--no-input"], template=template).returncode == 0

    state = json.loads((out_dir(tmp_path) / "alltkn-service" / ".cruft.json").read_text())
    assert state["commit"] is None
    assert state["template"] == str(template.resolve())


def test_a_template_given_by_relative_path_is_recorded_absolute(tmp_path: Path) -> None:
    env = {**cli_env(tmp_path), **GIT_IDENTITY}
    template = template_clone(tmp_path, env)
    done = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(out_dir(tmp_path)),
         template.name],
        cwd=template.parent, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    state = json.loads((out_dir(tmp_path) / "alltkn-service" / ".cruft.json").read_text())
    assert state["template"] == str(template.resolve())
    assert state["commit"] == git(template, env, "rev-parse", "HEAD")


def test_cruft_check_sees_template_drift_and_update_applies_it(tmp_path: Path) -> None:
    cruft = cruft_command()
    env = {**cli_env(tmp_path), **GIT_IDENTITY}
    template = template_clone(tmp_path, env)
    projects = tmp_path / "projects"
    projects.mkdir()

    created = run(
        [*cruft, "create", "--no-input", "--output-dir", str(projects), str(template),
         "--extra-context", json.dumps({"framework": "fastapi", "ci": "none"})],
        tmp_path, env,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    project = projects / "alltkn-service"
    git(project, env, "init", "-q", "-b", "main")
    git(project, env, "add", "-A")
    git(project, env, "commit", "-q", "-m", "generated")
    assert run([*cruft, "check"], project, env).returncode == 0
    assert_no_template_drift(cruft, project, env)

    # The template moves on: a new line in the generated README.
    readme = template / "{{cookiecutter.project_slug}}" / "README.md"
    marker = "Template change 2: keep your project in sync with `cruft update`."
    readme.write_text(readme.read_text(encoding="utf-8") + f"\n{marker}\n", encoding="utf-8")
    context_file = template / "cookiecutter.json"
    context = json.loads(context_file.read_text(encoding="utf-8"))
    context["_template_version"] = "99.0.0"
    context_file.write_text(json.dumps(context, indent=2) + "\n", encoding="utf-8")
    git(template, env, "commit", "-q", "-am", "template v2")
    new_commit = git(template, env, "rev-parse", "HEAD")

    check = run([*cruft, "check"], project, env)
    assert check.returncode != 0
    assert "out of date" in (check.stdout + check.stderr).lower()

    update = run([*cruft, "update", "--skip-apply-ask", "--allow-untracked-files"], project, env)
    assert update.returncode == 0, update.stdout + update.stderr
    assert "reject" not in (update.stdout + update.stderr).lower()
    assert sorted(project.rglob("*.rej")) == []
    # Exactly the template's changes (the README line, the version the package reports) and
    # cruft's own record: nothing untracked, nothing left in conflict.
    assert sorted(line[3:] for line in git_status(project, env)) == [
        ".cruft.json",
        "README.md",
        "src/alltkn_service/__init__.py",
    ]
    assert not any(line.startswith(("??", "U", "AA", "DD")) for line in git_status(project, env))
    assert marker in (project / "README.md").read_text(encoding="utf-8")
    state = json.loads((project / ".cruft.json").read_text())
    assert state["commit"] == new_commit
    assert state["context"]["cookiecutter"]["_template_version"] == "99.0.0"
    git(project, env, "add", "-A")
    git(project, env, "commit", "-q", "-m", "template update")
    assert run([*cruft, "check"], project, env).returncode == 0
    assert_no_template_drift(cruft, project, env)
    assert not (project / ".github").exists()  # the answers (ci=none) were kept
    assert os.listdir(project / "src") == ["alltkn_service"]


@pytest.mark.parametrize(
    ("answers", "by_cruft"),
    [
        pytest.param({"_output_dir": "/out", "_repo_dir": "/t"}, False, id="cookiecutter"),
        pytest.param({"_commit": "a" * 40, "_template": "/t"}, True, id="cruft"),
        pytest.param({"_commit": "a" * 40, "_output_dir": "/out"}, False, id="replayed-cruft"),
    ],
)
def test_the_hook_leaves_cruft_json_to_cruft(
    post_gen: ModuleType, answers: dict[str, object], by_cruft: bool
) -> None:
    assert post_gen.rendered_by_cruft(answers) is by_cruft
