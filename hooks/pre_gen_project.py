"""Pre-generation hook: refuse answers that would produce a broken or leaky project.

Steps (`review`):

1. Secrets: every answer is scanned (`alltkn_hooks.answer_secrets`); a refused answer is never
   shown, and it is removed from the replay files cookiecutter has already written
   (`alltkn_hooks.replay`).
2. Every other answer is checked (`alltkn_hooks.checks`): one line
   `error: <variable>: <what is wrong>. <how to fix>` per problem.
3. On any problem, the last line is the command that asks again for the refused answers alone,
   the others kept (`alltkn_hooks.replay.answer_again`, which trims this run's replay file).
4. With no problem, record which files the output directory already holds
   (`alltkn_hooks.manifest`), so that a failed post-generation scan removes only what this run
   wrote, also under `--overwrite-if-exists`.

Problems go to stderr and the hook exits 1: cookiecutter writes nothing. Any other failure is
one line `error: pre_gen_project: internal error (<type>)`, never a traceback nor a value.

Cookiecutter renders this file with Jinja: the answers (JSON data) and the template directory
(`template_dir()`, from `alltkn_template_dir.py`) appear only in the `__main__` block, which puts
`<template>/hooks` first on `sys.path`. The template's tests import this file as a module.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path


def review(answers: Mapping[str, object], project_dir: Path) -> list[str]:
    """Every error line for these answers; with none, records the output directory's files."""
    from alltkn_hooks import TEMPLATE_DIR, answer_secrets, checks, manifest, replay

    refused, secret_errors = answer_secrets.check_secrets(answers)
    # A refused answer's own checks may quote it (a slug suggestion): leave them out.
    problems = [
        (name, line) for name, line in checks.problems_by_variable(answers) if name not in refused
    ]
    errors = [line for _, line in problems] + secret_errors
    if not errors:
        manifest.write_manifest(project_dir)
        return errors
    hint = replay.answer_again(TEMPLATE_DIR, answers, refused | {name for name, _ in problems})
    return [*errors, hint] if hint else errors


def main(
    answers: Mapping[str, object],
    project_dir: Path | None = None,
    rendered_copy: Path | None = None,
) -> int:
    """Print one error line per problem to stderr; 1 if there were any, else 0."""
    try:
        from alltkn_hooks import discard_rendered_copy

        if rendered_copy is not None:
            discard_rendered_copy(rendered_copy)
        errors = review(answers, Path.cwd() if project_dir is None else project_dir)
    except Exception as exc:  # never a traceback (nor a value): report and stop
        errors = [
            f"error: pre_gen_project: internal error ({type(exc).__name__}). "
            "This is a template bug; please report it"
        ]
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    TEMPLATE = r'''{{ template_dir()|tojson if template_dir is defined else '""' }}'''  # fmt: skip
    ANSWERS = r'''{{ cookiecutter | tojson }}'''  # fmt: skip
    sys.dont_write_bytecode = True  # leave no __pycache__ in the template
    sys.path.insert(0, os.path.join(json.loads(TEMPLATE), "hooks"))
    sys.exit(main(json.loads(ANSWERS), rendered_copy=Path(__file__)))
