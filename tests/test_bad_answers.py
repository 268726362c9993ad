"""End to end through the real `cookiecutter` command: bad answers and templated secrets.

Every refusal must: exit non-zero, print one `error: <variable>: ...` line per problem on
stderr and nothing else there (no traceback), never echo a secret, and leave nothing under -o.
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
from conftest import bake_cli, cookiecutter_defaults, out_dir, run_cookiecutter

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
    pytest.param({"api_key_env_var": KEY}, "api_key_env_var", "never the key itself",
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
    lines = result.stderr.splitlines()
    assert lines, result.stdout
    assert all(line.startswith("error: ") for line in lines), result.stderr
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
    context["_copy_without_render"] = raw["_copy_without_render"]
    path.write_text(json.dumps({"cookiecutter": context, "_cookiecutter": {}}), "utf-8")
    return path


@pytest.mark.parametrize(
    ("variable", "value", "fix"),
    [
        pytest.param("framework", "django", "fastapi, flask, script", id="framework-not-a-choice"),
        pytest.param("python_version", "3.9", "3.10, 3.11", id="python-not-a-choice"),
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


# --- secrets that reach generated files ------------------------------------------------------


def bake_with_tmpdir(
    tmp_path: Path, env: dict[str, str] | None = None, **answers: str
) -> subprocess.CompletedProcess[str]:
    """Bake with a private TMPDIR, so the test can see whether rendered hooks were left."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    return run_cookiecutter(
        tmp_path,
        ["--no-input"],
        [f"{key}={value}" for key, value in answers.items()],
        env={"TMPDIR": str(tmpdir), **(env or {})},
    )


def assert_secret_refused(
    result: subprocess.CompletedProcess[str], tmp_path: Path, value: str, kind: str, answer: str
) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    findings = [line for line in lines if line.startswith("error: secret found in generated file")]
    assert findings, result.stderr
    for line in findings:
        assert line.endswith(f" ({kind}: ****{value[-4:]})"), line
        assert ":" in line.split(" file ", 1)[1]  # path:line
    assert "was removed" in lines[-1]
    assert answer in lines[-1]
    assert value not in output
    assert value[:-4] not in output
    assert list(out_dir(tmp_path).iterdir()) == []
    assert list((tmp_path / "tmpdir").iterdir()) == []  # no rendered hook left with answers


def test_secret_in_an_answer_fails_the_post_gen_scan(tmp_path: Path) -> None:
    result = bake_with_tmpdir(tmp_path, description=KEY)

    assert_secret_refused(result, tmp_path, KEY, "api_key", "description")
    assert "pyproject.toml:" in result.stderr


@pytest.mark.parametrize("key_var", ["ALLTKN_API_KEY", "TEAM_GATEWAY_KEY"])
def test_live_key_value_templated_via_an_answer_is_caught(tmp_path: Path, key_var: str) -> None:
    live = "".join(random.Random(key_var).choices(ALNUM, k=32))  # test data, not crypto

    result = bake_with_tmpdir(
        tmp_path, env={key_var: live}, api_key_env_var=key_var, billing_group=live
    )

    assert_secret_refused(result, tmp_path, live, "env_value", "billing_group")


def test_good_answers_bake_and_print_next_steps(tmp_path: Path) -> None:
    result = bake_with_tmpdir(tmp_path, env={"ALLTKN_API_KEY": "not-in-any-file-1234"})

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    project = out_dir(tmp_path) / "alltkn-service"
    assert f"cd {project}" in result.stdout
    assert "ALLTKN_API_KEY" in result.stdout
    assert (project / "src" / "alltkn_service" / "secret_scan.py").is_file()
    assert not (project / "_variants").exists()
    assert list((tmp_path / "tmpdir").iterdir()) == []
