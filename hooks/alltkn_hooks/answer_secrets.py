"""Secrets in the answers: refused before anything is rendered, never shown, scrubbed from
the replay files.

Every public answer is scanned with the answer rules of `secret_scan` (which add a lone
random-looking run to the file rules), also for the exact value of the key variable and of every
secret-named environment variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from alltkn_hooks import TEMPLATE_DIR, answer, problem, replay, secret_scan
from alltkn_hooks.checks import check_api_key_env_var
from alltkn_hooks.secret_scan import Finding

DEFAULT_KEY_VAR = "ALLTKN_API_KEY"


def secret_answers(
    answers: Mapping[str, object], literals: Sequence[str]
) -> dict[str, list[Finding]]:
    """{variable: findings} for every public answer that holds something secret-looking."""
    found: dict[str, list[Finding]] = {}
    for name, value in answers.items():
        if name.startswith("_") or not isinstance(value, str):
            continue
        findings = secret_scan.scan_text(
            value, path=name, literals=literals, rules=secret_scan.ANSWER_RULES
        )
        if findings:
            found[name] = findings
    return found


def key_var_hint(answers: Mapping[str, object], refused: Iterable[str]) -> str:
    """The key variable's name, unless that answer is itself unusable."""
    name = answer(answers, "api_key_env_var")
    if "api_key_env_var" in refused or check_api_key_env_var(name):
        return DEFAULT_KEY_VAR
    return name


def secret_lines(
    answers: Mapping[str, object], found: Mapping[str, Sequence[Finding]], replay_note: str
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


def check_secrets(answers: Mapping[str, object]) -> tuple[set[str], list[str]]:
    """(refused variables, their error lines); scrubs the replay files when there are any."""
    live = secret_scan.live_values(answer(answers, "api_key_env_var"), os.environ)
    found = secret_answers(answers, live)
    if not found:
        return set(), []
    values = sorted({f.value for findings in found.values() for f in findings})
    values += [answer(answers, name) for name in found]
    note = replay.scrub_replay(TEMPLATE_DIR, values)
    return set(found), secret_lines(answers, found, note)
