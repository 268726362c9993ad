"""Post-generation hook: put the chosen framework's files in place, then scan for secrets.

Runs with the generated project as the working directory. Steps:

1. Move the files of the selected `_variants/<layer>/` directories (see `layers_for`) to the
   same relative paths in the project, then delete `_variants/`.
2. Scan every file this run wrote with the project's own `src/<package>/secret_scan.py`
   (loaded by path), also for the exact value of the key environment variable and of every
   secret-named environment variable. On a finding: report `path:line` with the value masked,
   remove what this run created and exit 1.
3. Print the next steps.

"What this run wrote" comes from the manifest the pre-generation hook leaves in the temporary
directory (`manifest_path`): the files the output directory held before, with their digests.
Generating into an existing directory with `--overwrite-if-exists` therefore neither scans the
files that were already there (a developer's own `.env`) nor deletes them on a finding; a file
this run overwrote cannot be restored and is named instead. Without a manifest, every file
counts as written by this run.

The private variable `_ALLTKN_TEMPLATE_SKIP_SCAN=1` skips step 2. It exists only so that
`bench/bench_post_gen_scan.py` can time bakes with and without the scan; it is not an option.

The answers arrive only as JSON data in the `__main__` block, so tests can import this file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

VARIANTS_DIR = "_variants"
SKIP_SCAN_ENV = "_ALLTKN_TEMPLATE_SKIP_SCAN"
MANIFEST_PREFIX = "alltkn-template-pre-gen-"
# Larger files are neither hashed nor scanned (the scanner skips them too).
MAX_HASHED_BYTES = 2 * 1024 * 1024
_LAYERS = {
    "fastapi": ("web", "async", "fastapi"),
    "flask": ("web", "sync", "flask"),
    "script": ("sync", "async", "script"),
}
# Layers an option adds after the framework's: (answer name, value) -> layer.
_OPTION_LAYERS = (
    (("docker", "yes"), "docker"),
    (("kubernetes", "yes"), "k8s"),
    (("ci", "github"), "ci-github"),
    (("ci", "gitlab"), "ci-gitlab"),
)
CRUFT_FILE = ".cruft.json"
# Answers cookiecutter adds about this machine or run; cruft regenerates with the rest.
_CRUFT_LEFT_OUT = frozenset(
    {"_repo_dir", "_output_dir", "_checkout", "_copy_without_render", "__prompts__"}
)
_GIT_ABBREVIATIONS = {
    "gh:": "https://github.com/{}.git",
    "gl:": "https://gitlab.com/{}.git",
    "bb:": "https://bitbucket.org/{}",
}

SkipDir = Callable[[str], bool]


class VariantCollision(Exception):
    """A variant file would overwrite a file that is already in the project (template bug)."""


# --- what the output directory held before this run --------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """Files (relative POSIX path -> sha256, None if too large) and directories that existed
    in the output directory before this run rendered anything."""

    files: Mapping[str, str | None]
    dirs: frozenset[str]


def manifest_path(project_dir: Path) -> Path:
    """The manifest's place: the temporary directory, keyed by the project directory."""
    digest = hashlib.sha256(str(project_dir.resolve()).encode()).hexdigest()[:32]
    return Path(tempfile.gettempdir(), f"{MANIFEST_PREFIX}{digest}.json")


def file_digest(path: Path) -> str | None:
    """The file's sha256, or None if it is too large to be scanned anyway or unreadable."""
    try:
        if path.stat().st_size > MAX_HASHED_BYTES:
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def walk(project_dir: Path, skip: SkipDir) -> tuple[list[Path], list[Path]]:
    """(files, directories) below `project_dir`, not entering skipped directories or links."""
    files: list[Path] = []
    dirs: list[Path] = []
    for current, subdirs, names in os.walk(project_dir):
        subdirs[:] = [name for name in subdirs if not skip(name)]
        dirs.extend(Path(current, name) for name in subdirs)
        files.extend(Path(current, name) for name in names)
    return files, dirs


def snapshot(project_dir: Path, skip: SkipDir) -> Manifest:
    files, dirs = walk(project_dir, skip)
    return Manifest(
        files={p.relative_to(project_dir).as_posix(): file_digest(p) for p in files},
        dirs=frozenset(p.relative_to(project_dir).as_posix() for p in dirs),
    )


def write_manifest(project_dir: Path, skip: SkipDir) -> Path:
    """Record what `project_dir` holds now (called by the pre-generation hook)."""
    manifest = snapshot(project_dir, skip)
    target = manifest_path(project_dir)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".alltkn-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(
            {
                "project_dir": str(project_dir.resolve()),
                "files": dict(manifest.files),
                "dirs": sorted(manifest.dirs),
            },
            out,
        )
    os.replace(temporary, target)
    return target


def take_manifest(project_dir: Path) -> Manifest | None:
    """Read and delete this project's manifest; None if there is none we can trust."""
    path = manifest_path(project_dir)
    try:
        if path.stat().st_uid != os.getuid():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    finally:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    if not isinstance(data, dict) or data.get("project_dir") != str(project_dir.resolve()):
        return None
    return Manifest(files=dict(data.get("files", {})), dirs=frozenset(data.get("dirs", [])))


def untouched(project_dir: Path, manifest: Manifest | None) -> set[str]:
    """Files that existed before this run and that it did not change."""
    if manifest is None:
        return set()
    return {
        relative
        for relative, digest in manifest.files.items()
        if (project_dir / relative).is_file() and file_digest(project_dir / relative) == digest
    }


# --- variant layers ----------------------------------------------------------------------------


def layers_for(framework: str, options: Mapping[str, object] | None = None) -> list[str]:
    """The `_variants/` layers assembled for `framework` and the other `options` (answers such
    as docker, kubernetes, ci), in order."""
    try:
        layers = list(_LAYERS[framework])
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}") from None
    chosen = options or {}
    return layers + [layer for (name, value), layer in _OPTION_LAYERS if chosen.get(name) == value]


def variant_moves(
    project_dir: Path,
    framework: str,
    replaceable: Iterable[Path] = (),
    options: Mapping[str, object] | None = None,
) -> list[tuple[Path, Path]]:
    """(source, destination) for every file of the selected layers, checked for collisions.

    A destination in `replaceable` (a file left from before this run) may be overwritten.
    """
    moves: list[tuple[Path, Path]] = []
    claimed: dict[Path, Path] = {}
    stale = set(replaceable)
    for layer in layers_for(framework, options):
        layer_dir = project_dir / VARIANTS_DIR / layer
        if not layer_dir.is_dir():
            continue
        for source in sorted(p for p in layer_dir.rglob("*") if p.is_file() or p.is_symlink()):
            relative = source.relative_to(layer_dir)
            destination = project_dir / relative
            taken = destination.exists() or destination.is_symlink()
            if (taken and destination not in stale) or destination in claimed:
                raise VariantCollision(
                    f"{VARIANTS_DIR}/{layer}/{relative.as_posix()} would overwrite "
                    f"{relative.as_posix()}"
                )
            claimed[destination] = source
            moves.append((source, destination))
    return moves


def assemble_variant(
    project_dir: Path,
    framework: str,
    replaceable: Iterable[Path] = (),
    options: Mapping[str, object] | None = None,
) -> list[Path]:
    """Move the selected layers' files into place and delete `_variants/`; returns the moved
    destinations. Nothing is moved if any file would collide."""
    moves = variant_moves(project_dir, framework, replaceable, options)
    for source, destination in moves:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(destination))
    variants = project_dir / VARIANTS_DIR
    if variants.exists():
        shutil.rmtree(variants)
    return [destination for _, destination in moves]


# --- .cruft.json: where the project came from, for `cruft check` / `cruft update` ---------------


def local_template_dir(answers: Mapping[str, object]) -> Path | None:
    """The template directory, absolute. `_repo_dir` is relative when the template was given
    by a relative path; cookiecutter's process then works in the template while the hook runs
    (also under cruft, which leaves `_repo_dir` out)."""
    repo_dir = str(answers.get("_repo_dir") or "")
    if repo_dir and os.path.isabs(repo_dir):
        return Path(repo_dir)
    with contextlib.suppress(OSError):
        parent = Path(f"/proc/{os.getppid()}/cwd").resolve()
        if (parent / "cookiecutter.json").is_file():
            return parent
    return Path(repo_dir).resolve() if repo_dir else None


def template_source(answers: Mapping[str, object]) -> str:
    """The template as git can clone it: a local template by absolute path, `gh:` and the
    like expanded."""
    template = str(answers.get("_template", ""))
    for prefix, url in _GIT_ABBREVIATIONS.items():
        if template.startswith(prefix):
            return url.format(template[len(prefix) :])
    if "://" in template:  # never keep credentials from https://user:token@host/...
        parts = urlsplit(template)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=host))
    if template.startswith("git@"):
        return template
    local = local_template_dir(answers)
    return str(local) if local else template


def template_commit(repo_dir: Path) -> str | None:
    """The template's git commit, or None when it is not a git checkout (or git is missing)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def cruft_state(answers: Mapping[str, object], commit: str | None) -> dict[str, object]:
    """What cruft itself writes on `cruft create`, from answers that passed the pre-gen
    secret checks; nothing about this machine beyond the template's location."""
    context = {k: v for k, v in answers.items() if k not in _CRUFT_LEFT_OUT}
    context["_template"] = template_source(answers)
    context["_commit"] = commit
    return {
        "template": context["_template"],
        "commit": commit,
        "checkout": answers.get("_checkout"),
        "context": {"cookiecutter": context},
        "directory": None,
    }


def rendered_by_cruft(answers: Mapping[str, object]) -> bool:
    """True when cruft drives the render (create, update, diff, check): it calls cookiecutter's
    `generate_files` itself, so `_output_dir` (set by cookiecutter's own entry point) is absent
    and cruft's `_commit` is present. cruft writes `.cruft.json` after `create` and keeps the
    project's own on `update`; one from the hook, naming cruft's temp clone, would show in every
    `cruft diff` and leave a `.cruft.json.rej` after every `cruft update`."""
    return "_commit" in answers and "_output_dir" not in answers


def write_cruft_file(project_dir: Path, answers: Mapping[str, object]) -> None:
    local = local_template_dir(answers)
    state = cruft_state(answers, template_commit(local) if local else None)
    text = json.dumps(state, ensure_ascii=False, indent=2, separators=(",", ": ")) + "\n"
    (project_dir / CRUFT_FILE).write_text(text, encoding="utf-8")


# --- the secret scan ---------------------------------------------------------------------------


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


def key_literals(
    answers: Mapping[str, object], environ: Mapping[str, str], scanner: ModuleType
) -> list[str]:
    """Exact values to find: the key variable's value and every secret-named variable's."""
    key_var = str(answers.get("api_key_env_var", ""))
    return [*scanner.env_literals([key_var], environ), *scanner.secret_env_values(environ)]


def written_files(project_dir: Path, scanner: ModuleType, kept: set[str]) -> list[Path]:
    """The files this run wrote: everything the scanner would scan, less the untouched ones."""
    return [
        path
        for path in scanner.iter_files(project_dir)
        if path.relative_to(project_dir).as_posix() not in kept
    ]


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


def removal_line(
    answers: Mapping[str, object], findings: Sequence[Any], overwritten: Sequence[str]
) -> str:
    """The closing line: what was removed, what was not, and how to fix the answers."""
    names = sorted({name for f in findings for name in answers_containing(answers, f.value)})
    source = f"the answer(s) {', '.join(names)}" if names else "your answers or the template"
    outcome = "the files this run created were removed"
    if overwritten:
        outcome += (
            f"; {len(overwritten)} file(s) that existed before were overwritten and still hold "
            f"it ({', '.join(overwritten)}): restore them from version control or edit them"
        )
    key_var = answers.get("api_key_env_var", "the key environment variable")
    return (
        f"error: {outcome}. Remove the secret from {source} and generate again; "
        f"API keys belong only in the {key_var} environment variable. "
        "If it was a real key, rotate it"
    )


def remove_created(project_dir: Path, manifest: Manifest | None, skip: SkipDir) -> None:
    """Delete the files and (then empty) directories this run created; nothing else.

    The project directory itself stays: cookiecutter removes it when it created it.
    """
    before = manifest.files if manifest else {}
    before_dirs = manifest.dirs if manifest else frozenset()
    files, dirs = walk(project_dir, skip)
    for path in files:
        if path.relative_to(project_dir).as_posix() not in before:
            path.unlink()
    for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if directory.relative_to(project_dir).as_posix() not in before_dirs:
            try:
                directory.rmdir()
            except OSError:  # not empty: it holds something that was there before
                continue


def fail_on_secrets(
    project_dir: Path,
    answers: Mapping[str, object],
    environ: Mapping[str, str],
    manifest: Manifest | None,
    kept: set[str],
) -> list[str]:
    """Scan what this run wrote; on findings remove what it created and return the error
    lines, else []."""
    scanner = load_scanner(project_dir, str(answers.get("package_name", "")))
    # .cruft.json repeats the answers: report a secret where the template put it first.
    files = sorted(written_files(project_dir, scanner, kept), key=lambda p: p.name == CRUFT_FILE)
    findings = scanner.scan_files(
        project_dir, files, literals=key_literals(answers, environ, scanner)
    )
    if not findings:
        return []
    before = manifest.files if manifest else {}
    overwritten = sorted({f.path for f in findings if f.path in before})
    remove_created(project_dir, manifest, scanner.is_skipped_dir)
    return [*finding_lines(findings), removal_line(answers, findings, overwritten)]


# --- the hook ----------------------------------------------------------------------------------


def next_steps(answers: Mapping[str, object], project_dir: Path) -> list[str]:
    """A few lines telling a person how to start."""
    key_var = answers.get("api_key_env_var", "ALLTKN_API_KEY")
    return [
        f"Next: cd {project_dir}",
        "  make dev && make test    (uv if installed, else a .venv with pip; without make:",
        '    python -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && pytest)',
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
    manifest = take_manifest(project_dir)
    kept = untouched(project_dir, manifest)
    try:
        moved = assemble_variant(
            project_dir, framework, {project_dir / name for name in kept}, answers
        )
    except (VariantCollision, ValueError) as exc:
        print(
            f"error: framework: cannot assemble the {framework} variant: {exc}. "
            "This is a template bug; please report it",
            file=sys.stderr,
        )
        return 1
    kept -= {path.relative_to(project_dir).as_posix() for path in moved}
    if not rendered_by_cruft(answers):
        write_cruft_file(project_dir, answers)
        kept.discard(CRUFT_FILE)
    if environ.get(SKIP_SCAN_ENV) != "1":
        try:
            errors = fail_on_secrets(project_dir, answers, environ, manifest, kept)
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
    if not rendered_by_cruft(answers):  # cruft's renders go to temp dirs; `cruft diff` prints
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
