"""Pre-generation hook: refuse answers that would produce a broken or leaky project.

Cookiecutter renders this file with Jinja; the answers arrive only as JSON data in the
`__main__` block, so the module can also be imported by the template's tests. Every problem is
reported as one line `error: <variable>: <what is wrong>. <how to fix>` on stderr, then the
hook exits 1. Values that could be secrets (the base URL, a mistyped env var name) are never
echoed.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

FRAMEWORKS = ("fastapi", "flask", "script")
PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13")
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
    }
)
# Names the generated project already reads, and those the openai SDK reads on its own.
RESERVED_ENV_NAMES = (
    "ALLTKN_BASE_URL",
    "ALLTKN_MODEL",
    "ALLTKN_TIMEOUT_S",
    "ALLTKN_MAX_RETRIES",
    "LOG_LEVEL",
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
    ("alltkn_base_url", check_alltkn_base_url),
    ("api_key_env_var", check_api_key_env_var),
    ("default_model", check_default_model),
)


def validate(answers: Mapping[str, object]) -> list[str]:
    """Every problem with the answers, one error line each, in cookiecutter.json order."""
    return [line for variable, check in CHECKS for line in check(answer(answers, variable))]


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


def main(answers: Mapping[str, object]) -> int:
    """Print one error line per problem to stderr; 1 if there were any, else 0."""
    try:
        problems = validate(answers)
    except Exception as exc:  # never a traceback: report and stop
        problems = [
            problem("pre_gen_project", f"internal error ({type(exc).__name__})", "Report this")
        ]
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    discard_rendered_copy(Path(__file__))
    sys.exit(main(json.loads(r'''{{ cookiecutter | tojson }}''')))  # fmt: skip
