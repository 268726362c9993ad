"""What the output directory held before this run: written by the pre-generation hook, read
(and deleted) by the post-generation hook.

The manifest lives in the temporary directory (`manifest_path`): the files the output directory
held before, with their digests. Generating into an existing directory with
`--overwrite-if-exists` therefore neither scans the files that were already there (a
developer's own `.env`) nor deletes them on a finding. Without a manifest, every file counts as
written by this run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from alltkn_hooks.secret_scan import is_skipped_dir

MANIFEST_PREFIX = "alltkn-template-pre-gen-"
# Larger files are neither hashed nor scanned (the scanner skips them too).
MAX_HASHED_BYTES = 2 * 1024 * 1024

SkipDir = Callable[[str], bool]


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


def walk(project_dir: Path, skip: SkipDir = is_skipped_dir) -> tuple[list[Path], list[Path]]:
    """(files, directories) below `project_dir`, not entering skipped directories or links."""
    files: list[Path] = []
    dirs: list[Path] = []
    for current, subdirs, names in os.walk(project_dir):
        subdirs[:] = [name for name in subdirs if not skip(name)]
        dirs.extend(Path(current, name) for name in subdirs)
        files.extend(Path(current, name) for name in names)
    return files, dirs


def snapshot(project_dir: Path, skip: SkipDir = is_skipped_dir) -> Manifest:
    files, dirs = walk(project_dir, skip)
    return Manifest(
        files={p.relative_to(project_dir).as_posix(): file_digest(p) for p in files},
        dirs=frozenset(p.relative_to(project_dir).as_posix() for p in dirs),
    )


def write_manifest(project_dir: Path, skip: SkipDir = is_skipped_dir) -> Path:
    """Record what `project_dir` holds now (the pre-generation hook, answers accepted)."""
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
        getuid = getattr(os, "getuid", None)  # POSIX only; Windows has no file owner ids
        if getuid is not None and path.stat().st_uid != getuid():
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


def remove_created(
    project_dir: Path, manifest: Manifest | None, skip: SkipDir = is_skipped_dir
) -> None:
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
