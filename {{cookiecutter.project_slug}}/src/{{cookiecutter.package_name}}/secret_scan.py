"""Find secrets (API keys, bearer tokens, passwords, private keys) in text and file trees.

This is the project's one secret scanner. It is used by the template's post-generation hook,
by the git hooks, by `python -m <package>.secret_scan [PATH ...]` and, through
`GATEWAY_KEY_RE` and `mask`, by the log redaction. It is plain, standard-library-only Python.

A finding never carries the raw value into `str()` or `repr()`: output shows only the last
four characters (`****abcd`). A line containing the pragma `secret-scan: allow` is skipped;
use it for deliberate test fixtures.

Detectors are rows of `RULES` (kind, pattern, value check); add a row to detect a new kind.
Values given as literals (the live key from the environment) are matched exactly, first.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ALLOW_PRAGMA = "secret-scan: allow"
MIN_LITERAL_LEN = 8
MIN_BEARER_LEN = 12
MIN_ASSIGNMENT_LEN = 16
MIN_ENTROPY_BITS = 3.5
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

# An OpenAI-style gateway key: `sk-` then 20+ key characters, not glued to a longer word.
GATEWAY_KEY_RE = re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}")

_BEARER_RE = re.compile(
    r"""authorization["'\]]*\s*[:=]\s*["']?\s*bearer\s+(?P<value>[A-Za-z0-9._~+/=-]+)""",
    re.IGNORECASE,
)
_PRIVATE_KEY_RE = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
# `name = value`, `name: value`, `NAME=value`, `"name": "value"`, `name := value`, ...
# The name may not start inside a longer word, which also keeps the scan linear on long lines.
# The value may not start with a bracket, so `creds: {token: ...}` is matched at `token`.
_ASSIGNMENT_RE = re.compile(
    r"""(?<![A-Za-z0-9_.-])(?P<name>[A-Za-z0-9_.-]+)["'\]]{0,2}\s*"""
    r"""(?::=|=>|=(?!=)|:(?![:/]))\s*["'`]?(?P<value>[^\s"'`,;(){}[\]][^\s"'`,;)\]}]*)"""
)
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
# Written without two braces in a row so that the file reads the same through Jinja.
_PLACEHOLDER_RE = re.compile(
    r"<[^>]*>|\$\{|\$\(|^\$[A-Za-z_]|\{\{|x{4,}|\*{4}|\.\.\.|"
    r"change[_-]?me|your|example|placeholder|replace[_-]?me|redacted|dummy|fake|sample",
    re.IGNORECASE,
)
_CODE_CHARS = frozenset("()[]{}")
# Lower-case words joined by `-` or `_` (`first_token_delay`, `decoy-key-value`): a variable
# name or a readable stand-in, not a generated secret.
_WORDS_RE = re.compile(r"^[a-z]+(?:[-_][a-z]+)+$")


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


@dataclass(frozen=True)
class Rule:
    """A named detector: `pattern` finds candidates, `accept` decides on the value."""

    kind: str
    pattern: re.Pattern[str]
    group: str | int = 0
    accept: Callable[[str, re.Match[str]], bool] = lambda value, match: True


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


def _accept_gateway_key(value: str, match: re.Match[str]) -> bool:
    return not is_placeholder(value)


def _accept_bearer(value: str, match: re.Match[str]) -> bool:
    return len(value) >= MIN_BEARER_LEN and not is_placeholder(value)


def _accept_assignment(value: str, match: re.Match[str]) -> bool:
    return (
        is_secret_name(match.group("name"))
        and len(value) >= MIN_ASSIGNMENT_LEN
        and not is_placeholder(value)
        and not _ENV_NAME_RE.match(value)
        and not is_code_reference(value)
        and not _WORDS_RE.match(value)
        and shannon_entropy(value) >= MIN_ENTROPY_BITS
    )


RULES: tuple[Rule, ...] = (
    Rule("private_key", _PRIVATE_KEY_RE),
    Rule("api_key", GATEWAY_KEY_RE, accept=_accept_gateway_key),
    Rule("bearer_token", _BEARER_RE, group="value", accept=_accept_bearer),
    Rule("secret_assignment", _ASSIGNMENT_RE, group="value", accept=_accept_assignment),
)


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


def _candidates(line: str, rules: Sequence[Rule]) -> Iterator[tuple[Rule, str, tuple[int, int]]]:
    for rule in rules:
        for match in rule.pattern.finditer(line):
            value = match.group(rule.group)
            if value and rule.accept(value, match):
                yield rule, value, match.span(rule.group)


def scan_line(line: str, *, path: str, number: int, rules: Sequence[Rule]) -> list[Finding]:
    """Findings on one line: earlier rules win where matches overlap; one per value."""
    if ALLOW_PRAGMA in line:
        return []
    findings: list[Finding] = []
    taken: list[tuple[int, int]] = []
    seen: set[str] = set()
    for rule, value, (start, end) in _candidates(line, rules):
        if value in seen or any(start < t_end and t_start < end for t_start, t_end in taken):
            continue
        seen.add(value)
        taken.append((start, end))
        findings.append(Finding(path, number, rule.kind, value))
    return findings


def rules_with(literals: Iterable[str]) -> list[Rule]:
    """The literal rule (if any literals) followed by the table of named rules."""
    extra = literal_rule(literals)
    return [extra, *RULES] if extra else list(RULES)


def scan_text(text: str, *, path: str = "<text>", literals: Iterable[str] = ()) -> list[Finding]:
    """Scan `text` line by line; `literals` are exact values to find (kind `env_value`)."""
    rules = rules_with(literals)
    findings: list[Finding] = []
    for number, line in enumerate(text.splitlines(), start=1):
        findings.extend(scan_line(line, path=path, number=number, rules=rules))
    return findings


def _skip_dir(name: str) -> bool:
    return name in SKIP_DIRS or name.endswith(SKIP_DIR_SUFFIXES)


def iter_files(root: Path) -> list[Path]:
    """Regular files below `root`, sorted by relative path, skipping tool and VCS directories.

    Symbolic links are not followed, so a scan never leaves `root`.
    """
    found: list[Path] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = [name for name in dirs if not _skip_dir(name)]
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


def scan_tree(root: Path, *, literals: Iterable[str] = ()) -> list[Finding]:
    """Scan every text file below `root`; paths are relative to `root`, POSIX style, sorted."""
    kept = usable_literals(literals)
    findings: list[Finding] = []
    for file in iter_files(root):
        display = file.relative_to(root).as_posix()
        findings.extend(scan_file(file, display=display, literals=kept))
    return findings


def scan_path(target: Path, *, literals: Iterable[str] = ()) -> list[Finding]:
    """Scan a directory (paths shown under `target`) or a single file."""
    if target.is_dir():
        return [
            Finding((target / f.path).as_posix(), f.line, f.kind, f.value)
            for f in scan_tree(target, literals=literals)
        ]
    return scan_file(target, display=target.as_posix(), literals=literals)


def env_literals(names: Iterable[str], environ: dict[str, str] | None = None) -> list[str]:
    """Values of the named environment variables that are set and long enough to match."""
    env = os.environ if environ is None else environ
    values = (env.get(name, "") for name in names)
    return [value for value in values if len(value) >= MIN_LITERAL_LEN]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secret_scan",
        description="Find API keys, tokens, passwords and private keys in files.",
        epilog=f"Lines containing '{ALLOW_PRAGMA}' are skipped. Exit status 1 on findings.",
    )
    parser.add_argument("paths", nargs="*", default=["."], help="files or directories")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME",
        help="also find the exact value of environment variable NAME (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Scan the given paths; print findings and a summary to stderr; 1 if anything was found."""
    args = build_parser().parse_args(argv)
    literals = env_literals(args.env)
    findings: list[Finding] = []
    for raw in args.paths:
        target = Path(raw)
        if not target.exists():
            print(f"secret_scan: error: {raw}: no such file or directory", file=sys.stderr)
            return 2
        findings.extend(scan_path(target, literals=literals))
    for finding in findings:
        print(finding, file=sys.stderr)
    if findings:
        files = len({finding.path for finding in findings})
        print(
            f"secret_scan: {len(findings)} possible secret(s) in {files} file(s); remove them, "
            f"or mark a deliberate fixture line with '{ALLOW_PRAGMA}'",
            file=sys.stderr,
        )
        return 1
    print("secret_scan: no secrets found", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
