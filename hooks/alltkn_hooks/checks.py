"""Answer validation: one check per variable, and the combinations that cannot work.

Every problem is one line `error: <variable>: <what is wrong>. <how to fix>`; values that could
be secrets (the base URL, a mistyped env var name) are never part of a message.
"""

from __future__ import annotations

import keyword
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from alltkn_hooks import answer, problem

FRAMEWORKS = ("fastapi", "flask", "script")
PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13")
YES_NO = ("yes", "no")
CI_CHOICES = ("github", "gitlab", "none")
CALLER_AUTH_CHOICES = ("keys", "none")
WORKER_CHOICES = ("none", "celery")
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
    "ALLTKN_MAX_OUTPUT_TOKENS",
    "ALLTKN_ALLOWED_MODELS",
    "ALLTKN_MAX_BODY_BYTES",
    "ALLTKN_CALLERS_FILE",
    "ALLTKN_LIMITS_REDIS_URL",
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
    framework = answer(answers, "framework")
    if framework not in FRAMEWORKS:  # reported by its own check
        return []
    found: list[tuple[str, str]] = []
    if answer(answers, "caller_auth") == "keys" and framework not in WEB_FRAMEWORKS:
        found.append(
            (
                "caller_auth",
                problem(
                    "caller_auth",
                    f"caller keys are for the web services, not framework={framework}",
                    "Use caller_auth=none, or framework=fastapi or flask",
                ),
            )
        )
    if answer(answers, "kubernetes") != "yes":
        return found
    if framework not in WEB_FRAMEWORKS:
        found.append(
            (
                "kubernetes",
                problem(
                    "kubernetes",
                    f"manifests are for the web services, not framework={framework}",
                    "Use kubernetes=no, or framework=fastapi or flask",
                ),
            )
        )
    elif answer(answers, "docker") != "yes":
        found.append(
            (
                "kubernetes",
                problem(
                    "kubernetes",
                    "the manifests deploy the image the Dockerfile builds, and docker=no",
                    "Use docker=yes, or kubernetes=no",
                ),
            )
        )
    return found


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
    ("caller_auth", choice_check("caller_auth", CALLER_AUTH_CHOICES)),
    ("worker", choice_check("worker", WORKER_CHOICES)),
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
