"""The caller_auth / docker / kubernetes / ci options: one at a time plus the pairs that interact.

Each combination bakes into exactly the files computed from its options; the Dockerfile, the
workflows and the manifests pass the field's own linters (hadolint, check-jsonschema's vendored
schemas, zizmor --offline, kubernetes-validate), each skipped with the reason when its tool is
missing; unsupported combinations fail before anything is written, with one line.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from alltkn_hooks import checks, cruft_file, variants
from conftest import bake_cli, out_dir
from test_bake import baked_files, expected_files

TOOLS_DIR = Path(sys.executable).parent
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
ENV_FILES = [".env", ".env.local", ".env.production", "src/.env", "deploy/.env.staging"]

# framework plus the answers that differ from the defaults; ids say what is tested.
COMBINATIONS = [
    pytest.param("fastapi", {}, id="fastapi-defaults"),
    pytest.param("flask", {}, id="flask-defaults"),
    pytest.param("script", {}, id="script-defaults"),
    pytest.param("fastapi", {"docker": "no"}, id="fastapi-no-docker"),
    pytest.param("flask", {"kubernetes": "yes"}, id="flask-k8s"),
    pytest.param("script", {"docker": "no", "worker": "celery"}, id="script-no-docker-celery"),
    pytest.param("fastapi", {"ci": "gitlab", "kubernetes": "yes"}, id="fastapi-k8s-ci-gitlab"),
    pytest.param("script", {"ci": "gitlab", "worker": "celery"}, id="script-celery-ci-gitlab"),
    pytest.param("flask", {"ci": "none"}, id="flask-ci-none"),
    pytest.param("fastapi", {"ci": "none", "docker": "no"}, id="fastapi-bare"),
    pytest.param("fastapi", {"caller_auth": "none", "kubernetes": "yes"}, id="fastapi-open-k8s"),
    pytest.param("flask", {"caller_auth": "none", "ci": "gitlab"}, id="flask-open-gitlab"),
]

# Unsupported: (answers, the one line that must be printed).
UNSUPPORTED = [
    pytest.param(
        {"framework": "script", "kubernetes": "yes"},
        "error: kubernetes: manifests are for the web services, not framework=script. "
        "Use kubernetes=no, or framework=fastapi or flask",
        id="script-with-k8s",
    ),
    pytest.param(
        {"framework": "flask", "docker": "no", "kubernetes": "yes"},
        "error: kubernetes: the manifests deploy the image the Dockerfile builds, and "
        "docker=no. Use docker=yes, or kubernetes=no",
        id="k8s-without-docker",
    ),
    pytest.param(
        {"framework": "script", "caller_auth": "keys"},
        "error: caller_auth: caller keys are for the web services, not framework=script. "
        "Use caller_auth=none, or framework=fastapi or flask",
        id="script-with-caller-keys",
    ),
    pytest.param(
        {"caller_auth": "yes"},
        "error: caller_auth: is not a known choice. Use one of keys, none",
        id="caller-auth-not-keys-or-none",
    ),
]


def options_for(framework: str, overrides: dict[str, str]) -> dict[str, str]:
    web = framework != "script"
    options = {
        "caller_auth": "keys" if web else "none",
        "docker": "yes",
        "kubernetes": "no",
        "ci": "github",
    }
    return {**options, **overrides}


def bake(cookies: Any, framework: str, options: dict[str, str]) -> Path:
    result = cookies.bake(extra_context={"framework": framework, **options})
    assert result.exit_code == 0, result.exception
    return Path(str(result.project_path))


def tool(name: str) -> str:
    """The linter's executable next to this Python, or skip the test saying which is missing."""
    path = TOOLS_DIR / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (python -m pip install -r requirements-dev.txt)")
    return found


def run_ok(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One bake per combination, shared by the linter tests (baking is the slow part)."""
    from conftest import TEMPLATE_DIR
    from cookiecutter.main import cookiecutter

    projects: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("options")
    config = root / "cookiecutter.yaml"
    config.write_text(f"replay_dir: {json.dumps(str(root / 'replay'))}\n", encoding="utf-8")
    for param in COMBINATIONS:
        framework, overrides = param.values
        name = str(param.id)
        project = cookiecutter(
            str(TEMPLATE_DIR),
            no_input=True,
            output_dir=str(root / name),
            extra_context={"framework": framework, **overrides},
            config_file=str(config),
        )
        projects[name] = Path(project)
    return projects


def ids_with(predicate: Any) -> list[str]:
    return [str(p.id) for p in COMBINATIONS if predicate(options_for(*p.values), p.values[0])]


WITH_DOCKER = ids_with(lambda o, fw: o["docker"] == "yes")
WITH_K8S = ids_with(lambda o, fw: o["kubernetes"] == "yes")
WITH_GITHUB = ids_with(lambda o, fw: o["ci"] == "github")
WITH_GITLAB = ids_with(lambda o, fw: o["ci"] == "gitlab")
ALL = [str(p.id) for p in COMBINATIONS]


def caller_keys(name: str) -> bool:
    """Whether the combination `name` bakes caller keys (caller_auth=keys)."""
    (param,) = [p for p in COMBINATIONS if p.id == name]
    return options_for(*param.values)["caller_auth"] == "keys"


def needs_redis(name: str) -> bool:
    """Whether the combination's tests start a Redis: the caller limits' or the queue's."""
    (param,) = [p for p in COMBINATIONS if p.id == name]
    return caller_keys(name) or options_for(*param.values).get("worker") == "celery"


# --- files per combination ---------------------------------------------------------------------


@pytest.mark.parametrize(("framework", "overrides"), COMBINATIONS)
def test_each_combination_has_exactly_its_files(
    cookies: Any, post_gen: ModuleType, framework: str, overrides: dict[str, str]
) -> None:
    options = options_for(framework, overrides)
    project = bake(cookies, framework, options)

    assert baked_files(project) == expected_files(post_gen, "alltkn_service", framework, options)
    assert (project / "Dockerfile").exists() == (options["docker"] == "yes")
    assert (project / "k8s").exists() == (options["kubernetes"] == "yes")
    keys = options["caller_auth"] == "keys"
    assert (project / "src" / "alltkn_service" / "callers.py").exists() == keys
    assert (project / ".github").exists() == (options["ci"] == "github")
    assert (project / ".gitlab-ci.yml").exists() == (options["ci"] == "gitlab")
    # A script serves no stream and has no callers: no SSE, nginx or caller-key snippet.
    snippets = {path.name for path in (project / "docs" / "snippets").iterdir()}
    web_snippets = {"alltkn_sse.py", "sse_fastapi.py", "nginx_sse.conf", "caller_keys.py"}
    assert snippets & web_snippets == (web_snippets if framework != "script" else set())


@pytest.mark.parametrize(("answers", "line"), UNSUPPORTED)
def test_unsupported_combinations_fail_with_one_line(
    tmp_path: Path, answers: dict[str, str], line: str
) -> None:
    done = bake_cli(tmp_path, **answers)

    assert done.returncode != 0
    errors = [text for text in done.stderr.splitlines() if text.startswith("error:")]
    assert errors == [line]
    assert list(out_dir(tmp_path).iterdir()) == []


# --- caller keys: the callers file and the settings --------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_the_callers_file_stays_out_of_git(
    baked: dict[str, Path], tmp_path: Path, name: str
) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    shutil.copy(baked[name] / ".gitignore", tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    paths = ["callers.json", "deploy/callers.json", "callers.example.json"]

    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()

    assert ignored == (paths[:2] if caller_keys(name) else [])


@pytest.mark.parametrize("name", WITH_DOCKER)
def test_the_callers_file_stays_out_of_the_image(baked: dict[str, Path], name: str) -> None:
    ignore = (baked[name] / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for path in ("callers.json", "deploy/callers.json"):
        assert dockerignored(ignore, path) == caller_keys(name), path


@pytest.mark.parametrize("name", ALL)
def test_the_env_example_names_the_caller_settings(baked: dict[str, Path], name: str) -> None:
    """Web bakes: the model allowlist; caller-key bakes: the callers file, and the limits'
    Redis commented out (unset: limits for one process)."""
    lines = (baked[name] / ".env.example").read_text(encoding="utf-8").splitlines()
    settings = {line.split("=")[0] for line in lines if line and not line.startswith("#")}
    web, keys = not name.startswith("script"), caller_keys(name)

    assert ("ALLTKN_ALLOWED_MODELS=" in lines) == web
    assert ("ALLTKN_CALLERS_FILE=callers.json" in lines) == keys
    assert ("# ALLTKN_LIMITS_REDIS_URL=redis://localhost:6379/0" in lines) == keys
    assert "ALLTKN_LIMITS_REDIS_URL" not in settings
    for number, line in enumerate(lines):  # each one documented on the line above it
        if line.startswith(("ALLTKN_ALLOWED_MODELS=", "ALLTKN_CALLERS_FILE=")):
            assert lines[number - 1].startswith("# "), line


# --- Makefile ----------------------------------------------------------------------------------

MAKE_VERBS = ["install", "dev", "test", "lint", "typecheck", "doctor", "run", "secrets", "check"]


@pytest.mark.parametrize("name", ["fastapi-defaults", "flask-defaults", "script-defaults"])
def test_makefile_has_the_verbs_with_and_without_uv(baked: dict[str, Path], name: str) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    project = baked[name]
    for uv in ("", "/usr/bin/true"):  # UV= forces pip; any path stands in for uv
        plan = run_ok(["make", "-n", f"UV={uv}", *MAKE_VERBS], project)
        if uv:  # from uv.lock, refusing a lock that no longer matches pyproject.toml
            assert "uv sync --locked --extra dev" in plan
            assert "uv run python -m pytest" in plan
        else:  # from the hashed export of uv.lock, the project without build isolation
            pip = ".venv/bin/python -m pip install -q"
            assert f"{pip} --require-hashes --no-deps -r requirements-dev.lock.txt" in plan
            assert f"{pip} --no-deps --no-build-isolation -e ." in plan
            assert "-e .[dev]" not in plan.replace('"', "")
            assert ".venv/bin/python -m pytest" in plan
        assert "-m alltkn_service doctor" in plan
        assert "-m detect_secrets.pre_commit_hook --baseline .secrets.baseline" in plan


@pytest.mark.parametrize("name", ["fastapi-defaults", "flask-defaults", "script-defaults"])
def test_make_run_without_a_key_exits_2_with_one_line(baked: dict[str, Path], name: str) -> None:
    """`make run` with no key (none in the environment, no .env): its command exits 2 at once
    with the one-line config error, as `serve` does; FastAPI's reloader used to start first
    (`Uvicorn running on ...`) and hang. make names the command's exit status (`Error 2`)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    project = baked[name]
    assert not (project / ".env").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALLTKN_", "OPENAI_"))}
    env["PYTHONPATH"] = str(project / "src")
    command = ["make", "--no-print-directory", f"PY={sys.executable}", f"PORT={free_port()}", "run"]
    process = subprocess.Popen(
        command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a server left running: the bug
            os.killpg(process.pid, signal.SIGKILL)
    config, made = err.splitlines()
    assert config.startswith("error[config]: ALLTKN_API_KEY is not set."), err
    assert re.fullmatch(r"make: \*\*\* \[Makefile:\d+: run\] Error 2", made), err
    assert "Uvicorn running" not in out + err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["fastapi-defaults", "flask-defaults", "script-defaults"])
def test_make_help_shows_the_addresses_it_serves(baked: dict[str, Path], name: str) -> None:
    """`make` alone lists the targets with the host and ports filled in, the overridden ones
    too; no `$(VARIABLE)` is printed as written."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shown = run_ok(["make", "--no-print-directory", "PORT=8123", "FAKE_PORT=8911"], baked[name])
    assert "$(" not in shown
    assert "fake gateway on 127.0.0.1:8911" in shown
    if name != "script-defaults":
        assert "on http://127.0.0.1:8123/" in shown


def test_the_next_steps_install_without_make_as_make_dev_does(
    baked: dict[str, Path], post_gen: ModuleType
) -> None:
    """For people without make, "Next:" prints the pinned install `make dev` runs without uv:
    the same commands (hashed lock file, no build isolation), -q aside."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    project = baked["script-defaults"]
    (hint,) = [line for line in post_gen.next_steps({}, project) if "no make?" in line]
    plan = run_ok(["make", "--no-print-directory", "-n", "UV=", "dev"], project)
    assert hint.split(": ", 1)[1] == plan.splitlines()[0].replace(" -q", "")


def test_make_test_in_the_background_passes_its_ctrl_c_tests(baked: dict[str, Path]) -> None:
    """A shell starts a background job (`make test &`) with SIGINT ignored; the tests that send
    Ctrl-C to the CLI still see it exit 130 (they used to see `0 == 130`)."""
    project = baked["script-defaults"]
    pytest_run = f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider -p no:xdist"
    job = f"{pytest_run} tests -k 'ctrl_c or interrupt' & wait $!"
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    done = subprocess.run(
        ["bash", "-c", job], cwd=project, env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^\d+ passed", done.stdout.splitlines()[-1]), done.stdout


@pytest.mark.parametrize("name", ["fastapi-defaults", "script-defaults"])
def test_make_lint_passes_in_the_baked_project(baked: dict[str, Path], name: str) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    run_ok(["make", f"PY={sys.executable}", "lint"], baked[name])


@pytest.mark.parametrize("name", ALL)
def test_the_first_commit_passes_the_hygiene_hooks(baked: dict[str, Path], name: str) -> None:
    """What pre-commit-hooks would change or refuse on the first commit: a missing or doubled
    final newline, trailing whitespace, YAML / TOML / JSON that does not parse."""
    project = baked[name]
    problems = []
    tool_caches = {".ruff_cache", ".mypy_cache", ".pytest_cache", "__pycache__"}
    files = [p for p in project.rglob("*") if p.is_file() and not tool_caches & set(p.parts)]
    for path in sorted(files):
        relative = path.relative_to(project).as_posix()
        text = path.read_text(encoding="utf-8")
        if text and (not text.endswith("\n") or text.endswith("\n\n")):
            problems.append(f"{relative}: final newline")
        problems += [
            f"{relative}:{number}: trailing whitespace"
            for number, line in enumerate(text.splitlines(), 1)
            if line != line.rstrip()
        ]
        if path.suffix in (".yml", ".yaml"):
            list(yaml.safe_load_all(text))
        elif path.suffix == ".toml":
            tomllib.loads(text)
        elif path.suffix == ".json":
            json.loads(text)
    assert problems == []


def local_hooks_config(project: Path, destination: Path) -> Path:
    """The project's ruff hooks, run as written. Every hook is `repo: local` (nothing is cloned:
    the first commit works offline); detect-secrets' hook: tests/test_detect_secrets.py."""
    config = yaml.safe_load((project / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    assert {hook["id"] for repo in config["repos"] for hook in repo["hooks"]} >= {
        "detect-secrets",
        "ruff-check",
        "ruff-format",
        "mypy",
        "trailing-whitespace",
    }
    for repo in config["repos"]:
        repo["hooks"] = [hook for hook in repo["hooks"] if hook["id"].startswith("ruff-")]
    destination.write_text(yaml.safe_dump(config), encoding="utf-8")
    return destination


@pytest.mark.parametrize("venv", ["not-activated", "activated", "missing"])
def test_the_local_pre_commit_hooks_find_the_projects_ruff(
    baked: dict[str, Path], tmp_path: Path, venv: str
) -> None:
    """`git commit` from a plain shell after `make dev`: the venv is not on PATH, the hooks
    still run the project's ruff (and fail on a bad file); without ruff, one line says why."""
    try:
        import pre_commit  # noqa: F401
    except ImportError:
        pytest.skip("pre-commit is not installed (python -m pip install -r requirements-dev.txt)")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    ruff = tool("ruff")
    if shutil.which("ruff", path="/usr/bin:/bin"):
        pytest.skip("ruff is installed system-wide: a venv not on PATH cannot be simulated")
    project = shutil.copytree(baked["fastapi-defaults"], tmp_path / "project")
    config = local_hooks_config(project, tmp_path / "local-hooks.yaml")
    path = "/usr/bin:/bin"
    if venv == "not-activated":  # what `make dev` leaves: .venv/bin/ruff, nothing on PATH
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", ".venv"], cwd=project,
                       check=True)  # fmt: skip
        (project / ".venv" / "bin" / "ruff").symlink_to(ruff)
    elif venv == "activated":  # a team's own env, activated: ruff is on PATH, no .venv
        bin_dir = tmp_path / "env-bin"
        bin_dir.mkdir()
        (bin_dir / "ruff").symlink_to(ruff)
        path = f"{bin_dir}:{path}"
    env = {"HOME": str(tmp_path), "PATH": path, "PRE_COMMIT_HOME": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "pre_commit", "run", "--config", str(config), "--all-files"]

    def hooks() -> subprocess.CompletedProcess[str]:
        subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True)
        return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip

    subprocess.run(["git", "init", "-q"], cwd=project, env=env, check=True)
    if venv == "missing":
        done = hooks()
        assert done.returncode != 0
        assert "ruff not found: run make dev" in done.stdout
        return
    done = hooks()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Executable `ruff` not found" not in done.stdout
    (project / "src" / "alltkn_service" / "unused.py").write_text("import os\nx=1\n")
    done = hooks()
    assert done.returncode != 0
    assert "F401" in done.stdout
    assert "would be reformatted" in done.stdout


# --- Dockerfile --------------------------------------------------------------------------------


def dockerignored(pattern_lines: list[str], relative: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins, `!` re-includes; a pattern
    also excludes everything below a matching directory."""
    excluded = False
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in pattern_lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def copy_sources(dockerfile: str) -> list[str]:
    """The build-context sources of every COPY / ADD (not `COPY --from=`)."""
    sources = []
    for line in dockerfile.splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        sources += args[:-1]
    return sources


@pytest.mark.parametrize("name", WITH_DOCKER)
def test_hadolint_passes(baked: dict[str, Path], name: str) -> None:
    run_ok([tool("hadolint"), "Dockerfile"], baked[name])


@pytest.mark.parametrize("name", WITH_DOCKER)
def test_no_copy_can_bring_an_env_file_in(baked: dict[str, Path], name: str) -> None:
    project = baked[name]
    ignore = (project / ".dockerignore").read_text(encoding="utf-8").splitlines()
    sources = copy_sources((project / "Dockerfile").read_text(encoding="utf-8"))

    assert sources, "the Dockerfile copies nothing from the context"
    assert "." not in sources
    assert "./" not in sources
    for env_file in [*ENV_FILES, "secrets/key.pem", "id.key"]:
        assert dockerignored(ignore, env_file), env_file
        for source in sources:
            inside = env_file.startswith(source.rstrip("/") + "/") or fnmatch.fnmatch(
                env_file, source
            )
            assert not inside or dockerignored(ignore, env_file)
    for source in sources:  # what the build needs is still sent
        assert not dockerignored(ignore, source.rstrip("/")), source


@pytest.mark.parametrize("name", WITH_DOCKER)
def test_the_image_is_multi_stage_slim_non_root(baked: dict[str, Path], name: str) -> None:
    project = baked[name]
    dockerfile = (project / "Dockerfile").read_text(encoding="utf-8")
    instructions = [line.split()[0] for line in dockerfile.splitlines() if line[:1].isalpha()]
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    web = not name.startswith("script")

    # Both stages on the same slim image of the chosen Python, pinned by digest.
    assert len(froms) == 2
    assert froms[0] == froms[1]
    assert re.fullmatch(r"python:3\.13\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", froms[0])
    assert "docker buildx imagetools inspect" in dockerfile
    # Only hashed, locked wheels; the project itself built by the locked backend.
    assert "--require-hashes --no-deps -r requirements.lock.txt" in dockerfile
    assert "--require-hashes --no-deps -r requirements-build.lock.txt" in dockerfile
    assert "--no-build-isolation" in dockerfile
    assert "ca-certificates" in dockerfile
    assert re.search(r"^USER 10001$", dockerfile, re.MULTILINE)
    assert instructions.index("USER") > instructions.index("RUN")  # nothing runs as root after
    # A web image probes /healthz; the command-line image says it has nothing to probe.
    assert ("HEALTHCHECK NONE" not in dockerfile) == web
    assert "HEALTHCHECK" in instructions
    if name.startswith("fastapi"):
        assert "/healthz" in dockerfile
        assert "WEB_CONCURRENCY=" in dockerfile
        assert "exec python -m alltkn_service serve --host 0.0.0.0" in dockerfile
    elif name.startswith("flask"):
        assert '"gunicorn", "-c", "gunicorn.conf.py"' in dockerfile
        assert "COPY gunicorn.conf.py" in dockerfile
    else:
        assert 'ENTRYPOINT ["alltkn-service"]' in dockerfile
    assert "ALLTKN_API_KEY=" not in dockerfile
    assert "ARG ALLTKN_API_KEY" not in dockerfile


@pytest.mark.parametrize("name", ids_with(lambda o, fw: fw == "fastapi"))
def test_every_fastapi_command_keeps_the_asyncio_loop(baked: dict[str, Path], name: str) -> None:
    """uvloop misses client hang-ups (upstream streams run on, billed): the image's command,
    `make run` and docs/RUN.md's production command all pin `--loop asyncio`, on uvicorn's
    command line or through `serve`, which pins it in the code."""
    project = baked[name]
    readme = (project / "docs" / "RUN.md").read_text(encoding="utf-8")
    serve = (project / "src" / "alltkn_service" / "cli.py").read_text(encoding="utf-8")
    assert 'loop="asyncio"' in serve
    production = re.search(r"^Production: `([^`]+)`", readme, re.MULTILINE)
    assert production is not None
    makefile = (project / "Makefile").read_text(encoding="utf-8")
    run_line = re.search(r"^run:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert run_line is not None
    commands = {"docs/RUN.md production": production[1], "make run": run_line[1]}
    if (project / "Dockerfile").exists():
        commands["image CMD"] = exec_form(
            (project / "Dockerfile").read_text(encoding="utf-8"), "CMD"
        )[-1]
    for where, command in commands.items():
        words = shlex.split(command)
        if "serve" in words:
            assert words[words.index("serve") - 1] in ("alltkn_service", "$(PACKAGE)"), where
            continue
        assert {"alltkn_service.app:app", "$(PACKAGE).app:app"} & set(words), where
        assert "--loop" in words, f"{where}: {command}"
        assert words[words.index("--loop") + 1 :][:1] == ["asyncio"], where


def test_gunicorn_workers_come_from_the_environment(baked: dict[str, Path], tmp_path: Path) -> None:
    config = baked["flask-defaults"] / "gunicorn.conf.py"
    code = "import runpy, sys; print(runpy.run_path(sys.argv[1])['workers'])"
    for value in ("5", None):
        env = {"PATH": "/usr/bin:/bin", **({"WEB_CONCURRENCY": value} if value else {})}
        env["PYTHONPATH"] = str(config.parent / "src")  # the config imports the package's logs
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)  # else it makes one in /tmp
        env["ALLTKN_API_KEY"] = "fake-key-for-the-fake-gateway"  # it checks the settings first
        done = subprocess.run(
            [sys.executable, "-c", code, str(config)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip() == (value or "2")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exec_form(dockerfile: str, instruction: str) -> list[str]:
    """The JSON argument list of the last `CMD [...]` / `HEALTHCHECK ... CMD [...]`."""
    joined = dockerfile.replace("\\\n", " ")
    found = re.findall(rf"^{instruction}\b.*?(\[.*\])\s*$", joined, re.MULTILINE)
    assert found, instruction
    return list(json.loads(found[-1]))


@pytest.mark.parametrize("name", ["fastapi-defaults", "flask-defaults", "fastapi-open-k8s"])
def test_the_image_command_serves_and_its_healthcheck_passes(
    baked: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """The image's CMD and HEALTHCHECK, run outside a container (no Docker engine needed) with
    the image's environment: the production server starts WEB_CONCURRENCY workers and the
    healthcheck command exits 0 against it. With caller keys, the callers file is outside the
    project, as the Deployment mounts it, and holds one caller made by `keys create`."""
    project = baked[name]
    dockerfile = (project / "Dockerfile").read_text(encoding="utf-8")
    command, probe = exec_form(dockerfile, "CMD"), exec_form(dockerfile, "HEALTHCHECK")
    port = free_port()
    env = {
        "PATH": f"{TOOLS_DIR}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(project / "src"),
        "ALLTKN_API_KEY": "any-key-works-with-the-fake",
        "WEB_CONCURRENCY": "2",
        "PORT": str(port),
        "BIND": f"127.0.0.1:{port}",
    }
    if caller_keys(name):
        env["ALLTKN_CALLERS_FILE"] = str(tmp_path / "callers" / "callers.json")
        (tmp_path / "callers").mkdir()
        create = [sys.executable, "-m", "alltkn_service", "keys", "create", "probe"]
        done = subprocess.run(create, cwd=project, env=env, capture_output=True, text=True,
                              check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
    server = subprocess.Popen(
        command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            check = subprocess.run(probe, env=env, capture_output=True, check=False)
            if check.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(0.3)
        assert check.returncode == 0, check.stderr.decode()
        for _ in range(50):  # the second worker may still be booting when the first answers
            workers = subprocess.run(
                ["pgrep", "-s", str(server.pid)], capture_output=True, text=True, check=False
            ).stdout.split()
            if len(workers) >= 3:
                break
            time.sleep(0.1)
        assert len(workers) >= 3  # the manager and WEB_CONCURRENCY=2 workers
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output = server.communicate(timeout=30)[0].decode()
    assert "Traceback" not in output


def test_the_image_builds_and_answers_healthz(baked: dict[str, Path]) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client")
    info = subprocess.run([docker, "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        pytest.skip("no Docker daemon (docker info failed); the image is linted only")
    project = baked["fastapi-defaults"]
    run_ok([docker, "build", "-q", "-t", "alltkn-template-test:latest", "."], project)
    listing = run_ok(
        [
            docker,
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            "alltkn-template-test:latest",
            "-c",
            "id -u; ls -a /app; find / -name '.env*' -not -path '/proc/*' 2>/dev/null",
        ],
        project,
    )
    assert listing.splitlines()[0] == "10001"
    assert ".env" not in listing


# --- CI ----------------------------------------------------------------------------------------


def make_targets(project: Path) -> set[str]:
    makefile = (project / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))


def make_calls(commands: list[str]) -> list[str]:
    return [
        target
        for command in commands
        for line in command.splitlines()
        for words in [line.split()]
        if words and words[0] == "make"
        for target in words[1:]
        if "=" not in target
    ]


@pytest.mark.parametrize("name", WITH_GITHUB)
def test_github_workflows_validate_and_pass_zizmor(baked: dict[str, Path], name: str) -> None:
    project = baked[name]
    workflows = sorted(str(p) for p in (project / ".github" / "workflows").glob("*.yml"))
    assert [Path(w).name for w in workflows] == ["ci.yml", "secret-scan.yml"]

    run_ok(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *workflows],
        project,
    )
    dependabot = project / ".github" / "dependabot.yml"
    run_ok(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.dependabot", str(dependabot)],
        project,
    )
    ecosystems = [u["package-ecosystem"] for u in yaml.safe_load(dependabot.read_text())["updates"]]
    docker = ["docker"] if (project / "Dockerfile").exists() else []
    assert ecosystems == ["uv", *docker, "github-actions"]
    # The auditor persona reports every finding, the pedantic and low-confidence ones too; the
    # whole .github directory: the workflows and dependabot.yml.
    output = run_ok(
        [tool("zizmor"), "--offline", "--no-progress", "--persona=auditor", ".github"], project
    )
    assert "No findings to report" in output


@pytest.mark.parametrize("name", WITH_GITHUB)
def test_github_ci_is_least_privilege_pinned_and_runs_make(
    baked: dict[str, Path], name: str
) -> None:
    project = baked[name]
    ci = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    steps = [step for job in ci["jobs"].values() for step in job["steps"]]
    calls = make_calls([step["run"] for step in steps if "run" in step])

    assert ci["permissions"] == {"contents": "read"}
    assert all("permissions" not in job for job in ci["jobs"].values())
    for step in steps:
        if "uses" in step:
            assert SHA_PIN.match(step["uses"]), step["uses"]
        if "actions/checkout" in step.get("uses", ""):
            assert step["with"]["persist-credentials"] is False
    assert {"lint", "typecheck", "test", "doctor"} <= set(calls)
    assert set(calls) <= make_targets(project)
    checks_steps = [step.get("run", "") for step in ci["jobs"]["checks"]["steps"]]
    redis = [n for n, run in enumerate(checks_steps) if "redis-server" in run]
    if needs_redis(name):  # the limiter and queue tests start Debian's redis-server themselves
        assert [checks_steps[n] for n in redis] == [
            "sudo apt-get update && sudo apt-get install -y redis-server"
        ]
        assert redis[0] < checks_steps.index("make PY=python test")
    else:
        assert redis == []
    smoke = ci["jobs"]["smoke"]
    # The key only on pushes to the default branch, in the environment that holds it (its
    # required reviewers approve each run); no other job names a secret.
    assert smoke["if"] == (
        "github.event_name == 'push' && github.ref_name == github.event.repository.default_branch"
    )
    assert smoke["environment"] == "gateway"
    others = [job for job_name, job in ci["jobs"].items() if job_name != "smoke"]
    assert "secrets." not in json.dumps(others)
    assert smoke["env"]["HAS_KEY"] == "${{ secrets.ALLTKN_API_KEY != '' }}"
    doctor = next(s for s in smoke["steps"] if "doctor" in s.get("run", ""))
    assert doctor["if"] == "env.HAS_KEY == 'true'"
    assert doctor["env"] == {"ALLTKN_API_KEY": "${{ secrets.ALLTKN_API_KEY }}"}
    # doctor checks the callers file of caller-key bakes: a throwaway one, never the real one.
    throwaway = "python -m alltkn_service keys create ci-smoke > /dev/null"
    assert (throwaway in doctor["run"].splitlines()) == caller_keys(name)
    # Every install is from the hashed lock; no job installs the project with its dependencies.
    installs = [
        line for s in steps for line in s.get("run", "").splitlines() if "pip install" in line
    ]
    locked = ("--require-hashes --no-deps -r requirements", "--no-deps --no-build-isolation")
    assert installs
    assert all(any(part in line for part in locked) for line in installs), installs
    # No step prints the key or the environment.
    assert not any(
        re.search(r"echo .*secrets\.|printenv|\benv\b\s*$", s.get("run", "")) for s in steps
    )


@pytest.mark.parametrize("name", WITH_GITLAB)
def test_gitlab_ci_validates_and_calls_make_targets(baked: dict[str, Path], name: str) -> None:
    project = baked[name]
    run_ok(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", ".gitlab-ci.yml"],
        project,
    )
    run_ok(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.renovate", "renovate.json"], project
    )
    ci = yaml.safe_load((project / ".gitlab-ci.yml").read_text())
    jobs = {k: v for k, v in ci.items() if isinstance(v, dict) and "script" in v}
    # Every install is from the hashed lock (detect-secrets alone, at its pinned version).
    lines = [
        *ci[".install-dev"]["before_script"],
        *(x for job in jobs.values() for x in job["script"]),
    ]
    installs = [line for line in lines if "pip install" in line and "detect-secrets" not in line]
    locked = ("--require-hashes --no-deps -r requirements", "--no-deps --no-build-isolation")
    assert len(installs) == 4
    assert all(any(part in line for part in locked) for line in installs), installs
    calls = make_calls([line for job in jobs.values() for line in job["script"]])

    assert set(jobs) == {"lint", "typecheck", "test", "secret-scan", "smoke"}
    assert {"lint", "typecheck", "test", "secrets", "doctor"} <= set(calls)
    assert set(calls) <= make_targets(project)
    install = "apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server"
    expected = [install] if needs_redis(name) else []  # before the tests that start it
    assert jobs["test"]["script"] == [*expected, "make PY=python test"]
    others = [
        line for job_name, job in jobs.items() if job_name != "test" for line in job["script"]
    ]
    assert not any("redis" in line for line in others)
    # The key is a protected variable: only pushes to the protected default branch run doctor.
    assert jobs["smoke"]["rules"] == [
        {
            "if": '$CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH'
            ' && $CI_COMMIT_REF_PROTECTED == "true" && $ALLTKN_API_KEY'
        }
    ]
    throwaway = "python -m alltkn_service keys create ci-smoke > /dev/null"
    assert (throwaway in jobs["smoke"]["script"]) == caller_keys(name)


# --- Kubernetes --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WITH_K8S)
def test_manifests_validate_against_the_kubernetes_schemas(
    baked: dict[str, Path], name: str
) -> None:
    project = baked[name]
    manifests = sorted(str(p) for p in (project / "k8s").glob("*.yaml"))
    run_ok([tool("kubernetes-validate"), "--strict", *manifests], project)


@pytest.mark.parametrize("name", WITH_K8S)
def test_the_deployment_reads_the_key_from_a_secret(baked: dict[str, Path], name: str) -> None:
    project = baked[name]
    docs = {
        doc["kind"]: doc
        for path in sorted((project / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    }
    assert set(docs) == {
        "Namespace",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Ingress",
    }
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}

    assert env["ALLTKN_API_KEY"] == {
        "name": "ALLTKN_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "alltkn-service-gateway", "key": "ALLTKN_API_KEY"}},
    }
    assert "WEB_CONCURRENCY" in env
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert set(container["resources"]) == {"requests", "limits"}
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "alltkn-service"
    assert (
        docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    )


@pytest.mark.parametrize("name", WITH_K8S)
def test_the_manifests_are_namespaced_pinned_and_fenced(baked: dict[str, Path], name: str) -> None:
    """Nothing in `default`; the image by digest (a placeholder to replace), never a tag; /tmp
    bounded; the NetworkPolicy lets in only the service port and out only DNS, 443 (and the
    limits' Redis with caller keys); the Ingress buffers bodies, not streams."""
    project = baked[name]
    docs = [
        doc
        for path in sorted((project / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]
    by_kind = {doc["kind"]: doc for doc in docs}
    namespace = by_kind["Namespace"]["metadata"]["name"]
    assert sorted(p.name for p in (project / "k8s").glob("*.yaml"))[0] == "00-namespace.yaml"
    assert all(
        doc["metadata"].get("namespace") == namespace for doc in docs if doc["kind"] != "Namespace"
    )
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert re.fullmatch(r"REGISTRY/alltkn-service@sha256:0{64}", container["image"])
    (tmp,) = [volume for volume in pod["volumes"] if volume["name"] == "tmp"]
    assert tmp["emptyDir"]["sizeLimit"] == "64Mi"

    policy = by_kind["NetworkPolicy"]["spec"]
    assert policy["podSelector"] == by_kind["Deployment"]["spec"]["selector"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8000}]}]
    assert container["ports"][0]["containerPort"] == 8000
    egress = [(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]]
    assert all("to" not in rule for rule in policy["egress"])
    redis = [("TCP", 6379)] if caller_keys(name) else []
    assert egress == [("UDP", 53), ("TCP", 53), ("TCP", 443), *redis]

    ingress = by_kind["Ingress"]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "1m"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 300
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": by_kind["Service"]["metadata"]["name"], "port": {"name": "http"}}


@pytest.mark.parametrize("name", WITH_K8S)
def test_the_pods_ask_prometheus_to_scrape_their_metrics(baked: dict[str, Path], name: str) -> None:
    """Annotations a Prometheus that discovers pods reads: the container's port, `/metrics`;
    the metrics token's Secret only as a comment (unset: /metrics is open)."""
    deployment = yaml.safe_load((baked[name] / "k8s" / "deployment.yaml").read_text())
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    port = container["ports"][0]["containerPort"]

    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    assert "ALLTKN_METRICS_TOKEN" not in {item["name"] for item in container["env"]}
    assert "# - name: ALLTKN_METRICS_TOKEN" in (baked[name] / "k8s" / "deployment.yaml").read_text()


@pytest.mark.parametrize("caller_auth", ["none", "keys"])
def test_the_worker_pods_are_probed_fenced_and_reach_redis(cookies: Any, caller_auth: str) -> None:
    """worker=celery with kubernetes=yes: the worker Deployment is probed by the heartbeat check
    the package ships, under the web pods' security context; both NetworkPolicies let out Redis
    (the web pods enqueue, the workers take jobs), and nothing in to the workers."""
    options = {"caller_auth": caller_auth, "worker": "celery", "kubernetes": "yes"}
    project = bake(cookies, "fastapi", options)
    manifests = sorted(str(p) for p in (project / "k8s").glob("*.yaml"))
    run_ok([tool("kubernetes-validate"), "--strict", *manifests], project)
    docs = {
        doc["metadata"]["name"] + "/" + doc["kind"]: doc
        for path in manifests
        for doc in yaml.safe_load_all(Path(path).read_text())
    }
    web = docs["alltkn-service/Deployment"]["spec"]["template"]["spec"]
    pod = docs["alltkn-service-worker/Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (web_container,) = web["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}

    assert env["WORKER_HEARTBEAT_FILE"].startswith("/tmp/")  # the writable emptyDir
    assert (project / "src" / "alltkn_service" / "heartbeat.py").is_file()
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:3] == ["python", "-m", "alltkn_service.heartbeat"]
        assert command[3] == "--max-age"
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["securityContext"] == web_container["securityContext"]
    shared = {"runAsNonRoot", "runAsUser", "seccompProfile"}
    assert {k: pod["securityContext"][k] for k in shared} == {
        k: web["securityContext"][k] for k in shared
    }
    assert "ports" not in container

    dns_https_redis = [("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6379)]
    for name in ("alltkn-service", "alltkn-service-worker"):
        policy = docs[f"{name}/NetworkPolicy"]["spec"]
        selected = docs[f"{name}/Deployment"]["spec"]["selector"]
        assert policy["podSelector"] == selected
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        egress = [(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]]
        assert egress == dns_https_redis
    assert "ingress" not in docs["alltkn-service-worker/NetworkPolicy"]["spec"]  # none let in

    # docs/WORKER.md's scaling examples: valid, and aimed at this Deployment and queue.
    guide = (project / "docs" / "WORKER.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```yaml\n(.*?)^```$", guide, re.M | re.S)
    examples = {doc["kind"]: doc for block in blocks for doc in yaml.safe_load_all(block)}
    assert set(examples) == {"HorizontalPodAutoscaler", "TriggerAuthentication", "ScaledObject"}
    hpa = project / "hpa-example.yaml"
    hpa.write_text(yaml.safe_dump(examples["HorizontalPodAutoscaler"]), encoding="utf-8")
    run_ok([tool("kubernetes-validate"), "--strict", str(hpa)], project)
    worker = docs["alltkn-service-worker/Deployment"]["metadata"]
    assert examples["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == worker["name"]
    scaled = examples["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["name"]
    (trigger,) = scaled["spec"]["triggers"]
    jobs = (project / "src" / "alltkn_service" / "jobs.py").read_text(encoding="utf-8")
    assert f'QUEUE = "{trigger["metadata"]["listName"]}"' in jobs  # the Celery queue's list
    auth = examples["TriggerAuthentication"]["spec"]["secretTargetRef"][0]
    assert auth["name"] in (project / "k8s" / "worker-deployment.yaml").read_text()


@pytest.mark.parametrize("name", WITH_K8S)
def test_the_deployment_mounts_the_callers_file_for_caller_keys(
    baked: dict[str, Path], name: str
) -> None:
    """Caller keys: the callers file from a Secret, in a volume (the directory, read-only, 0440,
    group of the image's user), the limits' Redis URL from a required Secret. Without keys:
    neither. (A projected volume: `secretName: <name>` is what detect-secrets flags.)"""
    project = baked[name]
    (deployment,) = [
        doc
        for doc in yaml.safe_load_all((project / "k8s" / "deployment.yaml").read_text())
        if doc["kind"] == "Deployment"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item for item in container["env"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}

    if not caller_keys(name):
        assert "callers" not in volumes
        assert "callers" not in mounts
        assert not {"ALLTKN_CALLERS_FILE", "ALLTKN_LIMITS_REDIS_URL"} & set(env)
        assert "fsGroup" not in pod["securityContext"]
        return
    assert volumes["callers"]["projected"] == {
        "defaultMode": 0o440,
        "sources": [
            {
                "secret": {
                    "name": "alltkn-service-callers",
                    "items": [{"key": "callers.json", "path": "callers.json"}],
                }
            }
        ],
    }
    assert mounts["callers"] == {  # no subPath: the kubelet updates the file in place
        "name": "callers",
        "mountPath": "/etc/alltkn-service/callers",
        "readOnly": True,
    }
    assert env["ALLTKN_CALLERS_FILE"]["value"] == "/etc/alltkn-service/callers/callers.json"
    assert env["ALLTKN_LIMITS_REDIS_URL"]["valueFrom"] == {  # required: not `optional`
        "secretKeyRef": {"name": "alltkn-service-limits", "key": "redis-url"}
    }
    user = re.search(r"^USER (\d+)$", (project / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None
    assert pod["securityContext"]["fsGroup"] == int(user[1])
    assert pod["securityContext"]["runAsUser"] == int(user[1])


# --- the hooks' option logic, as plain functions -----------------------------------------------


@pytest.mark.parametrize(
    ("framework", "options", "layers"),
    [
        pytest.param("fastapi", {}, ["web", "async", "fastapi"], id="no-options"),
        pytest.param(
            "fastapi",
            {"docker": "yes", "kubernetes": "yes", "ci": "github"},
            ["web", "async", "fastapi", "docker", "k8s", "ci-github"],
            id="fastapi-everything",
        ),
        pytest.param(
            "script",
            {"docker": "yes", "kubernetes": "no", "ci": "gitlab"},
            ["sync", "async", "rows", "script", "docker", "ci-gitlab"],
            id="script-docker-gitlab",
        ),
        pytest.param(
            "flask",
            {"docker": "no", "kubernetes": "no", "ci": "none"},
            ["web", "sync", "flask"],
            id="bare",
        ),
        pytest.param(
            "flask",
            {"caller_auth": "keys", "docker": "yes", "kubernetes": "yes", "ci": "gitlab"},
            [
                "web",
                "sync",
                "flask",
                "limits",
                "callers",
                "docker",
                "k8s",
                "ci-gitlab",
                "lock-flask-keys",
            ],
            id="flask-caller-keys",
        ),
        pytest.param(
            "fastapi",
            {"caller_auth": "none", "ci": "github"},
            ["web", "async", "fastapi", "ci-github", "lock-fastapi-none"],
            id="fastapi-open",
        ),
        pytest.param(
            "script",
            {"caller_auth": "keys", "docker": "yes"},
            ["sync", "async", "rows", "script", "docker", "lock-script-keys"],
            id="script-never-gets-caller-keys",
        ),
        pytest.param(
            "fastapi",
            {"caller_auth": "keys", "worker": "celery", "docker": "yes", "kubernetes": "yes"},
            [
                "web",
                "async",
                "fastapi",
                "limits",
                "callers",
                "sync",
                "rows",
                "worker",
                "worker-web",
                "worker-fastapi",
                "docker",
                "k8s",
                "k8s-worker",
                "lock-fastapi-keys-celery",
            ],
            id="fastapi-celery-worker",
        ),
        pytest.param(
            "script",
            {"worker": "celery", "kubernetes": "no"},
            ["sync", "async", "rows", "script", "limits", "worker"],
            id="script-celery-worker",
        ),
        pytest.param(
            "flask",
            {"worker": "none", "kubernetes": "yes"},
            ["web", "sync", "flask", "k8s"],
            id="no-worker-no-worker-deployment",
        ),
    ],
)
def test_layers_for_options(
    post_gen: ModuleType, framework: str, options: dict[str, str], layers: list[str]
) -> None:
    assert variants.layers_for(framework, options) == layers


@pytest.mark.parametrize(
    ("answers", "variables"),
    [
        pytest.param({"framework": "fastapi", "docker": "yes", "kubernetes": "yes"}, [], id="ok"),
        pytest.param({"framework": "script", "docker": "yes", "kubernetes": "no"}, [], id="cli"),
        pytest.param(
            {"framework": "script", "docker": "yes", "kubernetes": "yes"},
            ["kubernetes"],
            id="cli-k8s",
        ),
        pytest.param(
            {"framework": "flask", "docker": "no", "kubernetes": "yes"},
            ["kubernetes"],
            id="no-image",
        ),
        pytest.param(
            {"framework": "django", "docker": "no", "kubernetes": "yes"}, [], id="bad-framework"
        ),
        pytest.param({"framework": "flask", "caller_auth": "keys"}, [], id="web-caller-keys"),
        pytest.param({"framework": "script", "caller_auth": "none"}, [], id="cli-open"),
        pytest.param(
            {"framework": "script", "caller_auth": "keys"}, ["caller_auth"], id="cli-caller-keys"
        ),
        pytest.param(
            {"framework": "script", "caller_auth": "keys", "kubernetes": "yes"},
            ["caller_auth", "kubernetes"],
            id="cli-caller-keys-and-k8s",
        ),
        pytest.param(
            {"framework": "django", "caller_auth": "keys"}, [], id="bad-framework-caller-keys"
        ),
    ],
)
def test_combination_problems(
    pre_gen: ModuleType, answers: dict[str, str], variables: list[str]
) -> None:
    assert [name for name, _ in checks.combination_problems(answers)] == variables


@pytest.mark.parametrize(
    ("template", "source"),
    [
        pytest.param(
            "gh:acme/alltkn-template", "https://github.com/acme/alltkn-template.git", id="gh"
        ),
        pytest.param("gl:acme/tpl", "https://gitlab.com/acme/tpl.git", id="gl"),
        pytest.param(
            "https://ci-user:glpat-secret@gitlab.example/acme/tpl.git",
            "https://gitlab.example/acme/tpl.git",
            id="credentials-dropped",
        ),
        pytest.param("git@github.com:acme/tpl.git", "git@github.com:acme/tpl.git", id="ssh"),
    ],
)
def test_cruft_template_source(post_gen: ModuleType, template: str, source: str) -> None:
    assert cruft_file.template_source({"_template": template}, Path("/x")) == source


def test_cruft_state_leaves_out_machine_details(post_gen: ModuleType, tmp_path: Path) -> None:
    answers = {
        "framework": "flask",
        "_template": "../tpl",
        "_repo_dir": str(tmp_path),
        "_output_dir": "/home/someone/out",
        "_checkout": None,
        "_copy_without_render": ["x"],
    }
    state = cruft_file.cruft_state(answers, tmp_path, "a" * 40)

    assert state["template"] == str(tmp_path.resolve())
    assert state["context"] == {
        "cookiecutter": {
            "framework": "flask",
            "_template": str(tmp_path.resolve()),
            "_commit": "a" * 40,
        }
    }


@pytest.mark.parametrize("name", ALL)
def test_the_readme_is_short_and_tries_first(baked: dict[str, Path], name: str) -> None:
    """At most 150 lines; "Try it without a key" right after Quick start, in one `bash try`
    block (tests/test_newcomer.py runs it); no benchmark figures (the template's docs)."""
    readme = (baked[name] / "README.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", readme, re.MULTILINE)
    assert len(readme.splitlines()) <= 150
    assert headings[:2] == ["Quick start", "Try it without a key"]
    assert readme.count("```bash try\n") == 1
    assert not re.search(r"\d x the ideal|peak RSS|\d MB\b", readme)
