"""The hooks and their shared package as plain modules: answer validation, secrets in answers and
the replay file, variant assembly, the post-gen secret scan and what it removes, and how the
rendered hooks find the template."""

from __future__ import annotations

import ast
import json
import os
import random
import re
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alltkn_hooks import checks, discard_rendered_copy, manifest, replay, variants
from conftest import HOOKS_DIR, TEMPLATE_DIR, cookiecutter_defaults, hook_answers, load_hook

ERROR_LINE = re.compile(r"^error: [a-z_]+: [^\n]+\. [^\n]+$")
_RNG = random.Random(2)  # test data, not crypto
KEY = "sk-" + "".join(_RNG.choices(string.ascii_letters + string.digits, k=48))
PASSWORD = "".join(_RNG.choices(string.ascii_letters + string.digits, k=14))


# --- pre_gen_project: one check per variable -------------------------------------------------

GOOD = [
    pytest.param("project_name", "ALLTKN Service", id="name-default"),
    pytest.param("project_name", 'Ops "Copilot" \\ Desk', id="name-with-quotes-backslash"),
    pytest.param("project_slug", "alltkn-service", id="slug-default"),
    pytest.param("project_slug", "svc2", id="slug-with-digit"),
    pytest.param("project_slug", "a-b-c", id="slug-single-letter-words"),
    pytest.param("package_name", "alltkn_service", id="package-default"),
    pytest.param("package_name", "svc2", id="package-with-digit"),
    pytest.param("package_name", "_internal_svc", id="package-leading-underscore"),
    pytest.param("framework", "fastapi", id="framework-fastapi"),
    pytest.param("framework", "flask", id="framework-flask"),
    pytest.param("framework", "script", id="framework-script"),
    pytest.param("python_version", "3.10", id="python-3.10"),
    pytest.param("python_version", "3.13", id="python-3.13"),
    pytest.param("alltkn_base_url", "https://api.alltkn.com/api/v1", id="url-default"),
    pytest.param("alltkn_base_url", "http://127.0.0.1:8080/api/v1", id="url-local-http-port"),
    pytest.param("alltkn_base_url", "https://gw.example.org/api/v1/", id="url-trailing-slash"),
    pytest.param("api_key_env_var", "ALLTKN_API_KEY", id="env-default"),
    pytest.param("api_key_env_var", "_TEAM2_ALLTKN_KEY", id="env-underscore-digit"),
    pytest.param("default_model", "gpt-4o-mini", id="model-default"),
    pytest.param("default_model", "openai/gpt-4o:beta", id="model-with-slash-colon"),
]

# (variable, value, a fragment of the fix that must be in the message)
BAD = [
    pytest.param("project_name", "", "human-readable name", id="name-empty"),
    pytest.param("project_name", "   ", "human-readable name", id="name-whitespace-only"),
    pytest.param("project_name", "Two\nlines", "single line", id="name-has-newline"),
    pytest.param("project_slug", "My-Service", "e.g. 'my-service'", id="slug-has-uppercase"),
    pytest.param("project_slug", "my service", "e.g. 'my-service'", id="slug-has-space"),
    pytest.param("project_slug", "my_service", "e.g. 'my-service'", id="slug-has-underscore"),
    pytest.param("project_slug", "2fast", "starting with a letter", id="slug-starts-with-digit"),
    pytest.param("project_slug", "-svc", "starting with a letter", id="slug-leading-hyphen"),
    pytest.param("project_slug", "svc-", "single hyphens", id="slug-trailing-hyphen"),
    pytest.param("project_slug", "my--svc", "single hyphens", id="slug-double-hyphen"),
    pytest.param("project_slug", "my.svc", "e.g. 'my-svc'", id="slug-has-dot"),
    pytest.param("project_slug", "a/b", "e.g. 'a-b'", id="slug-has-slash"),
    pytest.param("project_slug", "", "starting with a letter", id="slug-empty"),
    pytest.param("package_name", "my-service", "e.g. 'my_service'", id="package-has-hyphen"),
    pytest.param("package_name", "MyService", "e.g. 'myservice'", id="package-has-uppercase"),
    pytest.param("package_name", "2fast", "starting with a letter", id="package-leading-digit"),
    pytest.param("package_name", "café", "e.g. 'caf'", id="package-non-ascii"),
    pytest.param("package_name", "", "starting with a letter", id="package-empty"),
    pytest.param("package_name", "class", "'class_service'", id="package-is-keyword"),
    pytest.param("package_name", "json", "'json_service'", id="package-is-stdlib-json"),
    pytest.param("package_name", "logging", "'logging_service'", id="package-is-stdlib-logging"),
    pytest.param("package_name", "openai", "'my_openai_service'", id="package-is-dep-openai"),
    pytest.param("package_name", "fastapi", "'my_fastapi_service'", id="package-is-dep-fastapi"),
    pytest.param("package_name", "pytest", "'my_pytest_service'", id="package-is-dep-pytest"),
    pytest.param("package_name", "anyio", "'my_anyio_service'", id="package-is-dep-anyio"),
    pytest.param("package_name", "dotenv", "'my_dotenv_service'", id="package-is-dep-dotenv"),
    pytest.param("package_name", "tests", "'my_tests_service'", id="package-is-tests"),
    pytest.param("package_name", "p" * 29, "shorter import name", id="package-too-long"),
    pytest.param("project_slug", "s" * 41, "shorter distribution name", id="slug-too-long"),
    pytest.param("project_slug", "flask", "'my-flask-service'", id="slug-is-dependency"),
    pytest.param("project_slug", "typing-extensions", "e.g. 'my-typing", id="slug-is-dep-dashed"),
    pytest.param("framework", "django", "fastapi, flask, script", id="framework-unknown"),
    pytest.param("framework", "FastAPI", "fastapi, flask, script", id="framework-wrong-case"),
    pytest.param("python_version", "3.9", "3.10, 3.11, 3.12, 3.13", id="python-too-old"),
    pytest.param("python_version", "3.14", "3.10, 3.11, 3.12, 3.13", id="python-too-new"),
    pytest.param("python_version", "3.12.1", "3.10, 3.11, 3.12, 3.13", id="python-patch-level"),
    pytest.param("alltkn_base_url", "", "/api/v1 root", id="url-empty"),
    pytest.param("alltkn_base_url", "ftp://api.alltkn.com/api/v1", "/api/v1", id="url-ftp"),
    pytest.param("alltkn_base_url", "api.alltkn.com/api/v1", "/api/v1", id="url-no-scheme"),
    pytest.param("alltkn_base_url", "https:///api/v1", "/api/v1 root", id="url-no-host"),
    pytest.param("alltkn_base_url", "https://h:99999/api/v1", "/api/v1", id="url-bad-port"),
    pytest.param("alltkn_base_url", " https://h/api/v1", "/api/v1 root", id="url-whitespace"),
    pytest.param(
        "alltkn_base_url",
        f"https://ops:{PASSWORD}@api.alltkn.com/api/v1",
        "environment variable",
        id="url-has-userinfo",
    ),
    pytest.param("alltkn_base_url", "https://h/api/v1?tenant=a", "Remove it", id="url-query"),
    pytest.param("alltkn_base_url", "https://h/api/v1#top", "Remove it", id="url-fragment"),
    pytest.param(
        "alltkn_base_url",
        "https://api.alltkn.com/api/v1/chat/completions",
        "/api/v1 root",
        id="url-chat-completions",
    ),
    pytest.param(
        "alltkn_base_url",
        "https://api.alltkn.com/api/v1/chat/completions/",
        "/api/v1 root",
        id="url-chat-completions-slash",
    ),
    pytest.param("api_key_env_var", "alltkn_api_key", "e.g. ALLTKN_API_KEY", id="env-lowercase"),
    pytest.param("api_key_env_var", "1KEY", "e.g. ALLTKN_API_KEY", id="env-leading-digit"),
    pytest.param("api_key_env_var", "ALLTKN-KEY", "e.g. ALLTKN_API_KEY", id="env-has-hyphen"),
    pytest.param("api_key_env_var", "", "e.g. ALLTKN_API_KEY", id="env-empty"),
    pytest.param("api_key_env_var", KEY, "never the key itself", id="env-is-pasted-key"),
    *[
        pytest.param("api_key_env_var", name, "dedicated name", id=f"env-reserved-{name}")
        for name in (
            "ALLTKN_BASE_URL",
            "ALLTKN_MODEL",
            "ALLTKN_TIMEOUT_S",
            "ALLTKN_MAX_RETRIES",
            "LOG_LEVEL",
            "ALLTKN_SSE_KEEPALIVE_S",
            "ALLTKN_ALLOWED_MODELS",
            "ALLTKN_CALLERS_FILE",
            "ALLTKN_LIMITS_REDIS_URL",
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
        )
    ],
    *[
        pytest.param("api_key_env_var", name, "dedicated name", id=f"env-system-{name}")
        for name in ("PATH", "HOME", "PYTHONPATH", "HTTPS_PROXY")
    ],
    pytest.param("default_model", "", "e.g. gpt-4o-mini", id="model-empty"),
    pytest.param("default_model", "  ", "e.g. gpt-4o-mini", id="model-whitespace-only"),
    pytest.param("default_model", " gpt-4o-mini", "Remove the spaces", id="model-leading-space"),
    pytest.param("default_model", "gpt-4o-mini\n", "Remove the spaces", id="model-trailing-nl"),
    pytest.param("default_model", "gpt 4o", "exactly as the gateway", id="model-inner-space"),
    pytest.param("default_model", "gpt\t4o", "exactly as the gateway", id="model-inner-tab"),
    pytest.param("default_model", "gpt\x004o", "exactly as the gateway", id="model-control-char"),
]
SECRET_VALUES = (KEY, PASSWORD)


def check(variable: str) -> Any:
    return getattr(checks, f"check_{variable}")


@pytest.mark.parametrize(("variable", "value"), GOOD)
def test_good_answer_passes(variable: str, value: str) -> None:
    assert check(variable)(value) == []


@pytest.mark.parametrize(("variable", "value", "fix"), BAD)
def test_bad_answer_gives_one_line_naming_variable_and_fix(
    variable: str, value: str, fix: str
) -> None:
    lines = check(variable)(value)

    assert lines, f"{value!r} was accepted"
    for line in lines:
        assert ERROR_LINE.match(line), line
        assert line.startswith(f"error: {variable}: ")
        for secret in SECRET_VALUES:
            assert secret not in line
    assert any(fix in line for line in lines), lines


def test_base_url_with_credentials_is_never_echoed() -> None:
    url = f"https://ops:{PASSWORD}@api.alltkn.com/api/v1/chat/completions?x=1"

    lines = checks.check_alltkn_base_url(url)

    assert len(lines) == 3  # credentials, query, /chat/completions: one line each
    assert not any(
        "ops" in line or PASSWORD in line or "api.alltkn.com/api/v1/" in line for line in lines
    )


def test_defaults_are_valid() -> None:
    assert checks.validate(cookiecutter_defaults()) == []


def test_every_problem_is_reported_in_variable_order() -> None:
    answers = {
        **cookiecutter_defaults(),
        "project_slug": "Bad Slug",
        "package_name": "json",
        "caller_auth": "maybe",
        "api_key_env_var": "LOG_LEVEL",
        "default_model": "",
    }

    lines = checks.validate(answers)

    assert [line.split(":")[1].strip() for line in lines] == [
        "project_slug",
        "package_name",
        "caller_auth",
        "api_key_env_var",
        "default_model",
    ]


def test_main_prints_problems_to_stderr_and_returns_1(
    pre_gen: ModuleType, hook_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = hook_answers(framework="django", python_version="2.7")

    assert pre_gen.main(answers, hook_home) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == checks.validate(answers)
    assert manifests(hook_home) == []  # nothing recorded for a refused run


def test_main_returns_0_and_prints_nothing_for_good_answers(
    pre_gen: ModuleType, hook_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (hook_home / "out").mkdir()

    assert pre_gen.main(hook_answers(), hook_home / "out") == 0
    assert capsys.readouterr() == ("", "")


def test_main_survives_missing_and_non_string_answers(
    pre_gen: ModuleType, hook_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = hook_answers(framework=["fastapi"], python_version=3.12)

    assert pre_gen.main(answers, hook_home) == 1

    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert all(ERROR_LINE.match(line) for line in err.splitlines())


def test_pre_gen_main_turns_an_internal_error_into_one_line(
    pre_gen: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(answers: object, project_dir: object) -> list[str]:
        raise RuntimeError(KEY)

    monkeypatch.setattr(pre_gen, "review", boom)

    assert pre_gen.main(hook_answers()) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: pre_gen_project: internal error (RuntimeError)")
    assert KEY not in err
    assert len(err.splitlines()) == 1


# --- pre_gen_project: secrets in answers ---------------------------------------------------------

GH_TOKEN = "ghp_" + "".join(_RNG.choices(string.ascii_letters + string.digits, k=36))
OPAQUE = "".join(_RNG.choices(string.ascii_letters, k=20)) + "".join(
    _RNG.choices("0123456789", k=6)
)
AWS_ID = "AKIA" + "".join(_RNG.choices(string.ascii_uppercase + string.digits, k=16))

# (answers, refused variable, kind named in the message, the value that must never be shown)
SECRET_ANSWERS = [
    pytest.param({"description": f"uses {KEY}"}, "description", "gateway_key", KEY,
                 id="gateway-key-in-description"),
    pytest.param({"api_key_env_var": KEY}, "api_key_env_var", "gateway_key", KEY,
                 id="key-instead-of-variable-name"),
    pytest.param({"project_name": GH_TOKEN, "project_slug": "svc", "package_name": "svc"},
                 "project_name", "github_token", GH_TOKEN, id="github-token-as-name"),
    pytest.param({"billing_group": OPAQUE}, "billing_group", "opaque_token", OPAQUE,
                 id="opaque-token"),
    pytest.param({"key_owner": f"ops ({AWS_ID})"}, "key_owner", "aws_access_key_id", AWS_ID,
                 id="aws-key-id"),
    pytest.param({"log_access": f"Authorization: Bearer {PASSWORD}"}, "log_access",
                 "bearer_token", PASSWORD, id="bearer-literal"),
    pytest.param({"alltkn_base_url": f"https://ops:{PASSWORD}@api.alltkn.com/api/v1"},
                 "alltkn_base_url", "url_password", PASSWORD, id="password-in-url"),
    pytest.param({"project_slug": KEY.lower(), "package_name": "svc"}, "project_slug",
                 "gateway_key", KEY.lower(), id="key-as-slug-not-echoed-by-slug-check"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "variable", "kind", "value"), SECRET_ANSWERS)
def test_secret_answers_are_refused_without_showing_them(
    pre_gen: ModuleType,
    hook_home: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, str],
    variable: str,
    kind: str,
    value: str,
) -> None:
    assert pre_gen.main(hook_answers(**overrides), hook_home) == 1

    out, err = capsys.readouterr()
    ours = [line for line in err.splitlines() if line.startswith(f"error: {variable}: ")]
    assert len(ours) == 1, err
    assert f"looks like a secret ({kind}); the value is not shown" in ours[0]
    assert "ALLTKN_API_KEY environment variable" in ours[0]
    assert all(ERROR_LINE.match(line) for line in err.splitlines())
    for shown in (value, value[:-4], value.lower()[:-4]):
        assert shown not in out + err
    assert manifests(hook_home) == []


@pytest.mark.parametrize("name", ["ALLTKN_API_KEY", "TEAM_GATEWAY_KEY", "DB_PASSWORD"])
def test_the_value_of_a_secret_named_variable_is_refused_anywhere(
    pre_gen: ModuleType,
    hook_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    live = "".join(random.Random(name).choices(string.ascii_lowercase, k=12))  # test data
    monkeypatch.setenv(name, live)

    assert pre_gen.main(hook_answers(billing_group=f"team-{live}"), hook_home) == 1

    err = capsys.readouterr().err
    assert err.startswith("error: billing_group: looks like a secret (env_value)")
    assert live not in err


def test_a_short_or_word_like_variable_value_is_not_a_literal(
    pre_gen: ModuleType, hook_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_API_KEY", "1234567")
    monkeypatch.setenv("KEY_OWNER", "the platform team")
    monkeypatch.setenv("PRIMARY_KEY_NAME", "ALLTKN_API_KEY")
    (hook_home / "out").mkdir()

    assert pre_gen.main(hook_answers(billing_group="1234567"), hook_home / "out") == 0


def write_replay(path: Path, answers: dict[str, object]) -> None:
    """A replay file as cookiecutter 2.x writes it: the answers twice, indented JSON."""
    public = {k: v for k, v in answers.items() if not k.startswith("_")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cookiecutter": answers, "_cookiecutter": public}, indent=2))


def test_a_refused_answer_is_removed_from_the_replay_file(
    pre_gen: ModuleType, hook_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = hook_answers(description=f"uses {KEY}", billing_group="ops")
    replay = hook_home / "replay" / f"{TEMPLATE_DIR.name}.json"
    other = hook_home / "replay" / "other-template.json"
    write_replay(replay, answers)
    write_replay(other, hook_answers())
    other_before = other.read_text()

    assert pre_gen.main(answers, hook_home) == 1

    err = capsys.readouterr().err
    assert f"it was removed from cookiecutter's replay file {replay}" in err
    data = json.loads(replay.read_text())
    assert KEY not in replay.read_text()
    for section in ("cookiecutter", "_cookiecutter"):
        assert "description" not in data[section]
        assert data[section]["billing_group"] == "ops"
    assert other.read_text() == other_before


def test_the_message_says_when_no_replay_file_held_it(
    pre_gen: ModuleType, hook_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pre_gen.main(hook_answers(description=KEY), hook_home) == 1

    err = capsys.readouterr().err
    assert f"no cookiecutter replay file holds it (looked in {hook_home / 'replay'})" in err


def test_replay_file_name_is_the_one_cookiecutter_uses(tmp_path: Path) -> None:
    from cookiecutter.replay import get_file_name

    for template in (tmp_path / "alltkn-template", tmp_path / "checkout" / "templates.json"):
        expected = get_file_name(str(tmp_path / "r"), os.path.basename(template))
        assert replay.replay_file(tmp_path / "r", template) == Path(expected)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param('replay_dir: "/x/my replay"', "/x/my replay", id="double-quoted"),
        pytest.param("replay_dir: '/x/it''s'", "/x/it's", id="single-quoted"),
        pytest.param("replay_dir: /x/plain  # a comment", "/x/plain", id="plain-with-comment"),
        pytest.param("replay_dir: ~/replays", "{home}/replays", id="tilde"),
        pytest.param("replay_dir: $REPLAY_ROOT/r", "/env/root/r", id="environment-variable"),
    ],
)
def test_replay_dir_is_read_from_the_cookiecutter_config(
    hook_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    line: str,
    expected: str,
) -> None:
    config = hook_home / "custom.yaml"
    config.write_text(f"cookiecutters_dir: /elsewhere\n{line}\nabbreviations: {{}}\n")
    monkeypatch.setenv("COOKIECUTTER_CONFIG", str(config))
    monkeypatch.setenv("REPLAY_ROOT", "/env/root")

    assert replay.replay_dir() == Path(expected.format(home=hook_home))


def test_replay_dir_falls_back_to_cookiecutterrc_then_the_default(
    hook_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COOKIECUTTER_CONFIG")
    assert replay.replay_dir() == hook_home / ".cookiecutter_replay"

    (hook_home / ".cookiecutterrc").write_text("replay_dir: /from/rc\n")
    assert replay.replay_dir() == Path("/from/rc")


def test_accepted_answers_record_what_the_output_directory_held(
    pre_gen: ModuleType, hook_home: Path
) -> None:
    project = hook_home / "out" / "svc"
    write_files(project, {"README.md": "mine", "docs/notes.md": "notes"})
    (project / ".git").mkdir()
    (project / ".git" / "config").write_text("[core]")

    assert pre_gen.main(hook_answers(), project) == 0

    before = manifest.take_manifest(project)
    assert set(before.files) == {"README.md", "docs/notes.md"}
    assert before.dirs == {"docs"}
    assert manifests(hook_home) == []  # taken means deleted


# --- both hooks: rendered by cookiecutter ---------------------------------------------------

HOOKS = ["pre_gen_project", "post_gen_project"]


def render_hook(hook: str, answers: dict[str, object], extension: bool = True) -> str:
    """The hook's source rendered as cookiecutter renders it (with the template's extension)."""
    from cookiecutter.environment import StrictEnvironment

    context = {**answers}
    if extension:
        context["_extensions"] = ["alltkn_template_dir.TemplateDirExtension"]
    source = (HOOKS_DIR / f"{hook}.py").read_text(encoding="utf-8")
    environment = StrictEnvironment(context={"cookiecutter": context})
    return environment.from_string(source).render(cookiecutter=answers)


def main_literals(rendered: str) -> dict[str, str]:
    """{name: value} of the string constants assigned in the `__main__` block."""
    (block,) = [
        node
        for node in ast.parse(rendered).body
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
    ]
    return {
        node.targets[0].id: node.value.value
        for node in block.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
    }


@pytest.mark.parametrize("hook", HOOKS)
def test_answers_are_rendered_only_as_json_data(hook: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = (HOOKS_DIR / f"{hook}.py").read_text(encoding="utf-8")
    tricky = "a ''' b \"\"\" c \\ d \\' e {{ f }} {% g %} \n h \u00e9 </script>"
    answers = {**cookiecutter_defaults(), "description": tricky, "project_name": tricky + "\\"}
    monkeypatch.syspath_prepend(str(TEMPLATE_DIR))

    rendered = render_hook(hook, answers)

    # the answers and the template directory, in the __main__ block only
    assert len(re.findall(r"\{\{|\{%|\{#", source)) == 2
    literals = main_literals(rendered)
    assert json.loads(literals["ANSWERS"]) == answers
    assert json.loads(literals["TEMPLATE"]) == os.getcwd()
    assert rendered.count(tricky.splitlines()[0]) <= 1  # nowhere but inside the JSON


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("alltkn-template", id="plain"),
        pytest.param("it'''s \"quoted\"", id="quotes"),
        pytest.param("back\\slash\\", id="backslashes"),
        pytest.param("caf\u00e9 {{ x }}", id="non-ascii-and-braces"),
    ],
)
def test_the_template_directory_is_rendered_intact(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alltkn_template_dir import template_dir

    monkeypatch.syspath_prepend(str(TEMPLATE_DIR))
    where = tmp_path / name
    where.mkdir()
    monkeypatch.chdir(where)

    for hook in HOOKS:
        literal = main_literals(render_hook(hook, cookiecutter_defaults()))["TEMPLATE"]
        assert json.loads(literal) == str(where) == template_dir()


def test_template_dir_is_read_when_called_not_when_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `cruft update` imports the extension once and renders two checkouts.
    monkeypatch.syspath_prepend(str(TEMPLATE_DIR))
    from alltkn_template_dir import template_dir

    for checkout in ("current_template", "new_template"):
        (tmp_path / checkout).mkdir()
        monkeypatch.chdir(tmp_path / checkout)
        assert template_dir() == str(tmp_path / checkout)


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize(
    "extension", [pytest.param(True, id="no-template-here"), pytest.param(False, id="no-extension")]
)
def test_a_hook_that_cannot_find_the_template_fails_closed_in_one_line(
    hook: str, extension: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendered where no template is, or without the extension: one `internal error` line, no
    traceback, no answer shown."""
    monkeypatch.syspath_prepend(str(TEMPLATE_DIR))
    monkeypatch.chdir(tmp_path)
    answers = {**cookiecutter_defaults(), "description": KEY}
    script = tmp_path / "tmpab12cd.py"
    script.write_text(render_hook(hook, answers, extension), encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"error: {hook}: internal error (ModuleNotFoundError). "
        "This is a template bug; please report it\n"
    )


def test_rendered_copy_is_discarded_only_from_the_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rendered = tmp_path / "tmpab12cd.py"
    source = tmp_path / "hooks" / "pre_gen_project.py"
    source.parent.mkdir()
    rendered.write_text("answers", encoding="utf-8")
    source.write_text("template", encoding="utf-8")

    discard_rendered_copy(rendered)
    discard_rendered_copy(source)

    assert not rendered.exists()
    assert source.exists()


@pytest.mark.parametrize("hook", HOOKS)
def test_main_discards_the_rendered_copy(
    hook: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_hook(hook)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rendered = tmp_path / "tmpab12cd.py"
    rendered.write_text("answers", encoding="utf-8")
    if hook == "pre_gen_project":
        monkeypatch.setattr(module, "review", lambda *args: [])
    else:
        monkeypatch.setattr(module, "run", lambda *args: 0)

    module.main({}, rendered_copy=rendered)

    assert not rendered.exists()


# --- post_gen_project: variant layers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("framework", "layers"),
    [
        pytest.param("fastapi", ["web", "async", "fastapi"], id="fastapi"),
        pytest.param("flask", ["web", "sync", "flask"], id="flask"),
        pytest.param("script", ["sync", "async", "script"], id="script"),
    ],
)
def test_layers_for(framework: str, layers: list[str]) -> None:
    assert variants.layers_for(framework) == layers


def test_layers_for_unknown_framework_raises() -> None:
    with pytest.raises(ValueError, match="django"):
        variants.layers_for("django")


VARIANT_FILES = {
    "web": ["src/pkg/http_contract.py", "tests/test_http_contract.py"],
    "sync": ["src/pkg/chat_sync.py"],
    "async": ["src/pkg/chat_async.py"],
    "fastapi": ["src/pkg/app.py", "tests/server.py"],
    "flask": ["src/pkg/app.py", "tests/server.py", "gunicorn.conf.py"],
    "script": ["src/pkg/batch.py"],
}
BASE_FILES = ["pyproject.toml", "src/pkg/__init__.py", "tests/test_core.py"]


def write_files(root: Path, files: dict[str, str]) -> None:
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content, encoding="utf-8")


def make_variant_tree(root: Path) -> Path:
    write_files(root, {name: "base" for name in BASE_FILES})
    for layer, names in VARIANT_FILES.items():
        write_files(root / "_variants" / layer, {name: layer for name in names})
    return root


def tree_files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("framework", ["fastapi", "flask", "script"])
def test_assemble_variant_moves_exactly_the_selected_layers(tmp_path: Path, framework: str) -> None:
    project = make_variant_tree(tmp_path / "proj")
    expected = {name: "base" for name in BASE_FILES}
    for layer in variants.layers_for(framework):
        expected.update({name: layer for name in VARIANT_FILES[layer]})

    moved = variants.assemble_variant(project, framework)

    assert tree_files(project) == expected
    assert not (project / "_variants").exists()
    assert sorted(p.relative_to(project).as_posix() for p in moved) == sorted(
        set(expected) - set(BASE_FILES)
    )


def test_assemble_variant_refuses_to_overwrite_a_project_file(tmp_path: Path) -> None:
    project = make_variant_tree(tmp_path / "proj")
    write_files(project, {"src/pkg/app.py": "core"})
    before = tree_files(project)

    with pytest.raises(variants.VariantCollision, match=r"_variants/fastapi/src/pkg/app\.py"):
        variants.assemble_variant(project, "fastapi")

    assert tree_files(project) == before  # nothing moved, nothing deleted


def test_assemble_variant_refuses_two_layers_with_the_same_file(tmp_path: Path) -> None:
    project = make_variant_tree(tmp_path / "proj")
    write_files(project / "_variants" / "web", {"src/pkg/app.py": "web"})

    with pytest.raises(variants.VariantCollision, match=r"app\.py"):
        variants.assemble_variant(project, "flask")


def test_assemble_variant_without_variants_dir_is_a_no_op(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    write_files(project, {name: "base" for name in BASE_FILES})

    assert variants.assemble_variant(project, "script") == []
    assert tree_files(project) == {name: "base" for name in BASE_FILES}


def test_assemble_variant_may_replace_a_file_left_from_before(tmp_path: Path) -> None:
    project = make_variant_tree(tmp_path / "proj")
    write_files(project, {"src/pkg/batch.py": "from an earlier bake"})

    variants.assemble_variant(project, "script", {project / "src/pkg/batch.py"})

    assert (project / "src/pkg/batch.py").read_text() == "script"


# --- post_gen_project: secret scan and removal ----------------------------------------------


@pytest.fixture
def answers() -> dict[str, str]:
    return {**cookiecutter_defaults(), "package_name": "pkg", "framework": "script"}


@pytest.fixture
def project(tmp_path: Path, hook_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A freshly rendered (not yet assembled) project, as the hook's cwd, with the manifest
    pre-gen leaves for an output directory that did not exist."""
    root = tmp_path / "out" / "my-svc"
    root.mkdir(parents=True)
    manifest.write_manifest(root)
    make_variant_tree(root)
    write_files(root, {".env.example": "ALLTKN_API_KEY=\n", "README.md": "# my-svc\n"})
    monkeypatch.chdir(root)
    return root


def manifests(home: Path) -> list[Path]:
    return sorted((home / "tmp").glob("alltkn-template-pre-gen-*"))


def test_run_on_a_clean_project_prints_next_steps(
    post_gen: ModuleType,
    project: Path,
    hook_home: Path,
    answers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert post_gen.run(answers, project, {}) == 0

    out, err = capsys.readouterr()
    assert err == ""
    assert 4 <= len(out.splitlines()) <= 5
    for fragment in (
        f"cd {project}",
        "git init && make dev && make test",
        "make fake & make try",
        "cp .env.example .env",
        "ALLTKN_API_KEY",
    ):
        assert fragment in out
    assert (project / "src" / "pkg" / "batch.py").is_file()
    assert not (project / "_variants").exists()
    assert manifests(hook_home) == []


def test_run_removes_what_it_created_and_reports_the_secret_masked(
    post_gen: ModuleType,
    project: Path,
    hook_home: Path,
    answers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_files(project, {"README.md": f"# my-svc\n\n{KEY}\n"})
    answers["description"] = KEY

    assert post_gen.run(answers, project, {}) == 1

    out, err = capsys.readouterr()
    lines = err.splitlines()
    masked = "****" + KEY[-4:]
    assert lines[0] == f"error: secret found in generated file README.md:3 (gateway_key: {masked})"
    assert lines[-1].startswith("error: the files this run created were removed. ")
    assert "description" in lines[-1]
    assert "ALLTKN_API_KEY environment variable" in lines[-1]
    assert KEY not in out + err
    assert KEY[:-4] not in out + err
    assert list(project.iterdir()) == []  # left empty for cookiecutter's own cleanup
    assert manifests(hook_home) == []


@pytest.mark.parametrize("name", ["ALLTKN_API_KEY", "BILLING_SECRET"])
def test_run_finds_secret_variable_values_anywhere(
    post_gen: ModuleType,
    project: Path,
    answers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    live = "".join(random.Random(3).choices(string.ascii_letters, k=24))
    write_files(project, {"docs/billing.md": f"Billing group: {live}\n"})
    answers["billing_group"] = live

    assert post_gen.run(answers, project, {name: live}) == 1

    err = capsys.readouterr().err
    assert f"docs/billing.md:1 (env_value: ****{live[-4:]})" in err
    assert "billing_group" in err
    assert live not in err


def test_run_can_skip_the_scan_for_the_benchmark_only(
    post_gen: ModuleType, project: Path, answers: dict[str, str]
) -> None:
    write_files(project, {"README.md": f"{KEY}\n"})

    assert post_gen.run(answers, project, {post_gen.SKIP_SCAN_ENV: "1"}) == 0
    assert (project / "README.md").is_file()


def test_run_reports_a_variant_collision_as_one_line(
    post_gen: ModuleType, project: Path, answers: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_files(project, {"src/pkg/batch.py": "core"})

    assert post_gen.run(answers, project, {}) == 1

    err = capsys.readouterr().err
    assert err.startswith("error: framework: cannot assemble the script variant")
    assert "template bug" in err
    assert len(err.splitlines()) == 1


# --- post_gen_project: generating into an existing directory ---------------------------------

MINE = {
    ".env": f"ALLTKN_API_KEY={KEY}\n",  # a developer's own key, untracked: not ours to flag
    "notes/todo.md": "my notes\n",
    "src/pkg/batch.py": "an older batch.py\n",  # from an earlier bake: replaced, not a collision
    "docs/leak.md": "old text\n",  # overwritten below with a secret
    ".git/config": "[core]\n",
}


@pytest.fixture
def existing(tmp_path: Path, hook_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An output directory that held files before this run (`--overwrite-if-exists`)."""
    root = tmp_path / "out" / "my-svc"
    write_files(root, MINE)
    manifest.write_manifest(root)
    make_variant_tree(root)  # what this run renders
    monkeypatch.chdir(root)
    return root


def test_regenerating_over_an_existing_project_keeps_its_files(
    post_gen: ModuleType, existing: Path, answers: dict[str, str]
) -> None:
    assert post_gen.run(answers, existing, {}) == 0

    files = tree_files(existing)
    assert files["src/pkg/batch.py"] == "script"  # the variant replaced the stale copy
    for name in (".env", "notes/todo.md", "docs/leak.md", ".git/config"):
        assert files[name] == MINE[name]


def test_a_secret_written_over_existing_files_removes_only_what_this_run_created(
    post_gen: ModuleType,
    existing: Path,
    answers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_files(existing, {"docs/leak.md": f"token {GH_TOKEN}\n", "docs/new.md": f"{KEY}\n"})

    assert post_gen.run(answers, existing, {}) == 1

    err = capsys.readouterr().err
    assert "error: secret found in generated file docs/leak.md:1 (github_token: ****" in err
    assert "error: secret found in generated file docs/new.md:1 (gateway_key: ****" in err
    assert ".env" not in err  # the developer's own file was not scanned
    assert "1 file(s) that existed before were overwritten and still hold it (docs/leak.md)" in err
    assert GH_TOKEN not in err
    assert KEY not in err
    files = tree_files(existing)
    assert set(files) == set(MINE)  # everything this run created is gone
    for name in (".env", "notes/todo.md", ".git/config"):
        assert files[name] == MINE[name]
    assert files["src/pkg/batch.py"] == "script"  # replaced by this run: named if it leaked


def test_without_a_manifest_every_file_counts_as_written(
    post_gen: ModuleType, project: Path, answers: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest.take_manifest(project)
    write_files(project, {".env": f"ALLTKN_API_KEY={KEY}\n"})

    assert post_gen.run(answers, project, {}) == 1

    assert ".env:1 (gateway_key: ****" in capsys.readouterr().err
    assert list(project.iterdir()) == []


def test_a_manifest_for_another_directory_is_ignored(tmp_path: Path, hook_home: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    manifest.write_manifest(one)
    manifest.manifest_path(one).rename(manifest.manifest_path(two))

    assert manifest.take_manifest(two) is None
    assert manifests(hook_home) == []


def test_main_uses_cwd_and_environment(
    post_gen: ModuleType,
    project: Path,
    answers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ALLTKN_API_KEY", "short")

    assert post_gen.main(answers) == 0
    out = capsys.readouterr().out
    assert "Next: cd " in out
    # git first: `make dev` installs the commit hooks only in a git checkout.
    assert "\n  git init && make dev && make test " in out


def test_post_gen_main_turns_an_internal_error_into_one_line(
    post_gen: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: object) -> int:
        raise RuntimeError(KEY)

    monkeypatch.setattr(post_gen, "run", boom)

    assert post_gen.main({}) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: post_gen_project: internal error (RuntimeError)")
    assert KEY not in err
