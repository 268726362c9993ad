"""The prompts as a person answers them: a real `cookiecutter` session on a pseudo-terminal.

- One bad answer: our error line, then the last line of ours is the replay hint; its command,
  run as printed, asks again for that answer alone (the others kept) and generates the project.
- Questions that do not apply to the framework: Enter takes the only valid answer (a script
  gets `caller_auth=none` and `kubernetes=no`, with or without Docker); the yes/no questions
  and the Python versions are numbered choices, newest Python first and the default.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import REPLAY_HINT, TEMPLATE_DIR, cli_env, out_dir

pexpect = pytest.importorskip("pexpect")

RAW = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
PROMPTED = [name for name in RAW if not name.startswith("_")]
PROMPT = re.compile(r"\[(\d+)/(\d+)\] ")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BAD_URL = "https://api.alltkn.com/api/v1/chat/completions"


def spawn(tmp_path: Path, args: list[str]) -> pexpect.spawn:
    env = {**cli_env(tmp_path), "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    return pexpect.spawn(
        sys.executable,
        ["-m", "cookiecutter", *args],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )


def answer_prompts(
    session: pexpect.spawn, answers: dict[str, str], names: list[str]
) -> tuple[list[str], str]:
    """Answer each prompt (`names[i]` is the i-th asked; Enter when `answers` has none) until
    the session ends; the questions asked, as shown, and the whole output after them."""
    asked: list[str] = []
    while session.expect([PROMPT, pexpect.EOF]) == 0:
        number, total = int(session.match.group(1)), int(session.match.group(2))
        assert total == len(names), f"{total} prompts, expected {names}"
        session.expect(r"\): ")
        asked.append(ANSI.sub("", session.before))
        session.sendline(answers.get(names[number - 1], ""))
    output = ANSI.sub("", session.before)
    session.close()
    return asked, output


def choice_number(name: str, value: str) -> str:
    """The number cookiecutter shows for `value` of the choice variable `name`."""
    return str(RAW[name].index(value) + 1)


def test_a_bad_answer_ends_with_the_replay_hint_whose_command_generates_the_project(
    tmp_path: Path,
) -> None:
    session = spawn(tmp_path, ["-o", str(out_dir(tmp_path)), str(TEMPLATE_DIR)])
    asked, output = answer_prompts(
        session, {"project_name": "Team Bot", "alltkn_base_url": BAD_URL}, PROMPTED
    )

    assert session.exitstatus != 0
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    (error,) = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert lines[error].startswith("error: alltkn_base_url: ends in /chat/completions.")
    # Ours end with the hint; cookiecutter's own "Stopping generation" traceback follows.
    assert lines[error + 1].startswith(REPLAY_HINT), output
    assert lines[error + 2].startswith("ERROR: Stopping generation")
    assert not (out_dir(tmp_path) / "team-bot").exists()

    command = shlex.split(lines[error + 1].split(", run: ", 1)[1])
    assert command[0] == "cookiecutter"
    again = spawn(tmp_path, command[1:])
    asked, output = answer_prompts(again, {}, ["alltkn_base_url"])

    assert again.exitstatus == 0, output
    assert len(asked) == 1
    assert "ALLTKN base URL" in asked[0]
    project = out_dir(tmp_path) / "team-bot"
    cruft = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))["context"]
    assert cruft["cookiecutter"]["project_name"] == "Team Bot"  # kept from the first session
    assert cruft["cookiecutter"]["alltkn_base_url"] == "https://api.alltkn.com/api/v1"


@pytest.mark.parametrize(
    ("framework", "docker", "caller_auth", "kubernetes"),
    [
        pytest.param("script", "yes", "none", "no", id="script"),
        pytest.param("script", "no", "none", "no", id="script-without-docker"),
        pytest.param("flask", "no", "keys", "no", id="flask-without-docker"),
        pytest.param("fastapi", "yes", "keys", "no", id="fastapi"),
    ],
)
def test_enter_takes_the_only_valid_answer_for_the_framework(
    tmp_path: Path, framework: str, docker: str, caller_auth: str, kubernetes: str
) -> None:
    session = spawn(tmp_path, ["-o", str(out_dir(tmp_path)), str(TEMPLATE_DIR)])
    answers: dict[str, str] = {}
    asked: list[str] = []
    while session.expect([PROMPT, pexpect.EOF]) == 0:
        name = PROMPTED[int(session.match.group(1)) - 1]
        session.expect(r"\): ")
        question = ANSI.sub("", session.before)
        asked.append(question)
        value = {"framework": framework, "docker": docker}.get(name)
        answers[name] = choice_number(name, value) if value else ""
        session.sendline(answers[name])
    output = ANSI.sub("", session.before)
    session.close()

    assert session.exitstatus == 0, output
    cruft = json.loads((out_dir(tmp_path) / "alltkn-service" / ".cruft.json").read_text("utf-8"))
    chosen = cruft["context"]["cookiecutter"]
    assert (chosen["framework"], chosen["docker"]) == (framework, docker)
    assert (chosen["caller_auth"], chosen["kubernetes"]) == (caller_auth, kubernetes)
    by_name = dict(zip(PROMPTED, asked, strict=True))
    assert by_name["caller_auth"].endswith(f"({caller_auth}")  # the default, shown
    for yes_no in ("docker", "kubernetes"):
        assert re.search(r"1 - (yes|no)", by_name[yes_no]), by_name[yes_no]
    versions = re.findall(r"\d+ - (3\.\d+)", by_name["python_version"])
    assert versions == ["3.13", "3.12", "3.11", "3.10"]
    assert chosen["python_version"] == "3.13"
