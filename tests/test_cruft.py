"""Template updates reach generated projects: `.cruft.json`, `cruft check`, `cruft update`;
and the hooks work wherever cookiecutter runs.

The template (this working tree, uncommitted changes included) is committed into a scratch git
repository and cloned, as a team would clone it; projects are generated from the clone.

The `*_without_proc` tests run the real `cookiecutter` and `cruft` commands in a mount namespace
whose `/proc` is an empty tmpfs (`unshare --mount --fork`, root only): the hooks must find the
template the same way on Linux, macOS and Windows, with nothing from `/proc` and a stale `PWD`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alltkn_hooks import cruft_file
from conftest import REPLAY_HINT, cli_env, copy_template, out_dir, refusal_lines, run_cookiecutter

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
def test_the_hook_leaves_cruft_json_to_cruft(answers: dict[str, object], by_cruft: bool) -> None:
    assert cruft_file.rendered_by_cruft(answers) is by_cruft


@pytest.mark.parametrize(
    ("template", "recorded"),
    [
        pytest.param("gh:org/tpl", "https://github.com/org/tpl.git", id="gh-abbreviation"),
        pytest.param("gl:org/tpl", "https://gitlab.com/org/tpl.git", id="gl-abbreviation"),
        pytest.param(
            "https://ci:t0ken-value@git.example.org/org/tpl.git",  # secret-scan: allow
            "https://git.example.org/org/tpl.git",
            id="https-credentials-removed",
        ),
        pytest.param("git+https://h/org/tpl.git", "https://h/org/tpl.git", id="git-plus-https"),
        pytest.param("file:///srv/tpl.git", "file:///srv/tpl.git", id="file-url"),
        pytest.param("git@github.com:org/tpl.git", "git@github.com:org/tpl.git", id="scp-like"),
        pytest.param("../tpl", "/abs/tpl", id="local-relative-path"),
        pytest.param(".", "/abs/tpl", id="local-dot"),
    ],
)
def test_template_source_is_what_git_can_clone(template: str, recorded: str) -> None:
    answers = {"_template": template}

    assert cruft_file.template_source(answers, Path("/abs/tpl")) == recorded


# --- .cruft.json and detect-secrets ------------------------------------------------------------

COMMIT = "c5f40ea80d416f250eeaf8a590b17f09564e3ac2"  # a commit id, not a secret


@pytest.mark.parametrize(
    "commit",
    [
        pytest.param(COMMIT, id="hex-commit"),
        pytest.param("0" * 39 + "a", id="digit-first"),
        pytest.param(None, id="no-commit"),
    ],
)
def test_cruft_json_reads_back_as_the_state(commit: str | None) -> None:
    state = cruft_file.cruft_state(
        {"_template": "gh:org/tpl", "api_key_env_var": "TEAM_KEY", "framework": "flask"},
        Path("/unused"),
        commit,
    )

    text = cruft_file.cruft_json(state)

    assert json.loads(text) == state
    assert text.endswith("}\n")
    if commit:
        assert f'"{commit}"' not in text  # not a quoted run of hex digits
    assert '"api_key_env_var"' not in text


def detect_secrets_findings(project: Path) -> dict[str, list[str]]:
    """`detect-secrets scan` with no arguments (the files git tracks): {file: [finding type]}."""
    try:
        import detect_secrets  # noqa: F401
    except ImportError:
        pytest.skip(
            "detect-secrets is not installed (python -m pip install -r requirements-dev.txt)"
        )
    done = run([sys.executable, "-m", "detect_secrets", "scan"], project, dict(os.environ))
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    return {name: [item["type"] for item in found] for name, found in results.items()}


# --- without /proc: cookiecutter (any template path, a git clone) and cruft ---------------------

HIDE_PROC = 'mount -t tmpfs none /proc && test -z "$(ls -A /proc)" && exec "$@"'


def without_proc(command: list[str]) -> list[str]:
    """`command` in a new mount namespace whose /proc is empty; skips if that is impossible."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: cannot hide /proc")
    probe = subprocess.run(
        ["unshare", "--mount", "--fork", "sh", "-c", HIDE_PROC, "probe", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot hide /proc (unshare needs root): {probe.stderr.strip()}")
    return ["unshare", "--mount", "--fork", "sh", "-c", HIDE_PROC, "without-proc", *command]


def origin_repo(tmp_path: Path, env: dict[str, str]) -> Path:
    """A git repository holding the template, as a team's server would (named like one:
    cookiecutter clones a URL it recognises as git, e.g. ending in `.git`)."""
    origin = copy_template(tmp_path / "alltkn-template.git")
    git(origin, env, "init", "-q", "-b", "main")
    git(origin, env, "add", "-A")
    git(origin, env, "commit", "-q", "-m", "template v1")
    return origin


def proc_free_env(tmp_path: Path) -> dict[str, str]:
    """The private cookiecutter config of `cli_env`, and a `PWD` that names nothing."""
    return {**cli_env(tmp_path), **GIT_IDENTITY, "PWD": "/nonexistent"}


COOKIECUTTER = [sys.executable, "-m", "cookiecutter", "--no-input"]
FLOWS = [
    pytest.param("absolute", id="cookiecutter-absolute-path"),
    pytest.param("relative", id="cookiecutter-relative-path"),
    pytest.param("dot", id="cookiecutter-dot"),
    pytest.param("git-url", id="cookiecutter-git-url-clone"),
    pytest.param("cruft-create", id="cruft-create"),
]


@pytest.mark.parametrize("flow", FLOWS)
def test_generation_works_without_proc(tmp_path: Path, flow: str) -> None:
    env = proc_free_env(tmp_path)
    origin = origin_repo(tmp_path, env)
    clone = tmp_path / "template"
    git(tmp_path, env, "clone", "-q", str(origin), str(clone))
    out = out_dir(tmp_path)
    out.mkdir()
    url = origin.as_uri()
    command, cwd, source = {
        "absolute": ([*COOKIECUTTER, "-o", str(out), str(clone)], tmp_path, str(clone)),
        "relative": ([*COOKIECUTTER, "-o", str(out), clone.name], tmp_path, str(clone)),
        "dot": ([*COOKIECUTTER, "-o", str(out), "."], clone, str(clone)),
        "git-url": ([*COOKIECUTTER, "-o", str(out), url], tmp_path, url),
        "cruft-create": (
            [*cruft_command(), "create", "--no-input", "--output-dir", str(out), url],
            tmp_path,
            str(origin),  # cruft records a local URL as its path
        ),
    }[flow]

    done = run(without_proc(command), cwd, env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    project = out / "alltkn-service"
    assert (project / "src" / "alltkn_service" / "__init__.py").is_file()
    assert not (project / "_variants").exists()  # the post-gen hook ran
    state = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))
    assert state["template"] == source
    assert state["commit"] == git(origin, env, "rev-parse", "HEAD")
    assert [p.name for p in (tmp_path / "home").rglob("tmp*.py")] == []
    assert not (clone / "hooks" / "alltkn_hooks" / "__pycache__").exists()


def test_a_secret_answer_is_refused_and_scrubbed_without_proc(tmp_path: Path) -> None:
    env = proc_free_env(tmp_path)
    template = copy_template(tmp_path / "my-template")
    key = "sk-" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6kL9nP2r"  # secret-scan: allow
    out_dir(tmp_path).mkdir()

    done = run(
        without_proc(
            [*COOKIECUTTER, "-o", str(out_dir(tmp_path)), template.name, f"description={key}"]
        ),
        tmp_path,
        env,
    )

    replay = tmp_path / "home" / "replay" / "my-template.json"
    assert done.returncode != 0
    (line,), hint = refusal_lines(done.stderr)
    assert hint == (
        f"{REPLAY_HINT}{replay} -o {out_dir(tmp_path)} {template.name}"
    )  # the template as given (a relative path), the output directory as cookiecutter made it
    assert "description" not in json.loads(replay.read_text(encoding="utf-8"))["cookiecutter"]
    assert line.startswith("error: description: looks like a secret (gateway_key)")
    assert line.endswith(f"it was removed from cookiecutter's replay file {replay}")
    assert key not in done.stdout + done.stderr + replay.read_text(encoding="utf-8")
    assert list(out_dir(tmp_path).iterdir()) == []


def test_a_cookiecutter_project_is_clean_for_detect_secrets_and_cruft_updates_it_without_proc(
    tmp_path: Path,
) -> None:
    cruft = cruft_command()
    env = proc_free_env(tmp_path)
    origin = origin_repo(tmp_path, env)
    out = out_dir(tmp_path)
    out.mkdir()
    made = run(without_proc([*COOKIECUTTER, "-o", str(out), origin.as_uri()]), tmp_path, env)
    assert made.returncode == 0, made.stderr
    project = out / "alltkn-service"
    git(project, env, "init", "-q", "-b", "main")
    git(project, env, "add", "-A")
    git(project, env, "commit", "-q", "-m", "generated")

    assert detect_secrets_findings(project).get(".cruft.json") is None
    assert run([*cruft, "check"], project, env).returncode == 0

    readme = origin / "{{cookiecutter.project_slug}}" / "README.md"
    marker = "Template change 3: reached a project made with plain cookiecutter."
    readme.write_text(readme.read_text(encoding="utf-8") + f"\n{marker}\n", encoding="utf-8")
    git(origin, env, "commit", "-q", "-am", "template v2")
    assert run([*cruft, "check"], project, env).returncode != 0

    update = run(
        without_proc([*cruft, "update", "--skip-apply-ask", "--allow-untracked-files"]),
        project,
        env,
    )

    assert update.returncode == 0, update.stdout + update.stderr
    assert "Traceback" not in update.stdout + update.stderr
    assert sorted(project.rglob("*.rej")) == []
    assert marker in (project / "README.md").read_text(encoding="utf-8")
    assert sorted(line[3:] for line in git_status(project, env)) == [".cruft.json", "README.md"]
    state = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))
    assert state["commit"] == git(origin, env, "rev-parse", "HEAD")
    assert state["context"]["cookiecutter"]["api_key_env_var"] == "ALLTKN_API_KEY"
    git(project, env, "commit", "-q", "-am", "template update")
    assert run([*cruft, "check"], project, env).returncode == 0
