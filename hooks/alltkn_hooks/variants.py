"""Variant layers: move the files of the selected `_variants/<layer>/` directories to the same
relative paths in the project, then delete `_variants/`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

VARIANTS_DIR = "_variants"
_LAYERS = {
    "fastapi": ("web", "async", "fastapi"),
    "flask": ("web", "sync", "flask"),
    "script": ("sync", "async", "rows", "script"),
}
# Layers an option adds after the framework's: (answer name, value) -> layers, in order. A layer
# two options (or an option and the framework) both add is assembled once, where it comes first.
_OPTION_LAYERS: tuple[tuple[tuple[str, str], tuple[str, ...]], ...] = (
    (("caller_auth", "keys"), ("limits", "callers")),
    # The worker runs the sync service, paces its calls with the limiter's Redis scripts and
    # reads the batch line format.
    (("worker", "celery"), ("sync", "limits", "rows", "worker", "worker-web", "worker-{web}")),
    (("docker", "yes"), ("docker",)),
    (("kubernetes", "yes"), ("k8s", "k8s-worker")),
    (("ci", "github"), ("ci-github",)),
    (("ci", "gitlab"), ("ci-gitlab",)),
)
# Answers and layers only a web framework gets (pre-gen refuses the answers asking for more).
_WEB_ONLY_ANSWERS = frozenset({("caller_auth", "keys")})
_WEB_ONLY_LAYERS = frozenset({"worker-web", "worker-{web}"})
# Layers only another option's answer brings in: layer -> (answer name, value).
_ONLY_WITH = {"k8s-worker": ("worker", "celery")}
# The answers that change the generated pyproject.toml's dependencies, in this order, name the
# lock layer `lock-<framework>-<caller_auth>[-<worker>]`: that combination's uv.lock and hashed
# requirements files, written by tools/refresh_locks.py. An option that adds a dependency is one
# more name here (with its no-dependency answer in LOCK_UNNAMED, so the existing layers keep
# their names), then `python tools/refresh_locks.py` writes its layers.
LOCK_ANSWERS = ("framework", "caller_auth", "worker")
# Answers left out of the layer's name; a missing answer counts as this one.
LOCK_UNNAMED = {"worker": "none"}
LOCK_LAYER_PREFIX = "lock-"
# uv.lock names the project; the layers hold this placeholder (they are copied, not rendered).
LOCK_FILE = "uv.lock"
LOCK_NAME_PLACEHOLDER = 'name = "{{ cookiecutter.project_slug }}"'


class VariantCollision(Exception):
    """A variant file would overwrite a file that is already in the project (template bug)."""


def layers_for(framework: str, options: Mapping[str, object] | None = None) -> list[str]:
    """The `_variants/` layers assembled for `framework` and the other `options` (answers such
    as caller_auth, docker, kubernetes, ci), in order; a missing answer adds no layer."""
    try:
        layers = list(_LAYERS[framework])
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}") from None
    chosen = options or {}
    web = "web" in layers
    for (name, value), added in _OPTION_LAYERS:
        if chosen.get(name) != value or (not web and (name, value) in _WEB_ONLY_ANSWERS):
            continue
        for layer in added:
            needs = _ONLY_WITH.get(layer)
            if (web or layer not in _WEB_ONLY_LAYERS) and (
                not needs or chosen.get(needs[0]) == needs[1]
            ):
                layer = layer.replace("{web}", framework)
                if layer not in layers:
                    layers.append(layer)
    return layers + lock_layers({**chosen, "framework": framework})


def lock_layer(answers: Mapping[str, object]) -> str:
    """The lock layer's name for these answers (`LOCK_ANSWERS`)."""
    parts = [str(answers.get(name, LOCK_UNNAMED.get(name, ""))) for name in LOCK_ANSWERS]
    named = [p for name, p in zip(LOCK_ANSWERS, parts, strict=True) if LOCK_UNNAMED.get(name) != p]
    return LOCK_LAYER_PREFIX + "-".join(named)


def lock_layers(answers: Mapping[str, object]) -> list[str]:
    """The lock layer when every `LOCK_ANSWERS` is answered (a layer that does not exist, such as
    one for answers the pre-gen hook refuses, adds nothing)."""
    answered = all(name in answers or name in LOCK_UNNAMED for name in LOCK_ANSWERS)
    return [lock_layer(answers)] if answered else []


def name_the_lock(project_dir: Path, project_slug: str) -> None:
    """Put the project's name in the moved uv.lock (the layers hold a placeholder)."""
    lock = project_dir / LOCK_FILE
    if lock.is_file():
        text = lock.read_text(encoding="utf-8")
        named = f"name = {json.dumps(project_slug)}"
        lock.write_text(text.replace(LOCK_NAME_PLACEHOLDER, named, 1), encoding="utf-8")


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
