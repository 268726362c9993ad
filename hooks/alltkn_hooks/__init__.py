"""The code behind the template's two hooks, kept once, in the template (never in a project).

The hooks (`hooks/pre_gen_project.py`, `hooks/post_gen_project.py`) are short lists of steps;
cookiecutter renders `template_dir()` (see `alltkn_template_dir.py`) into their `__main__` block,
and they put `<template>/hooks` first on `sys.path` to import this package. No `/proc`, no shell
variable, no Linux-only command: the same on Linux, macOS and Windows.

Modules:
- `checks`: one check per answer, and the combinations that cannot work;
- `secret_scan`: the generation-time secret scanner (answers, generated files);
- `answer_secrets`: secrets in the answers, refused and scrubbed from the replay (`replay`);
- `replay`: cookiecutter's replay files: secrets scrubbed, and the hint that asks again for the
  refused answers alone;
- `manifest`: what the output directory held before this run (`--overwrite-if-exists`);
- `variants`: the `_variants/` layers moved into place;
- `cruft_file`: `.cruft.json` for projects generated with plain cookiecutter;
- `output_scan`: the scan of the files this run wrote, and the removal on a finding.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

# This package lives in <template>/hooks/alltkn_hooks/.
TEMPLATE_DIR = Path(__file__).absolute().parents[2]


def problem(variable: str, what: str, fix: str) -> str:
    """The one-line error format shared by every check."""
    return f"error: {variable}: {what}. {fix}"


def answer(answers: Mapping[str, object], variable: str) -> str:
    """The answer as a string; a missing answer reads as empty."""
    value = answers.get(variable, "")
    return value if isinstance(value, str) else str(value)


def discard_rendered_copy(script: Path) -> None:
    """Delete cookiecutter's rendered copy of a hook (it holds every answer in clear).

    Cookiecutter writes the rendered hook to a temporary file and never deletes it. Only a
    file directly in the temporary directory is removed, never the template's own source.
    """
    try:
        if script.parent.resolve() == Path(tempfile.gettempdir()).resolve():
            script.unlink(missing_ok=True)
    except OSError:
        pass
