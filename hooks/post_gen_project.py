"""Post-generation hook: put the chosen framework's files in place, then scan for secrets.

Runs with the generated project as the working directory. Steps:

1. Move the files of the selected `_variants/<layer>/` directories (see `layers_for`) to the
   same relative paths in the project, then delete `_variants/`.
2. Scan the project with its own `src/<package>/secret_scan.py` (loaded by path), also for the
   exact value of the key environment variable if it is set. On a finding: report
   `path:line` with the value masked, remove the generated project and exit 1.
3. Print the next steps.

The answers arrive only as JSON data in the `__main__` block, so tests can import this file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

VARIANTS_DIR = "_variants"
MIN_LITERAL_LEN = 8
_LAYERS = {
    "fastapi": ("web", "fastapi"),
    "flask": ("web", "flask"),
    "script": ("script",),
}


class VariantCollision(Exception):
    """A variant file would overwrite a file that is already in the project (template bug)."""


def layers_for(framework: str) -> list[str]:
    """The `_variants/` layers assembled for `framework`, in order."""
    try:
        return list(_LAYERS[framework])
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}") from None


def variant_moves(project_dir: Path, framework: str) -> list[tuple[Path, Path]]:
    """(source, destination) for every file of the selected layers, checked for collisions."""
    moves: list[tuple[Path, Path]] = []
    claimed: dict[Path, Path] = {}
    for layer in layers_for(framework):
        layer_dir = project_dir / VARIANTS_DIR / layer
        if not layer_dir.is_dir():
            continue
        for source in sorted(p for p in layer_dir.rglob("*") if p.is_file() or p.is_symlink()):
            relative = source.relative_to(layer_dir)
            destination = project_dir / relative
            if destination.exists() or destination.is_symlink() or destination in claimed:
                raise VariantCollision(
                    f"{VARIANTS_DIR}/{layer}/{relative.as_posix()} would overwrite "
                    f"{relative.as_posix()}"
                )
            claimed[destination] = source
            moves.append((source, destination))
    return moves


def assemble_variant(project_dir: Path, framework: str) -> list[Path]:
    """Move the selected layers' files into place and delete `_variants/`; returns the moved
    destinations. Nothing is moved if any file would collide."""
    moves = variant_moves(project_dir, framework)
    for source, destination in moves:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(destination))
    variants = project_dir / VARIANTS_DIR
    if variants.exists():
        shutil.rmtree(variants)
    return [destination for _, destination in moves]


def load_scanner(project_dir: Path, package_name: str) -> ModuleType:
    """Import the generated project's own `secret_scan.py` by path."""
    path = project_dir / "src" / package_name / "secret_scan.py"
    if not path.is_file():
        raise FileNotFoundError(f"src/{package_name}/secret_scan.py")
    name = f"_generated_{package_name}_secret_scan"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load src/{package_name}/secret_scan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while the class is built
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def key_literals(answers: Mapping[str, object], environ: Mapping[str, str]) -> list[str]:
    """The live key from the named environment variable, if set and long enough to match."""
    value = environ.get(str(answers.get("api_key_env_var", "")), "")
    return [value] if len(value) >= MIN_LITERAL_LEN else []


def scan_project(project_dir: Path, scanner: ModuleType, literals: Sequence[str]) -> list[Any]:
    """The scanner's findings for the whole generated project."""
    return list(scanner.scan_tree(project_dir, literals=literals))


def answers_containing(answers: Mapping[str, object], value: str) -> list[str]:
    """Names of the (public) answers whose text contains `value`."""
    return sorted(
        name
        for name, answer in answers.items()
        if not name.startswith("_") and isinstance(answer, str) and value in answer
    )


def finding_lines(findings: Sequence[Any]) -> list[str]:
    return [
        f"error: secret found in generated file {f.path}:{f.line} ({f.kind}: {f.masked})"
        for f in findings
    ]


def removal_line(answers: Mapping[str, object], findings: Sequence[Any], removed: bool) -> str:
    names = sorted({name for f in findings for name in answers_containing(answers, f.value)})
    source = f"the answer(s) {', '.join(names)}" if names else "your answers"
    outcome = (
        "the generated project was removed"
        if removed
        else "the output directory is an existing git checkout, so it was NOT removed: "
        "delete the secret from it by hand"
    )
    key_var = answers.get("api_key_env_var", "the key environment variable")
    return (
        f"error: {outcome}. Remove the secret from {source} and generate again; "
        f"API keys belong only in the {key_var} environment variable. "
        "If it was a real key, rotate it"
    )


def remove_project(project_dir: Path) -> bool:
    """Delete everything generated (leaving the directory first); returns True if removed.

    An empty directory is put back in its place: after a failed hook cookiecutter deletes the
    project directory itself when it created it, and crashes with a traceback if it is gone.
    An existing git checkout (regenerating with --overwrite-if-exists) is left alone.
    """
    if (project_dir / ".git").exists():
        return False
    os.chdir(project_dir.parent)
    shutil.rmtree(project_dir)
    project_dir.mkdir()
    return True


def fail_on_secrets(
    project_dir: Path, answers: Mapping[str, object], environ: Mapping[str, str]
) -> list[str]:
    """Scan the project; on findings remove it and return the error lines, else []."""
    scanner = load_scanner(project_dir, str(answers.get("package_name", "")))
    findings = scan_project(project_dir, scanner, key_literals(answers, environ))
    if not findings:
        return []
    removed = remove_project(project_dir)
    return [*finding_lines(findings), removal_line(answers, findings, removed)]


def next_steps(answers: Mapping[str, object], project_dir: Path) -> list[str]:
    """Three lines telling a person how to start."""
    key_var = answers.get("api_key_env_var", "ALLTKN_API_KEY")
    return [
        f"Next: cd {project_dir}",
        '  python -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && pytest',
        (
            f"  cp .env.example .env, then set {key_var} in .env or your environment "
            "(never in code or in cookiecutter answers)"
        ),
    ]


def discard_rendered_copy(script: Path) -> None:
    """Delete cookiecutter's rendered copy of this hook (it holds every answer in clear)."""
    try:
        if script.parent.resolve() == Path(tempfile.gettempdir()).resolve():
            script.unlink(missing_ok=True)
    except OSError:
        pass


def run(answers: Mapping[str, object], project_dir: Path, environ: Mapping[str, str]) -> int:
    """Assemble, scan, report. Returns the exit status; errors go to stderr as one line each."""
    framework = str(answers.get("framework", ""))
    try:
        assemble_variant(project_dir, framework)
    except (VariantCollision, ValueError) as exc:
        print(
            f"error: framework: cannot assemble the {framework} variant: {exc}. "
            "This is a template bug; please report it",
            file=sys.stderr,
        )
        return 1
    try:
        errors = fail_on_secrets(project_dir, answers, environ)
    except (OSError, ImportError) as exc:
        print(
            f"error: package_name: cannot load the generated secret scanner ({exc}). "
            "This is a template bug; please report it",
            file=sys.stderr,
        )
        return 1
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        return 1
    print("\n".join(next_steps(answers, project_dir)))
    return 0


def main(answers: Mapping[str, object]) -> int:
    """Entry point for the rendered hook; never shows a traceback."""
    try:
        return run(answers, Path.cwd(), os.environ)
    except Exception as exc:  # never a traceback
        print(
            f"error: post_gen_project: internal error ({type(exc).__name__}). "
            "This is a template bug; please report it",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    discard_rendered_copy(Path(__file__))
    sys.exit(main(json.loads(r'''{{ cookiecutter | tojson }}''')))  # fmt: skip
