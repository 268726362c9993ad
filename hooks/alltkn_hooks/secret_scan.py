"""The template's generation-time secret scanner: answers, generated files, replay files.

Standard-library-only; used by the hooks only (`answer_secrets`, `output_scan`), never copied
into a generated project (projects use detect-secrets).

A finding never carries the raw value into `str()` or `repr()`: output shows only the last
four characters (`****abcd`). A line containing the pragma `secret-scan: allow` is skipped;
use it for deliberate test fixtures.

Detectors are rows of `RULES` (kind, pattern, value check); add a row to detect a new kind.
Values given as literals (the live key, values of secret-named environment variables) are
matched exactly, first. Patterns never cross a line break.
"""

from __future__ import annotations

import bisect
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ALLOW_PRAGMA = "secret-scan: allow"
MIN_LITERAL_LEN = 8
MIN_BEARER_LEN = 12
MIN_ASSIGNMENT_LEN = 16
MIN_ENTROPY_BITS = 3.5
# Tokens with a fixed prefix (ghp_, xoxb-, AKIA...) only need to look less than trivial.
MIN_TOKEN_ENTROPY_BITS = 3.0
MAX_FILE_BYTES = 2 * 1024 * 1024
BINARY_SNIFF_BYTES = 8 * 1024
SKIP_DIRS = frozenset(
    {
        ".git",
        ".venv",
        "venv",
        "__pycache__",
        "node_modules",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
    }
)
SKIP_DIR_SUFFIXES = (".egg-info",)
# Environment variables whose value is matched exactly (`*KEY*`, `*TOKEN*`, ...).
SECRET_ENV_NAME_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)

# Each pattern starts with its literal prefix (the regex engine then skips ahead quickly) and
# checks the character before that prefix with a lookbehind.
# Gateway keys: `sk-` + 32 to 64 letters and digits, optionally `-<digits>`.
_GATEWAY_RE = re.compile(r"sk-(?<![A-Za-z0-9_-]sk-)[A-Za-z0-9]{32,64}(?:-[0-9]+)?(?![A-Za-z0-9_-])")
# OpenAI project, service-account and admin keys, and any key with the `T3BlbkFJ` marker.
_OPENAI_RE = re.compile(
    r"sk-(?<![A-Za-z0-9_-]sk-)(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}"
    r"|[A-Za-z0-9_-]{0,100}T3BlbkFJ[A-Za-z0-9_-]*)"
)
_AWS_RE = re.compile(r"A(?<![A-Za-z0-9]A)(?:3T[A-Z0-9]|KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_GITHUB_RE = re.compile(
    r"g(?<![A-Za-z0-9_]g)(?:h[pousr]_[A-Za-z0-9]{36,251}|ithub_pat_[A-Za-z0-9_]{50,251})"
    r"(?![A-Za-z0-9_])"
)
_GITLAB_RE = re.compile(
    r"gl(?<![A-Za-z0-9_-]gl)(?:pat|ptt|dt|rt|cbt|oas|ft|imt|soat)-[A-Za-z0-9_-][A-Za-z0-9_.-]{18,}"
    r"[A-Za-z0-9_-]"
)
_SLACK_TOKEN_RE = re.compile(
    r"x(?<![A-Za-z0-9-]x)(?:ox[abposr]-[A-Za-z0-9-]{10,}|app-[0-9]-[A-Za-z0-9-]{10,})"
)
_SLACK_WEBHOOK_RE = re.compile(
    r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{20,}"
)
_JWT_RE = re.compile(
    r"eyJ(?<![A-Za-z0-9_/+=.-]eyJ)[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}"
)
_PRIVATE_KEY_RE = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
# `scheme://user:password@host`: the password.
_URL_PASSWORD_RE = re.compile(r"://[^ \t\r\n/?#@:'\"]+:(?P<value>[^ \t\r\n/?#@'\"]+)@[A-Za-z0-9[]")
_BEARER_RE = re.compile(
    r"""authorization["'\]]*[ \t]*[:=][ \t]*["']?[ \t]*bearer[ \t]+"""
    r"""(?P<value>[A-Za-z0-9._~+/=-]+)""",
    re.IGNORECASE,
)
# `name = value`, `name: value`, `NAME=value`, `"name": "value"`, `name := value`, ...
# The name may not start inside a longer word, which also keeps the scan linear on long lines.
# The value may not start with a bracket, so `creds: {token: ...}` is matched at `token`.
_ASSIGNMENT_RE = re.compile(
    r"""(?<![A-Za-z0-9_.-])(?P<name>[A-Za-z0-9_.-]+)["'\]]{0,2}[ \t]*"""
    r"""(?::=|=>|=(?!=)|:(?![:/]))[ \t]*["'`]?(?P<value>[^\s"'`,;(){}[\]][^\s"'`,;)\]}]*)"""
)
# Only in answers: one run of 20+ letters and digits (mixed case and digits, or long hex).
_OPAQUE_RE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{20,}(?![A-Za-z0-9])")
_HEX_RE = re.compile(r"^(?=.*[a-f])(?=.*[0-9])[0-9a-f]{32,}$", re.IGNORECASE)
_MIN_OPAQUE_HEX_LEN = 32

_SECRET_NAME_WORDS = frozenset(
    {
        "apikey",
        "key",
        "keys",
        "passphrase",
        "passwd",
        "password",
        "pwd",
        "secret",
        "secrets",
        "token",
        "tokens",
    }
)
_NAME_PART_RE = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_ENV_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_DOTTED_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")
_PATH_RE = re.compile(r"^(?:~|\.{1,2})?/[\w.-]+(?:/[\w.-]+)+/?$")
_PLACEHOLDER_RE = re.compile(
    r"<[^>]*>|\$\{|\$\(|^\$[A-Za-z_]|\{\{|x{4,}|\*{4}|\.\.\.|"
    r"change[_-]?me|your|example|placeholder|replace[_-]?me|redacted|dummy|fake|sample",
    re.IGNORECASE,
)
_CODE_CHARS = frozenset("()[]{}")
# Lower-case words joined by `-` or `_` (`first_token_delay`, `decoy-key-value`): a variable
# name or a readable stand-in, not a generated secret.
_WORDS_RE = re.compile(r"^[a-z]+(?:[-_][a-z]+)+$")
_NEWLINE_RE = re.compile(r"\n")


@dataclass(frozen=True)
class Finding:
    """One suspected secret; `str()` and `repr()` never show the raw value."""

    path: str
    line: int
    kind: str
    value: str = field(repr=False)

    @property
    def masked(self) -> str:
        return mask(self.value)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}: {self.masked}"


def _always(value: str, match: re.Match[str]) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """A named detector: `pattern` finds candidates, `accept` decides on the value."""

    kind: str
    pattern: re.Pattern[str]
    group: str | int = 0
    accept: Callable[[str, re.Match[str]], bool] = _always


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    order: int
    kind: str
    value: str


def mask(value: str) -> str:
    """`****` plus the last four characters; values shorter than 8 show nothing at all."""
    if len(value) < MIN_LITERAL_LEN:
        return "****"
    return "****" + value[-4:]


def shannon_entropy(value: str) -> float:
    """Bits per character of `value` (0.0 for the empty string)."""
    if not value:
        return 0.0
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in Counter(value).values())


def is_placeholder(value: str) -> bool:
    """True for documentation stand-ins: `<key>`, `${VAR}`, `$VAR`, `xxxx`, `your-key`, ..."""
    return _PLACEHOLDER_RE.search(value) is not None


def is_code_reference(value: str) -> bool:
    """True for `os.environ[...]`, `settings.api_key`, `get_key()`, file paths and the like."""
    if any(char in _CODE_CHARS for char in value):
        return True
    return bool(_DOTTED_NAME_RE.match(value) or _PATH_RE.match(value) or "://" in value)


def is_secret_name(name: str) -> bool:
    """True if a word of `name` (snake, kebab, dotted or camel case) says key/token/secret/..."""
    words = {part.lower() for part in _NAME_PART_RE.findall(name)}
    return not words.isdisjoint(_SECRET_NAME_WORDS)


def looks_random(value: str, min_bits: float = MIN_ENTROPY_BITS) -> bool:
    """Not a stand-in, not readable words, and at least `min_bits` bits per character."""
    return (
        not is_placeholder(value)
        and not _WORDS_RE.match(value)
        and shannon_entropy(value) >= min_bits
    )


def _accept_key(value: str, match: re.Match[str]) -> bool:
    return looks_random(value)


def _accept_token(value: str, match: re.Match[str]) -> bool:
    return looks_random(value, MIN_TOKEN_ENTROPY_BITS)


def _accept_not_placeholder(value: str, match: re.Match[str]) -> bool:
    return not is_placeholder(value)


def _accept_bearer(value: str, match: re.Match[str]) -> bool:
    return len(value) >= MIN_BEARER_LEN and not is_placeholder(value)


def _accept_url_password(value: str, match: re.Match[str]) -> bool:
    return (
        len(value) >= MIN_LITERAL_LEN
        and not is_code_reference(value)
        and looks_random(value, MIN_TOKEN_ENTROPY_BITS)
    )


def _accept_assignment(value: str, match: re.Match[str]) -> bool:
    return (
        len(value) >= MIN_ASSIGNMENT_LEN
        and is_secret_name(match.group("name"))
        and not _ENV_NAME_RE.match(value)
        and not is_code_reference(value)
        and looks_random(value)
    )


def _accept_opaque(value: str, match: re.Match[str]) -> bool:
    mixed = (
        any(c.isupper() for c in value)
        and any(c.islower() for c in value)
        and any(c.isdigit() for c in value)
    )
    hex_run = len(value) >= _MIN_OPAQUE_HEX_LEN and _HEX_RE.match(value) is not None
    return (mixed or hex_run) and looks_random(value)


# Earlier rows win where two matches overlap on a line.
RULES: tuple[Rule, ...] = (
    Rule("private_key", _PRIVATE_KEY_RE),
    Rule("openai_key", _OPENAI_RE, accept=_accept_not_placeholder),
    Rule("gateway_key", _GATEWAY_RE, accept=_accept_key),
    Rule("github_token", _GITHUB_RE, accept=_accept_token),
    Rule("gitlab_token", _GITLAB_RE, accept=_accept_token),
    Rule("slack_token", _SLACK_TOKEN_RE, accept=_accept_token),
    Rule("slack_webhook", _SLACK_WEBHOOK_RE, accept=_accept_token),
    Rule("aws_access_key_id", _AWS_RE, accept=_accept_token),
    Rule("jwt", _JWT_RE, accept=_accept_not_placeholder),
    Rule("url_password", _URL_PASSWORD_RE, group="value", accept=_accept_url_password),
    Rule("bearer_token", _BEARER_RE, group="value", accept=_accept_bearer),
    Rule("secret_assignment", _ASSIGNMENT_RE, group="value", accept=_accept_assignment),
)
# A template answer is one short value: a lone random-looking run is a pasted secret there.
ANSWER_RULES: tuple[Rule, ...] = (*RULES, Rule("opaque_token", _OPAQUE_RE, accept=_accept_opaque))


def usable_literals(literals: Iterable[str]) -> list[str]:
    """Distinct literals of at least `MIN_LITERAL_LEN` characters, longest first."""
    kept = {literal for literal in literals if len(literal.strip()) >= MIN_LITERAL_LEN}
    return sorted(kept, key=lambda literal: (-len(literal), literal))


def literal_rule(literals: Iterable[str]) -> Rule | None:
    """A rule matching any of `literals` exactly (kind `env_value`), or None if there are none."""
    kept = usable_literals(literals)
    if not kept:
        return None
    return Rule("env_value", re.compile("|".join(re.escape(literal) for literal in kept)))


def rules_with(literals: Iterable[str], rules: Sequence[Rule] = RULES) -> list[Rule]:
    """The literal rule (if any literals) followed by `rules`."""
    extra = literal_rule(literals)
    return [extra, *rules] if extra else list(rules)


def _hits(text: str, rules: Sequence[Rule]) -> list[_Hit]:
    """Every accepted match of every rule over the whole text."""
    found: list[_Hit] = []
    for order, rule in enumerate(rules):
        for match in rule.pattern.finditer(text):
            value = match.group(rule.group)
            if value and rule.accept(value, match):
                start, end = match.span(rule.group)
                found.append(_Hit(start, end, order, rule.kind, value))
    return found


def _select(hits: Iterable[_Hit]) -> list[_Hit]:
    """Earlier rules win where hits overlap; each value once. Returned in rule order."""
    chosen: list[_Hit] = []
    seen: set[str] = set()
    for hit in sorted(hits, key=lambda h: (h.order, h.start)):
        if hit.value in seen or any(hit.start < c.end and c.start < hit.end for c in chosen):
            continue
        seen.add(hit.value)
        chosen.append(hit)
    return chosen


def scan_text(
    text: str,
    *,
    path: str = "<text>",
    literals: Iterable[str] = (),
    rules: Sequence[Rule] = RULES,
) -> list[Finding]:
    """Findings in `text`, line by line; `literals` are exact values to find (kind `env_value`).

    On one line, earlier rules win where matches overlap and each value is reported once.
    """
    starts = [0] + [match.end() for match in _NEWLINE_RE.finditer(text)]
    by_line: dict[int, list[_Hit]] = {}
    for hit in _hits(text, rules_with(literals, rules)):
        by_line.setdefault(bisect.bisect_right(starts, hit.start), []).append(hit)
    findings: list[Finding] = []
    for number in sorted(by_line):
        end = starts[number] if number < len(starts) else len(text)
        if ALLOW_PRAGMA in text[starts[number - 1] : end]:
            continue
        findings.extend(Finding(path, number, h.kind, h.value) for h in _select(by_line[number]))
    return findings


def is_skipped_dir(name: str) -> bool:
    """Tool, cache and VCS directories that are never scanned."""
    return name in SKIP_DIRS or name.endswith(SKIP_DIR_SUFFIXES)


def iter_files(root: Path) -> list[Path]:
    """Regular files below `root`, sorted by relative path, skipping tool and VCS directories.

    Symbolic links are not followed, so a scan never leaves `root`.
    """
    found: list[Path] = []
    for current, dirs, files in os.walk(root):
        # Any virtualenv (`.venv-checkov`, `env`, ...) is installed packages, not project files.
        dirs[:] = [
            name
            for name in dirs
            if not is_skipped_dir(name)
            and not os.path.isfile(os.path.join(current, name, "pyvenv.cfg"))
        ]
        for name in files:
            candidate = Path(current, name)
            if not candidate.is_symlink() and candidate.is_file():
                found.append(candidate)
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def read_text_file(path: Path) -> str | None:
    """The file's text, or None if it is too large, binary (NUL early on) or unreadable."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return None
    return data.decode("utf-8", errors="replace")


def scan_file(path: Path, *, display: str, literals: Iterable[str] = ()) -> list[Finding]:
    """Scan one file, reporting it as `display`; binary, huge or unreadable files give []."""
    text = read_text_file(path)
    return [] if text is None else scan_text(text, path=display, literals=literals)


def scan_files(root: Path, files: Iterable[Path], *, literals: Iterable[str] = ()) -> list[Finding]:
    """Scan `files` (below `root`); paths are shown relative to `root`, POSIX style."""
    kept = usable_literals(literals)
    findings: list[Finding] = []
    for file in files:
        display = file.relative_to(root).as_posix()
        findings.extend(scan_file(file, display=display, literals=kept))
    return findings


def env_literals(names: Iterable[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the named environment variables that are set and long enough to match."""
    env = os.environ if environ is None else environ
    values = (env.get(name, "") for name in names)
    return [value for value in values if len(value) >= MIN_LITERAL_LEN]


def is_secret_env_value(value: str) -> bool:
    """A value worth matching exactly: long enough, one word, not a name, path or stand-in."""
    return (
        len(value) >= MIN_LITERAL_LEN
        and not any(char.isspace() for char in value)
        and not is_placeholder(value)
        and not _ENV_NAME_RE.match(value)
        and not _WORDS_RE.match(value)
        and not is_code_reference(value)
    )


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of every environment variable whose name looks secret (`*KEY*`, `*TOKEN*`,
    `*SECRET*`, `*PASSWORD*`, ...) and whose value could be one."""
    env = os.environ if environ is None else environ
    return [
        value
        for name, value in env.items()
        if SECRET_ENV_NAME_RE.search(name) and is_secret_env_value(value)
    ]


def live_values(key_var: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Exact values to find: the key variable's value and every secret-named variable's."""
    return [*env_literals([key_var], environ), *secret_env_values(environ)]
