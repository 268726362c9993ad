"""Pre-generation hook: refuse answers that would produce a broken or leaky project.

Cookiecutter renders this file with Jinja; the answers arrive only as JSON data in the
`__main__` block, so the module can also be imported by the template's tests. Every problem is
reported as one line `error: <variable>: <what is wrong>. <how to fix>` on stderr, then the
hook exits 1 and cookiecutter writes nothing. Values that could be secrets (the base URL, a
mistyped env var name) are never echoed.

Secrets: every answer is scanned with the project's own scanner (`secret_scan.py`, loaded by
path from the project template), also for the exact value of the key variable and of every
secret-named environment variable. A refused answer is never shown, and it is removed from the
replay file cookiecutter has already written (its `replay_dir`, found the way cookiecutter
finds it: `COOKIECUTTER_CONFIG`, else `~/.cookiecutterrc`, else `~/.cookiecutter_replay/`).

When the answers are accepted, the hook records which files the output directory already holds
(`post_gen_project.write_manifest`), so that a failed post-generation scan removes only what
this run wrote, also under `--overwrite-if-exists`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import keyword
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

FRAMEWORKS = ("fastapi", "flask", "script")
PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13")
YES_NO = ("yes", "no")
CI_CHOICES = ("github", "gitlab", "none")
WEB_FRAMEWORKS = ("fastapi", "flask")
DEPENDENCY_NAMES = frozenset(
    {
        "openai",
        "fastapi",
        "flask",
        "pydantic",
        "pydantic_settings",
        "uvicorn",
        "gunicorn",
        "httpx",
        "httpx2",
        "httpcore",
        "starlette",
        "werkzeug",
        "pytest",
        "mypy",
        "ruff",
        # What those import in turn: a package of the same name would be imported instead.
        "anyio",
        "sniffio",
        "h11",
        "httptools",
        "httpcore2",
        "idna",
        "certifi",
        "truststore",
        "distro",
        "jiter",
        "tqdm",
        "dotenv",
        "pydantic_core",
        "annotated_types",
        "typing_extensions",
        "typing_inspection",
        "jinja2",
        "markupsafe",
        "itsdangerous",
        "click",
        "blinker",
        "rich",
        "packaging",
        "pre_commit",
        # The generated project's own test package.
        "tests",
    }
)
# Variables the shell, Python or the HTTP stack already give a meaning; the key must not be
# read from (or written into) one of them.
SYSTEM_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "PWD",
        "LANG",
        "TERM",
        "TMPDIR",
        "HOSTNAME",
        "PYTHONPATH",
        "PYTHONHOME",
        "VIRTUAL_ENV",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
    }
)
# Longer names push generated lines past the 100 columns ruff enforces in the project.
MAX_SLUG_LENGTH = 40
MAX_PACKAGE_LENGTH = 28
# Names the generated project already reads, and those the openai SDK reads on its own.
RESERVED_ENV_NAMES = (
    "ALLTKN_BASE_URL",
    "ALLTKN_MODEL",
    "ALLTKN_TIMEOUT_S",
    "ALLTKN_MAX_RETRIES",
    "LOG_LEVEL",
    "ALLTKN_SSE_KEEPALIVE_S",
    "ALLTKN_SSE_SEND_TIMEOUT_S",
    "ALLTKN_RETRY_AFTER_CAP_S",
    "ALLTKN_FALLBACK_MODELS",
    "ALLTKN_STREAMING",
    "ALLTKN_MAX_INPUT_CHARS",
    # The container's and the servers' own settings (Dockerfile, gunicorn.conf.py, k8s/).
    "WEB_CONCURRENCY",
    "PORT",
    "BIND",
    "GUNICORN_THREADS",
    "GUNICORN_TIMEOUT",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
)
EXAMPLE_BASE_URL = "https://api.alltkn.com/api/v1"
ROOT_HINT = f"the gateway's /api/v1 root, e.g. {EXAMPLE_BASE_URL}"
SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
PACKAGE_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

Check = Callable[[str], list[str]]


def problem(variable: str, what: str, fix: str) -> str:
    """The one-line error format shared by every check."""
    return f"error: {variable}: {what}. {fix}"


def answer(answers: Mapping[str, object], variable: str) -> str:
    """The answer as a string; a missing answer reads as empty."""
    value = answers.get(variable, "")
    return value if isinstance(value, str) else str(value)


def suggest_slug(value: str) -> str:
    """A valid slug close to `value` (lower-case, runs of other characters -> one hyphen)."""
    slug = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    slug = re.sub(r"^[0-9-]+", "", slug)
    return slug or "my-service"


def check_project_name(value: str) -> list[str]:
    if not value.strip():
        return [problem("project_name", "is blank", "Give the project a human-readable name")]
    if CONTROL_RE.search(value):
        return [
            problem(
                "project_name",
                "contains a line break or control character",
                "Use a single line of text",
            )
        ]
    return []


def check_project_slug(value: str) -> list[str]:
    if SLUG_RE.match(value):
        if len(value) > MAX_SLUG_LENGTH:
            return [
                problem(
                    "project_slug",
                    f"is {len(value)} characters long, more than {MAX_SLUG_LENGTH}",
                    "Choose a shorter distribution name",
                )
            ]
        if value.replace("-", "_") in DEPENDENCY_NAMES:
            return [
                problem(
                    "project_slug",
                    f"{value!r} is the name of one of the project's dependencies on PyPI",
                    f"Choose another name, e.g. 'my-{value}-service'",
                )
            ]
        return []
    return [
        problem(
            "project_slug",
            f"{value!r} is not a valid lower-case distribution name",
            "Use lower-case letters and digits in words joined by single hyphens, "
            f"starting with a letter, e.g. {suggest_slug(value)!r}",
        )
    ]


def package_name_problem(value: str) -> tuple[str, str] | None:
    """(what is wrong, how to fix) for a bad package name, or None if it is fine."""
    if not PACKAGE_RE.match(value) or not value.isidentifier():
        fixed = re.sub(r"[^a-z0-9_]+", "_", value.lower()).strip("_")
        fixed = re.sub(r"^[0-9_]+", "", fixed) or "my_service"
        return (
            f"{value!r} is not a lower-case Python identifier",
            (
                f"Use lower-case letters, digits and underscores, starting with a letter, "
                f"e.g. {fixed!r}"
            ),
        )
    if len(value) > MAX_PACKAGE_LENGTH:
        return (
            f"is {len(value)} characters long, more than {MAX_PACKAGE_LENGTH}",
            "Choose a shorter import name",
        )
    if keyword.iskeyword(value):
        return (f"{value!r} is a Python keyword", f"Choose another name, e.g. '{value}_service'")
    if value in sys.stdlib_module_names:
        return (
            f"{value!r} would shadow the standard library module of that name",
            f"Choose another name, e.g. '{value}_service'",
        )
    if value in DEPENDENCY_NAMES:
        return (
            f"{value!r} would shadow the dependency of that name",
            f"Choose another name, e.g. 'my_{value}_service'",
        )
    return None


def check_package_name(value: str) -> list[str]:
    found = package_name_problem(value)
    return [] if found is None else [problem("package_name", *found)]


def check_framework(value: str) -> list[str]:
    if value in FRAMEWORKS:
        return []
    return [problem("framework", "is not a known choice", f"Use one of {', '.join(FRAMEWORKS)}")]


def check_python_version(value: str) -> list[str]:
    if value in PYTHON_VERSIONS:
        return []
    return [
        problem(
            "python_version",
            "is not a supported version",
            f"Use one of {', '.join(PYTHON_VERSIONS)}",
        )
    ]


def choice_check(variable: str, choices: Sequence[str]) -> Check:
    """A check that `variable` is one of `choices`."""

    def check(value: str) -> list[str]:
        if value in choices:
            return []
        return [problem(variable, "is not a known choice", f"Use one of {', '.join(choices)}")]

    return check


def combination_problems(answers: Mapping[str, object]) -> list[tuple[str, str]]:
    """(variable, error line) for answers that are valid alone but not together."""
    if answer(answers, "kubernetes") != "yes":
        return []
    framework = answer(answers, "framework")
    if framework not in FRAMEWORKS:  # reported by its own check
        return []
    if framework not in WEB_FRAMEWORKS:
        return [
            (
                "kubernetes",
                problem(
                    "kubernetes",
                    f"manifests are for the web services, not framework={framework}",
                    "Use kubernetes=no, or framework=fastapi or flask",
                ),
            )
        ]
    if answer(answers, "docker") != "yes":
        return [
            (
                "kubernetes",
                problem(
                    "kubernetes",
                    "the manifests deploy the image the Dockerfile builds, and docker=no",
                    "Use docker=yes, or kubernetes=no",
                ),
            )
        ]
    return []


def base_url_problems(value: str) -> list[tuple[str, str]]:
    """Every (what, fix) for the base URL; the URL itself is never part of a message."""
    root_fix = "Use " + ROOT_HINT
    if not value.strip():
        return [("is blank", root_fix)]
    if value != value.strip() or CONTROL_RE.search(value) or " " in value:
        return [("contains whitespace or control characters", root_fix)]
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return [("is not a valid URL", root_fix)]
    found: list[tuple[str, str]] = []
    if parts.scheme not in ("http", "https"):
        found.append(("must start with https:// (or http:// for a local gateway)", root_fix))
    if not parts.hostname:
        found.append(("has no host name", root_fix))
    if "@" in parts.netloc:
        found.append(
            (
                "contains credentials (user:password@); the value is not shown",
                (
                    "Remove them from the URL; the API key belongs only in the key environment "
                    "variable. If that was a real key or password, rotate it"
                ),
            )
        )
    if parts.query:
        found.append(("has a query string (?...)", "Remove it: " + ROOT_HINT))
    if parts.fragment or value.endswith("#"):
        found.append(("has a fragment (#...)", "Remove it: " + ROOT_HINT))
    if parts.path.rstrip("/").endswith("/chat/completions"):
        found.append(("ends in /chat/completions", root_fix + " (the SDK adds the endpoint)"))
    return found


def check_alltkn_base_url(value: str) -> list[str]:
    return [problem("alltkn_base_url", what, fix) for what, fix in base_url_problems(value)]


def check_api_key_env_var(value: str) -> list[str]:
    variable = "api_key_env_var"
    if not ENV_NAME_RE.match(value):
        return [
            problem(
                variable,
                "is not an upper-case environment variable name (the value is not shown, "
                "in case it is a key)",
                "Give the NAME of the variable, e.g. ALLTKN_API_KEY, never the key itself",
            )
        ]
    if value in RESERVED_ENV_NAMES:
        return [
            problem(
                variable,
                f"{value} is already used for another setting or read implicitly by the SDK",
                "Choose a dedicated name such as ALLTKN_API_KEY",
            )
        ]
    if value in SYSTEM_ENV_NAMES:
        return [
            problem(
                variable,
                f"{value} already means something to the shell, Python or the HTTP stack",
                "Choose a dedicated name such as ALLTKN_API_KEY",
            )
        ]
    return []


def check_default_model(value: str) -> list[str]:
    variable = "default_model"
    if not value.strip():
        return [problem(variable, "is blank", "Give a model name, e.g. gpt-4o-mini")]
    if value != value.strip():
        return [problem(variable, "has leading or trailing whitespace", "Remove the spaces")]
    if CONTROL_RE.search(value) or any(char.isspace() for char in value):
        return [
            problem(
                variable,
                "contains whitespace or control characters",
                "Use the model id exactly as the gateway lists it, e.g. gpt-4o-mini",
            )
        ]
    return []


CHECKS: tuple[tuple[str, Check], ...] = (
    ("project_name", check_project_name),
    ("project_slug", check_project_slug),
    ("package_name", check_package_name),
    ("framework", check_framework),
    ("python_version", check_python_version),
    ("docker", choice_check("docker", YES_NO)),
    ("kubernetes", choice_check("kubernetes", YES_NO)),
    ("ci", choice_check("ci", CI_CHOICES)),
    ("alltkn_base_url", check_alltkn_base_url),
    ("api_key_env_var", check_api_key_env_var),
    ("default_model", check_default_model),
)


def problems_by_variable(answers: Mapping[str, object]) -> list[tuple[str, str]]:
    """(variable, error line) for every problem, in cookiecutter.json order."""
    return [
        (variable, line) for variable, check in CHECKS for line in check(answer(answers, variable))
    ] + combination_problems(answers)


def validate(answers: Mapping[str, object]) -> list[str]:
    """Every problem with the answers, one error line each, in cookiecutter.json order."""
    return [line for _, line in problems_by_variable(answers)]


# --- secrets in answers ------------------------------------------------------------------------

DEFAULT_KEY_VAR = "ALLTKN_API_KEY"
DEFAULT_REPLAY_DIR = "~/.cookiecutter_replay/"
_REPLAY_DIR_RE = re.compile(r"^replay_dir[ \t]*:[ \t]*(?P<value>.*?)[ \t]*$")
_SINGLE_QUOTED_RE = re.compile(r"'((?:[^']|'')*)'")


def jinja_name(variable: str) -> str:
    """A templated path part, written so this file holds no Jinja of its own."""
    return "{" * 2 + f"cookiecutter.{variable}" + "}" * 2


def template_dir(answers: Mapping[str, object]) -> Path:
    """The template being generated from (cookiecutter's `_repo_dir`).

    `_repo_dir` is relative when the template was given as a relative path; cookiecutter runs
    the hook from inside it, so the parent's working directory (Linux) or the shell's `PWD`
    resolves it.
    """
    repo = str(answers.get("_repo_dir") or "")
    if not repo:
        # cruft (create / update) leaves `_repo_dir` out; cookiecutter still runs the hook
        # from a parent working in the template directory.
        with contextlib.suppress(OSError):
            parent = Path(f"/proc/{os.getppid()}/cwd").resolve()
            if (parent / "cookiecutter.json").is_file():
                return parent
        raise FileNotFoundError("the template directory (_repo_dir) is unknown")
    if os.path.isabs(repo):
        return Path(repo)
    named = [part for part in Path(os.path.normpath(repo)).parts if part not in (".", "..")]
    candidates = [Path(f"/proc/{os.getppid()}/cwd"), Path(os.environ.get("PWD", "/"), repo)]
    for candidate in candidates:
        with contextlib.suppress(OSError):
            found = candidate.resolve()
            ends_right = not named or list(found.parts[-len(named) :]) == named
            if ends_right and (found / "cookiecutter.json").is_file():
                return found
    raise FileNotFoundError("the template directory (_repo_dir) cannot be found")


def load_module(path: Path, name: str) -> ModuleType:
    """Import the file at `path` as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path.name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_scanner(template: Path) -> ModuleType:
    """The project template's `secret_scan.py`: the one scanner, copied into every project."""
    path = template / jinja_name("project_slug") / "src" / jinja_name("package_name")
    return load_module(path / "secret_scan.py", "_template_secret_scan")


def load_post_gen(template: Path) -> ModuleType:
    """The post-generation hook's source (its answers live only in its `__main__` block)."""
    return load_module(template / "hooks" / "post_gen_project.py", "_template_post_gen")


def secret_literals(scanner: ModuleType, answers: Mapping[str, object]) -> list[str]:
    """Exact values to refuse: the key variable's value and every secret-named variable's."""
    key_var = answer(answers, "api_key_env_var")
    return [*scanner.env_literals([key_var], os.environ), *scanner.secret_env_values(os.environ)]


def secret_answers(
    answers: Mapping[str, object], scanner: ModuleType, literals: Sequence[str]
) -> dict[str, list[Any]]:
    """{variable: findings} for every public answer that holds something secret-looking."""
    found: dict[str, list[Any]] = {}
    for name, value in answers.items():
        if name.startswith("_") or not isinstance(value, str):
            continue
        findings = scanner.scan_text(
            value, path=name, literals=literals, rules=scanner.ANSWER_RULES
        )
        if findings:
            found[name] = findings
    return found


def cookiecutter_config() -> Path | None:
    """The user config cookiecutter reads: `COOKIECUTTER_CONFIG`, else `~/.cookiecutterrc`."""
    configured = os.environ.get("COOKIECUTTER_CONFIG")
    if configured:
        return Path(configured)
    default = Path(os.path.expanduser("~/.cookiecutterrc"))
    return default if default.is_file() else None


def yaml_scalar(raw: str) -> str:
    """A one-line YAML scalar: double-quoted (JSON escapes), single-quoted, or plain."""
    if raw.startswith('"'):
        value, _ = json.JSONDecoder().raw_decode(raw)
        return str(value)
    quoted = _SINGLE_QUOTED_RE.match(raw)
    if quoted:
        return quoted.group(1).replace("''", "'")
    return re.split(r"[ \t]+#", raw, maxsplit=1)[0].strip()


def configured_replay_dir(config: Path) -> str | None:
    """The top-level `replay_dir:` of a cookiecutter config file (the last one wins)."""
    value = None
    for line in config.read_text(encoding="utf-8").splitlines():
        match = _REPLAY_DIR_RE.match(line)
        if match:
            value = yaml_scalar(match.group("value")) or None
    return value


def replay_dir() -> Path:
    """Where cookiecutter writes replay files, expanded as cookiecutter expands it."""
    config = cookiecutter_config()
    raw = (configured_replay_dir(config) if config else None) or DEFAULT_REPLAY_DIR
    return Path(os.path.expanduser(os.path.expandvars(raw)))


def replay_file(directory: Path, template: Path) -> Path:
    """Cookiecutter's name for it: `<replay_dir>/<template directory name>.json`."""
    name = os.path.basename(os.path.abspath(template))
    return directory / (name if name.endswith(".json") else f"{name}.json")


def scrub(data: object, secrets: Sequence[str]) -> tuple[object, bool]:
    """`data` without any entry whose text holds one of `secrets`; and whether it changed."""
    if isinstance(data, str):
        return data, False
    if isinstance(data, dict):
        kept: dict[str, object] = {}
        changed = False
        for key, value in data.items():
            if isinstance(value, str) and any(secret in value for secret in secrets):
                changed = True
                continue
            kept[key], inner = scrub(value, secrets)
            changed = changed or inner
        return kept, changed
    if isinstance(data, list):
        items = [item for item in data if not (isinstance(item, str) and _holds(item, secrets))]
        scrubbed = [scrub(item, secrets) for item in items]
        return [item for item, _ in scrubbed], len(items) < len(data) or any(
            inner for _, inner in scrubbed
        )
    return data, False


def _holds(text: str, secrets: Iterable[str]) -> bool:
    return any(secret in text for secret in secrets)


def scrub_file(path: Path, secrets: Sequence[str]) -> bool:
    """Rewrite the JSON file at `path` without the secrets (atomically); True if it changed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    cleaned, changed = scrub(data, secrets)
    if not changed:
        return False
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".replay-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(cleaned, out, indent=2)
        os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def scrub_replay(template: Path, secrets: Sequence[str]) -> str:
    """Remove the secrets from cookiecutter's replay files; a phrase saying what happened."""
    directory = replay_dir()
    expected = replay_file(directory, template)
    try:
        candidates = sorted(directory.glob("*.json")) if directory.is_dir() else []
        changed = [path for path in candidates if scrub_file(path, secrets)]
    except OSError as exc:
        return (
            f"it could not be removed from cookiecutter's replay file {expected} "
            f"({type(exc).__name__}): delete that file"
        )
    if not changed:
        return f"no cookiecutter replay file holds it (looked in {directory})"
    shown = expected if expected in changed else changed[0]
    more = f" and {len(changed) - 1} other replay file(s)" if len(changed) > 1 else ""
    return f"it was removed from cookiecutter's replay file {shown}{more}"


def key_var_hint(answers: Mapping[str, object], refused: Iterable[str]) -> str:
    """The key variable's name, unless that answer is itself unusable."""
    name = answer(answers, "api_key_env_var")
    if "api_key_env_var" in refused or check_api_key_env_var(name):
        return DEFAULT_KEY_VAR
    return name


def secret_lines(
    answers: Mapping[str, object], found: Mapping[str, Sequence[Any]], replay_note: str
) -> list[str]:
    """One line per refused answer: the variable and the kind of secret, never the value."""
    key_var = key_var_hint(answers, found)
    return [
        problem(
            name,
            "looks like a secret ("
            + ", ".join(sorted({f.kind for f in findings}))
            + "); the value is not shown",
            f"Remove it and generate again: an API key belongs only in the {key_var} "
            f"environment variable, and a real one must be rotated; {replay_note}",
        )
        for name, findings in found.items()
    ]


def check_secrets(
    answers: Mapping[str, object], template: Path, scanner: ModuleType
) -> tuple[set[str], list[str]]:
    """(refused variables, their error lines); scrubs the replay files when there are any."""
    found = secret_answers(answers, scanner, secret_literals(scanner, answers))
    if not found:
        return set(), []
    values = sorted({f.value for findings in found.values() for f in findings})
    values += [answer(answers, name) for name in found]
    return set(found), secret_lines(answers, found, scrub_replay(template, values))


# --- the hook ----------------------------------------------------------------------------------


def discard_rendered_copy(script: Path) -> None:
    """Delete cookiecutter's rendered copy of this hook (it holds every answer in clear).

    Cookiecutter writes the rendered hook to a temporary file and never deletes it. Only a
    file directly in the temporary directory is removed, never the template's own source.
    """
    try:
        if script.parent.resolve() == Path(tempfile.gettempdir()).resolve():
            script.unlink(missing_ok=True)
    except OSError:
        pass


def review(answers: Mapping[str, object], project_dir: Path) -> list[str]:
    """Every error line for these answers; with none, records the output directory's files."""
    template = template_dir(answers)
    scanner = load_scanner(template)
    refused, lines = check_secrets(answers, template, scanner)
    # A refused answer's own checks may quote it (a slug suggestion): leave them out.
    lines = [line for name, line in problems_by_variable(answers) if name not in refused] + lines
    if not lines:
        load_post_gen(template).write_manifest(project_dir, skip=scanner.is_skipped_dir)
    return lines


def main(answers: Mapping[str, object], project_dir: Path | None = None) -> int:
    """Print one error line per problem to stderr; 1 if there were any, else 0."""
    try:
        problems = review(answers, Path.cwd() if project_dir is None else project_dir)
    except Exception as exc:  # never a traceback (nor a value): report and stop
        problems = [
            problem(
                "pre_gen_project",
                f"internal error ({type(exc).__name__})",
                "Report this (generate from an absolute template path if it persists)",
            )
        ]
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    discard_rendered_copy(Path(__file__))
    sys.exit(main(json.loads(r'''{{ cookiecutter | tojson }}''')))  # fmt: skip
