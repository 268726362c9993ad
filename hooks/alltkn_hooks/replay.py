"""Cookiecutter's replay files: where they are, and removing a refused answer from them.

Cookiecutter writes the replay file (every answer) before the pre-generation hook runs. The hook
cannot see cookiecutter's command line, so it finds the replay directory the way cookiecutter
does without one: `COOKIECUTTER_CONFIG`'s `replay_dir`, else `~/.cookiecutterrc`'s, else
`~/.cookiecutter_replay/`. A `--config-file` given on the command line is invisible here.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

DEFAULT_REPLAY_DIR = "~/.cookiecutter_replay/"
_REPLAY_DIR_RE = re.compile(r"^replay_dir[ \t]*:[ \t]*(?P<value>.*?)[ \t]*$")
_SINGLE_QUOTED_RE = re.compile(r"'((?:[^']|'')*)'")


def cookiecutter_config() -> Path | None:
    """The user config cookiecutter reads: `COOKIECUTTER_CONFIG`, else `~/.cookiecutterrc`."""
    configured = os.environ.get("COOKIECUTTER_CONFIG")
    if configured:
        return Path(configured)
    default = Path(os.path.expanduser("~/.cookiecutterrc"))
    return default if default.is_file() else None


def yaml_scalar(raw: str) -> str:
    """A one-line YAML scalar: double-quoted (JSON escapes), single-quoted, or plain."""
    if raw.startswith('"'):
        value, _ = json.JSONDecoder().raw_decode(raw)
        return str(value)
    quoted = _SINGLE_QUOTED_RE.match(raw)
    if quoted:
        return quoted.group(1).replace("''", "'")
    return re.split(r"[ \t]+#", raw, maxsplit=1)[0].strip()


def configured_replay_dir(config: Path) -> str | None:
    """The top-level `replay_dir:` of a cookiecutter config file (the last one wins)."""
    value = None
    for line in config.read_text(encoding="utf-8").splitlines():
        match = _REPLAY_DIR_RE.match(line)
        if match:
            value = yaml_scalar(match.group("value")) or None
    return value


def replay_dir() -> Path:
    """Where cookiecutter writes replay files, expanded as cookiecutter expands it."""
    config = cookiecutter_config()
    raw = (configured_replay_dir(config) if config else None) or DEFAULT_REPLAY_DIR
    return Path(os.path.expanduser(os.path.expandvars(raw)))


def replay_file(directory: Path, template: Path) -> Path:
    """Cookiecutter's name for it: `<replay_dir>/<template directory name>.json`."""
    name = os.path.basename(os.path.abspath(template))
    return directory / (name if name.endswith(".json") else f"{name}.json")


def scrub(data: object, secrets: Sequence[str]) -> tuple[object, bool]:
    """`data` without any entry whose text holds one of `secrets`; and whether it changed."""
    if isinstance(data, str):
        return data, False
    if isinstance(data, dict):
        kept: dict[str, object] = {}
        changed = False
        for key, value in data.items():
            if isinstance(value, str) and any(secret in value for secret in secrets):
                changed = True
                continue
            kept[key], inner = scrub(value, secrets)
            changed = changed or inner
        return kept, changed
    if isinstance(data, list):
        items = [item for item in data if not (isinstance(item, str) and _holds(item, secrets))]
        scrubbed = [scrub(item, secrets) for item in items]
        return [item for item, _ in scrubbed], len(items) < len(data) or any(
            inner for _, inner in scrubbed
        )
    return data, False


def _holds(text: str, secrets: Iterable[str]) -> bool:
    return any(secret in text for secret in secrets)


def scrub_file(path: Path, secrets: Sequence[str]) -> bool:
    """Rewrite the JSON file at `path` without the secrets (atomically); True if it changed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    cleaned, changed = scrub(data, secrets)
    if not changed:
        return False
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".replay-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(cleaned, out, indent=2)
        os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def scrub_replay(template: Path, secrets: Sequence[str]) -> str:
    """Remove the secrets from cookiecutter's replay files; a phrase saying what happened."""
    directory = replay_dir()
    expected = replay_file(directory, template)
    try:
        candidates = sorted(directory.glob("*.json")) if directory.is_dir() else []
        changed = [path for path in candidates if scrub_file(path, secrets)]
    except OSError as exc:
        return (
            f"it could not be removed from cookiecutter's replay file {expected} "
            f"({type(exc).__name__}): delete that file"
        )
    if not changed:
        return f"no cookiecutter replay file holds it (looked in {directory})"
    shown = expected if expected in changed else changed[0]
    more = f" and {len(changed) - 1} other replay file(s)" if len(changed) > 1 else ""
    return f"it was removed from cookiecutter's replay file {shown}{more}"
