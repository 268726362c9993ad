"""Masking secrets in text the service writes (logs, support reports): the live key, any `sk-`
token and other services' token shapes. Scanning files is detect-secrets' job (`make secrets`)."""

from __future__ import annotations

import re
from collections.abc import Iterable

MIN_LITERAL_LEN = 8
_TOKENS = (
    r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}",  # gateway and OpenAI keys
    r"(?<![A-Za-z0-9_-])ck_[A-Za-z0-9_-]{40,}",  # this service's caller keys (callers.py)
    r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})",
    r"(?<![A-Za-z0-9_-])glpat-[A-Za-z0-9_-]{20,}",
    r"(?<![A-Za-z0-9-])xox[abposr]-[A-Za-z0-9-]{10,}",
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
    r"(?i:(?<=bearer )[A-Za-z0-9._~+/=-]{12,})",
    r"(?<=://)(?:[^\s/?#@:'\"]*:)[^\s/?#@'\"]+(?=@)",  # [user]:password@ in a URL
)
_PATTERNS = re.compile("|".join(_TOKENS))
# Every pattern above needs one of these in the lowercased text.
_MARKERS = ("sk-", "ck_", "gh", "glpat-", "xox", "akia", "asia", "eyj", "bearer ", "@")


def mask(value: str) -> str:
    """`****` plus the last four characters; values shorter than 8 show nothing at all."""
    return "****" + value[-4:] if len(value) >= MIN_LITERAL_LEN else "****"


def redact(text: str, literals: Iterable[str] = ()) -> str:
    """`text` with every exact literal (the live key) and every token of a known shape masked."""
    for literal in literals:
        if len(literal) >= MIN_LITERAL_LEN and literal in text:
            text = text.replace(literal, mask(literal))
    lowered = text.lower()
    if not any(marker in lowered for marker in _MARKERS):  # most text: 10x faster than the regex
        return text
    return _PATTERNS.sub(lambda match: mask(match.group()), text)
