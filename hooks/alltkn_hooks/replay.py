"""Cookiecutter's replay files: where they are, and removing a refused answer from them.

Cookiecutter writes the replay file (every answer) before the pre-generation hook runs. The hook
cannot see cookiecutter's command line, so it finds the replay directory the way cookiecutter
does without one: `COOKIECUTTER_CONFIG`'s `replay_dir`, else `~/.cookiecutterrc`'s, else
`~/.cookiecutter_replay/`. A `--config-file` given on the command line is invisible here.

After a refused answer, `answer_again` removes the refused answers from this run's replay file,
with every answer derived from them and every answer their defaults are derived from, and
returns the command that asks for those alone: `cookiecutter --replay-file` prompts for what its
file lacks (cookiecutter 2.x) and renders a default from the answers given in that session only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

DEFAULT_REPLAY_DIR = "~/.cookiecutter_replay/"
_REPLAY_DIR_RE = re.compile(r"^replay_dir[ \t]*:[ \t]*(?P<value>.*?)[ \t]*$")
_SINGLE_QUOTED_RE = re.compile(r"'((?:[^']|'')*)'")
_REFERENCE_RE = re.compile(r"cookiecutter\.(\w+)")
HINT = "To answer again with your other answers kept, run: "


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
    write_json(path, cleaned)
    return True


def write_json(path: Path, data: object) -> None:
    """Replace the file at `path` with `data` as indented JSON, atomically, keeping its mode."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".replay-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)
        os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


def references(template: Path) -> dict[str, set[str]]:
    """{prompted variable: the variables its default in cookiecutter.json refers to}."""
    raw = json.loads((template / "cookiecutter.json").read_text(encoding="utf-8"))
    return {
        name: set(_REFERENCE_RE.findall(json.dumps(value)))
        for name, value in raw.items()
        if not name.startswith("_")
    }


def to_ask_again(refused: Iterable[str], refers: Mapping[str, set[str]]) -> set[str]:
    """The refused variables, every variable whose default derives from one of them, and every
    variable such a default refers to (a re-asked default sees only re-asked answers)."""
    chosen = set(refused) & set(refers)
    while True:
        grown = chosen | {name for name, used in refers.items() if used & chosen}
        grown |= {used for name in grown for used in refers[name] if used in refers}
        if grown == chosen:
            return chosen
        chosen = grown


def saved_answers(path: Path, answers: Mapping[str, object]) -> dict[str, object] | None:
    """The replay file at `path` if it is this run's: the same template and output directory,
    and these answers (a secret may already be scrubbed from it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    saved = data.get("cookiecutter") if isinstance(data, dict) else None
    if not isinstance(saved, dict):
        return None
    for name, value in answers.items():
        public = not name.startswith("_") or name in ("_template", "_output_dir")
        if public and name in saved and saved[name] != value:
            return None
    return data


def this_runs_replay(template: Path, answers: Mapping[str, object]) -> tuple[Path, dict] | None:
    """(path, content) of the replay file cookiecutter wrote for this run: `<template>.json`,
    or under `--replay-file F` the file named like F, in the replay directory."""
    directory = replay_dir()
    expected = replay_file(directory, template)
    try:
        others = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        others = []
    for path in [expected, *(path for path in others if path != expected)]:
        data = saved_answers(path, answers)
        if data is not None:
            return path, data
    return None


def answer_again(template: Path, answers: Mapping[str, object], refused: Iterable[str]) -> str:
    """The hint line that re-runs with this run's other answers; "" without this run's replay
    file. The answers to ask again are removed from that file."""
    found = this_runs_replay(template, answers)
    if found is None:
        return ""
    path, data = found
    saved = data["cookiecutter"]
    public = {name for name in answers if not name.startswith("_")}
    again = to_ask_again({*refused, *(public - set(saved))}, references(template))
    for name in again:
        saved.pop(name, None)
    try:
        write_json(path, data)
    except OSError:
        return ""
    command = ["cookiecutter", "--replay-file", str(path)]
    checkout = answers.get("_checkout")
    if isinstance(checkout, str) and checkout:
        command += ["--checkout", checkout]
    output = str(answers.get("_output_dir") or ".")
    command += ["-o", output, str(answers.get("_template") or template)]
    return HINT + " ".join(shlex.quote(part) for part in command)
