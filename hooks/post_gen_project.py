"""Post-generation hook: put the chosen framework's files in place, then scan for secrets.

Runs with the generated project as the working directory. Steps (`run`):

1. Take the manifest the pre-generation hook left (`alltkn_hooks.manifest`): the files the
   output directory held before this run are neither scanned nor removed.
2. Move the files of the selected `_variants/<layer>/` directories to the same relative paths in
   the project, then delete `_variants/` (`alltkn_hooks.variants`).
3. Unless cruft drives the render, write `.cruft.json` (template and commit), so that
   `cruft check` and `cruft update` work for this project (`alltkn_hooks.cruft_file`).
4. Scan every file this run wrote with the template's scanner (`alltkn_hooks.output_scan`),
   also for the exact value of the key environment variable and of every secret-named
   environment variable. On a finding: report `path:line` with the value masked, remove what
   this run created and exit 1. A file this run overwrote cannot be restored and is named.
5. Print the next steps.

The private variable `_ALLTKN_TEMPLATE_SKIP_SCAN=1` skips step 4. It exists only so that
`bench/bench_post_gen_scan.py` can time bakes with and without the scan; it is not an option.

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

SKIP_SCAN_ENV = "_ALLTKN_TEMPLATE_SKIP_SCAN"
# The Makefile's install without uv (its INSTALL_DEV): the hashed lock file, then the project.
NO_MAKE_INSTALL = (
    "python3 -m venv .venv && .venv/bin/python -m pip install --require-hashes --no-deps "
    "-r requirements-dev.lock.txt && .venv/bin/python -m pip install --no-deps "
    "--no-build-isolation -e ."
)


def next_steps(answers: Mapping[str, object], project_dir: Path) -> list[str]:
    """A few lines telling a person how to start."""
    key_var = answers.get("api_key_env_var", "ALLTKN_API_KEY")
    return [
        f"Next: cd {project_dir}",
        "  git init && make dev && make test    (uv if installed, else a .venv with pip)",
        "  make fake & make try                 (against the bundled fake gateway: no key needed)",
        f"  no make? install as `make dev` does without uv: {NO_MAKE_INSTALL}",
        (
            f"  cp .env.example .env, then set {key_var} in .env or your environment "
            "(never in code or in cookiecutter answers)"
        ),
    ]


def run(answers: Mapping[str, object], project_dir: Path, environ: Mapping[str, str]) -> int:
    """Assemble, scan, report. Returns the exit status; errors go to stderr as one line each."""
    from alltkn_hooks import TEMPLATE_DIR, cruft_file, manifest, output_scan, variants

    framework = str(answers.get("framework", ""))
    before = manifest.take_manifest(project_dir)
    kept = manifest.untouched(project_dir, before)
    try:
        moved = variants.assemble_variant(
            project_dir, framework, {project_dir / name for name in kept}, answers
        )
    except (variants.VariantCollision, ValueError) as exc:
        print(
            f"error: framework: cannot assemble the {framework} variant: {exc}. "
            "This is a template bug; please report it",
            file=sys.stderr,
        )
        return 1
    kept -= {path.relative_to(project_dir).as_posix() for path in moved}
    variants.name_the_lock(project_dir, str(answers.get("project_slug", "")))
    by_cruft = cruft_file.rendered_by_cruft(answers)
    if not by_cruft:
        cruft_file.write_cruft_file(project_dir, answers, TEMPLATE_DIR)
        kept.discard(cruft_file.CRUFT_FILE)
    if environ.get(SKIP_SCAN_ENV) != "1":
        errors = output_scan.fail_on_secrets(project_dir, answers, environ, before, kept)
        for line in errors:
            print(line, file=sys.stderr)
        if errors:
            return 1
    if not by_cruft:  # cruft's renders go to temp dirs; `cruft diff` prints
        print("\n".join(next_steps(answers, project_dir)))
    return 0


def main(answers: Mapping[str, object], rendered_copy: Path | None = None) -> int:
    """Entry point for the rendered hook; never shows a traceback."""
    try:
        from alltkn_hooks import discard_rendered_copy

        if rendered_copy is not None:
            discard_rendered_copy(rendered_copy)
        return run(answers, Path.cwd(), os.environ)
    except Exception as exc:  # never a traceback (nor a value)
        print(
            f"error: post_gen_project: internal error ({type(exc).__name__}). "
            "This is a template bug; please report it",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    TEMPLATE = r'''{{ template_dir()|tojson if template_dir is defined else '""' }}'''  # fmt: skip
    ANSWERS = r'''{{ cookiecutter | tojson }}'''  # fmt: skip
    sys.dont_write_bytecode = True  # leave no __pycache__ in the template
    sys.path.insert(0, os.path.join(json.loads(TEMPLATE), "hooks"))
    sys.exit(main(json.loads(ANSWERS), rendered_copy=Path(__file__)))
