"""End to end through the real `cookiecutter` command: bad answers and templated secrets.

Every refusal must: exit non-zero, print one `error: <variable>: ...` line per problem on
stderr, then the replay hint (the command that asks again for the refused answers alone; see
tests/test_prompts.py) and nothing else there (no traceback), never echo a secret, and leave
nothing under -o.
(Cookiecutter itself logs its own "Stopping generation" traceback to *stdout* on any hook
failure; that is outside the template's control and is not asserted on.)
"""

from __future__ import annotations

import json
import random
import string
import subprocess
from pathlib import Path

import pytest
from conftest import (
    TEMPLATE_DIR,
    bake_cli,
    cookiecutter_defaults,
    copy_template,
    out_dir,
    refusal_lines,
    run_cookiecutter,
)

_RNG = random.Random(5)  # test data, not crypto
ALNUM = string.ascii_letters + string.digits
KEY = "sk-" + "".join(_RNG.choices(ALNUM, k=48))
PASSWORD = "".join(_RNG.choices(ALNUM, k=14))

# (answers, variable named in the error, fragment of the fix, values that must not be echoed)
BAD = [
    pytest.param({"project_name": "   ", "project_slug": "ok-svc"}, "project_name",
                 "human-readable", (), id="name-blank"),
    pytest.param({"project_slug": "My-Service", "package_name": "my_service"}, "project_slug",
                 "'my-service'", (), id="slug-has-uppercase"),
    pytest.param({"project_slug": "my service", "package_name": "my_service"}, "project_slug",
                 "'my-service'", (), id="slug-has-space"),
    pytest.param({"project_slug": "my_service", "package_name": "my_service"}, "project_slug",
                 "'my-service'", (), id="slug-has-underscore"),
    pytest.param({"project_slug": "2fast", "package_name": "fast"}, "project_slug",
                 "starting with a letter", (), id="slug-starts-with-digit"),
    pytest.param({"project_slug": "my--svc", "package_name": "my_svc"}, "project_slug",
                 "single hyphens", (), id="slug-double-hyphen"),
    pytest.param({"package_name": "my-svc"}, "package_name", "'my_svc'", (),
                 id="package-has-hyphen"),
    pytest.param({"package_name": "class"}, "package_name", "'class_service'", (),
                 id="package-is-keyword"),
    pytest.param({"package_name": "json"}, "package_name", "'json_service'", (),
                 id="package-is-stdlib"),
    pytest.param({"package_name": "openai"}, "package_name", "'my_openai_service'", (),
                 id="package-is-dependency"),
    pytest.param({"alltkn_base_url": "ftp://api.alltkn.com/api/v1"}, "alltkn_base_url",
                 "/api/v1 root", (), id="url-not-http"),
    pytest.param({"alltkn_base_url": "https:///api/v1"}, "alltkn_base_url", "/api/v1 root", (),
                 id="url-no-host"),
    pytest.param({"alltkn_base_url": f"https://ops:{PASSWORD}@api.alltkn.com/api/v1"},
                 "alltkn_base_url", "environment variable", (PASSWORD, "ops:"),
                 id="url-has-credentials"),
    pytest.param({"alltkn_base_url": "https://api.alltkn.com/api/v1?team=a"},
                 "alltkn_base_url", "Remove it", ("team=a",), id="url-has-query"),
    pytest.param({"alltkn_base_url": "https://api.alltkn.com/api/v1#docs"}, "alltkn_base_url",
                 "Remove it", (), id="url-has-fragment"),
    pytest.param({"alltkn_base_url": "https://api.alltkn.com/api/v1/chat/completions"},
                 "alltkn_base_url", "/api/v1 root", (), id="url-chat-completions"),
    pytest.param({"alltkn_base_url": "https://api.alltkn.com/api/v1/chat/completions/"},
                 "alltkn_base_url", "/api/v1 root", (), id="url-chat-completions-slash"),
    pytest.param({"api_key_env_var": "alltkn_api_key"}, "api_key_env_var", "ALLTKN_API_KEY",
                 (), id="env-lowercase"),
    pytest.param({"api_key_env_var": KEY}, "api_key_env_var", "looks like a secret",
                 (KEY, KEY[3:20]), id="env-is-a-pasted-key"),
    pytest.param({"api_key_env_var": "LOG_LEVEL"}, "api_key_env_var", "dedicated name", (),
                 id="env-reserved-setting"),
    pytest.param({"api_key_env_var": "OPENAI_API_KEY"}, "api_key_env_var", "dedicated name",
                 (), id="env-reserved-by-sdk"),
    pytest.param({"default_model": ""}, "default_model", "gpt-4o-mini", (), id="model-blank"),
    pytest.param({"default_model": " gpt-4o-mini"}, "default_model", "Remove the spaces", (),
                 id="model-leading-space"),
    pytest.param({"default_model": "gpt 4o mini"}, "default_model", "exactly as the gateway",
                 (), id="model-inner-space"),
]  # fmt: skip


def assert_refused(
    result: subprocess.CompletedProcess[str],
    tmp_path: Path,
    variable: str,
    fix: str,
    hidden: tuple[str, ...] = (),
) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines, replay_hint = refusal_lines(result.stderr)
    assert lines, result.stdout
    assert all(line.startswith("error: ") for line in lines), result.stderr
    assert replay_hint is not None, result.stderr
    ours = [line for line in lines if line.startswith(f"error: {variable}: ")]
    assert ours, result.stderr
    assert any(fix in line for line in ours), ours
    for value in hidden:
        assert value not in result.stdout + result.stderr
    assert list(out_dir(tmp_path).iterdir()) == []


@pytest.mark.parametrize(("answers", "variable", "fix", "hidden"), BAD)
def test_bad_answer_is_refused_with_one_line(
    tmp_path: Path, answers: dict[str, str], variable: str, fix: str, hidden: tuple[str, ...]
) -> None:
    result = bake_cli(tmp_path, **answers)

    assert_refused(result, tmp_path, variable, fix, hidden)


def write_replay(path: Path, **answers: str) -> Path:
    """A replay file: the only way an out-of-list choice reaches the hooks."""
    raw = json.loads((Path(__file__).parents[1] / "cookiecutter.json").read_text("utf-8"))
    context = {**cookiecutter_defaults(), **answers}
    for setting in ("_copy_without_render", "_extensions"):
        context[setting] = raw[setting]
    path.write_text(json.dumps({"cookiecutter": context, "_cookiecutter": {}}), "utf-8")
    return path


@pytest.mark.parametrize(
    ("variable", "value", "fix"),
    [
        pytest.param("framework", "django", "fastapi, flask, script", id="framework-not-a-choice"),
        pytest.param("python_version", "3.9", "3.10, 3.11", id="python-not-a-choice"),
        pytest.param("kubernetes", "maybe", "yes, no", id="kubernetes-not-a-choice"),
    ],
)
def test_out_of_list_choice_from_a_replay_file_is_refused_by_the_hook(
    tmp_path: Path, variable: str, value: str, fix: str
) -> None:
    replay = write_replay(tmp_path / "answers.json", **{variable: value})

    result = run_cookiecutter(tmp_path, ["--replay-file", str(replay)])

    assert_refused(result, tmp_path, variable, fix)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("framework", "django", id="framework"),
        pytest.param("python_version", "3.9", id="python-version"),
        pytest.param("kubernetes", "maybe", id="kubernetes"),
    ],
)
def test_out_of_list_choice_on_the_command_line_is_refused_by_cookiecutter(
    tmp_path: Path, variable: str, value: str
) -> None:
    # cookiecutter 2.x raises ValueError while building the context, before any hook or
    # directory exists; it names the variable but prints its own traceback (not ours to fix).
    result = bake_cli(tmp_path, **{variable: value})

    assert result.returncode != 0
    assert f"choice variable {variable}" in result.stderr
    assert list(out_dir(tmp_path).iterdir()) == []


def test_slug_with_a_slash_is_refused_and_leaves_no_files(tmp_path: Path) -> None:
    result = bake_cli(tmp_path, project_slug="team/svc", package_name="svc")

    assert result.returncode != 0
    assert "error: project_slug: 'team/svc'" in result.stderr
    # cookiecutter deletes only the leaf it created; the empty parent `team/` stays behind.
    assert [p for p in out_dir(tmp_path).rglob("*") if not p.is_dir()] == []


# --- secrets: refused answers, the replay file, secrets the template writes -----------------

GH_TOKEN = "ghp_" + "".join(_RNG.choices(ALNUM, k=36))
LEAK_FILE = "docs/LEAK.md"


def bake_private(
    tmp_path: Path,
    options: tuple[str, ...] = ("--no-input",),
    env: dict[str, str] | None = None,
    template: Path = TEMPLATE_DIR,
    **answers: str,
) -> subprocess.CompletedProcess[str]:
    """Bake with a private TMPDIR, so the test can see whether anything was left there (the
    rendered hooks hold every answer; the manifest must not outlive the run)."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    return run_cookiecutter(
        tmp_path,
        options,
        [f"{key}={value}" for key, value in answers.items()],
        env={"TMPDIR": str(tmpdir), **(env or {})},
        template=template,
    )


def replay_path(tmp_path: Path, template: Path = TEMPLATE_DIR) -> Path:
    """Where cookiecutter wrote this run's replay file (see `cli_env`)."""
    return tmp_path / "home" / "replay" / f"{template.name}.json"


def assert_nothing_left(tmp_path: Path, output: str, *values: str) -> None:
    for value in values:
        assert value not in output
        assert value[:-4] not in output
    assert list((tmp_path / "tmpdir").iterdir()) == []


@pytest.mark.parametrize(
    ("answers", "env", "variable", "kind", "value"),
    [
        pytest.param({"description": f"calls with {KEY}"}, {}, "description", "gateway_key", KEY,
                     id="key-in-description"),
        pytest.param({"api_key_env_var": KEY}, {}, "api_key_env_var", "gateway_key", KEY,
                     id="key-instead-of-variable-name"),
        pytest.param({"billing_group": PASSWORD}, {"TEAM_GATEWAY_KEY": PASSWORD}, "billing_group",
                     "env_value", PASSWORD, id="value-of-a-secret-named-variable"),
    ],
)  # fmt: skip
def test_a_secret_answer_is_refused_and_scrubbed_from_the_replay_file(
    tmp_path: Path,
    answers: dict[str, str],
    env: dict[str, str],
    variable: str,
    kind: str,
    value: str,
) -> None:
    result = bake_private(tmp_path, env=env, **answers)

    lines, hint = refusal_lines(result.stderr)
    replay = replay_path(tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert all(line.startswith("error: ") for line in lines), result.stderr
    assert hint is not None
    assert f"--replay-file {replay} " in hint
    (ours,) = [line for line in lines if line.startswith(f"error: {variable}: ")]
    assert f"looks like a secret ({kind}); the value is not shown" in ours
    assert f"it was removed from cookiecutter's replay file {replay}" in ours
    assert_nothing_left(tmp_path, result.stdout + result.stderr, value)
    assert list(out_dir(tmp_path).iterdir()) == []
    assert value not in replay.read_text(encoding="utf-8")
    kept = json.loads(replay.read_text(encoding="utf-8"))["cookiecutter"]
    assert variable not in kept
    assert kept["project_name"] == "ALLTKN Service"


@pytest.fixture
def leaky_template(tmp_path: Path) -> Path:
    """The template with a bug: it writes a token into every project."""
    template = copy_template(tmp_path / "leaky-template")
    leak = template / "{{cookiecutter.project_slug}}" / LEAK_FILE
    leak.write_text(f"# CI\n\nThe bot uses {GH_TOKEN}.\n", encoding="utf-8")
    return template


def assert_leak_reported(result: subprocess.CompletedProcess[str], tmp_path: Path) -> list[str]:
    lines = result.stderr.splitlines()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert lines[0] == (
        f"error: secret found in generated file {LEAK_FILE}:3 (github_token: ****{GH_TOKEN[-4:]})"
    )
    assert lines[-1].startswith("error: the files this run created were removed")
    assert "rotate it" in lines[-1]
    assert_nothing_left(tmp_path, result.stdout + result.stderr, GH_TOKEN)
    return lines


def test_a_secret_the_template_writes_is_caught_and_the_project_removed(
    tmp_path: Path, leaky_template: Path
) -> None:
    result = bake_private(tmp_path, template=leaky_template)

    assert_leak_reported(result, tmp_path)
    assert list(out_dir(tmp_path).iterdir()) == []


MINE = {
    ".env": f"ALLTKN_API_KEY={KEY}\n",
    "NOTES.md": "my notes\n",
    "docs/decisions.md": "ours\n",
    ".git/HEAD": "ref: refs/heads/main\n",
}


def existing_project(tmp_path: Path) -> Path:
    """An output directory that already holds a developer's files."""
    project = out_dir(tmp_path) / "alltkn-service"
    for relative, content in MINE.items():
        (project / relative).parent.mkdir(parents=True, exist_ok=True)
        (project / relative).write_text(content, encoding="utf-8")
    return project


def files_in(project: Path) -> dict[str, str]:
    return {
        p.relative_to(project).as_posix(): p.read_text(encoding="utf-8")
        for p in project.rglob("*")
        if p.is_file()
    }


def test_overwrite_if_exists_removes_only_what_this_run_wrote(
    tmp_path: Path, leaky_template: Path
) -> None:
    project = existing_project(tmp_path)

    result = bake_private(
        tmp_path, ("--no-input", "--overwrite-if-exists"), template=leaky_template
    )

    lines = assert_leak_reported(result, tmp_path)
    assert not any(".env" in line for line in lines)  # the developer's own file: not scanned
    assert files_in(project) == MINE


def test_overwrite_if_exists_regenerates_over_an_earlier_bake(tmp_path: Path) -> None:
    first = bake_private(tmp_path)
    project = existing_project(tmp_path)

    again = bake_private(tmp_path, ("--no-input", "--overwrite-if-exists"))

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
    assert {name: files_in(project)[name] for name in MINE} == MINE
    assert list((tmp_path / "tmpdir").iterdir()) == []


def test_good_answers_bake_and_print_next_steps(tmp_path: Path) -> None:
    live = "".join(random.Random(7).choices(ALNUM, k=32))  # test data, not crypto
    result = bake_private(tmp_path, env={"ALLTKN_API_KEY": live, "OTHER_TOKEN": live[::-1]})

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    project = out_dir(tmp_path) / "alltkn-service"
    assert f"cd {project}" in result.stdout
    assert "ALLTKN_API_KEY" in result.stdout
    assert not (project / "src" / "alltkn_service" / "secret_scan.py").exists()  # template-only
    assert not (project / "_variants").exists()
    assert list((tmp_path / "tmpdir").iterdir()) == []


def test_a_replay_file_from_before_the_extension_still_finds_the_template(tmp_path: Path) -> None:
    """A replay file written by an older template version has no `_extensions`; cookiecutter
    adds the template's own settings that a replay file lacks, so the hooks still run."""
    replay = write_replay(tmp_path / "answers.json", description=f"uses {KEY}")
    data = json.loads(replay.read_text("utf-8"))
    del data["cookiecutter"]["_extensions"]
    replay.write_text(json.dumps(data), "utf-8")

    result = run_cookiecutter(tmp_path, ["--replay-file", str(replay)])

    assert_refused(result, tmp_path, "description", "looks like a secret (gateway_key)", (KEY,))
