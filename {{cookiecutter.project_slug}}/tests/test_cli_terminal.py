"""`ask` as a person runs it: stdin, stdout and stderr on one terminal (a pseudo-terminal).

The answer ends its own line before any log line; on a terminal the call log shows only with
`-v` (a failed call's line always); when stderr is not a terminal it is written as before.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

import pytest

pty = pytest.importorskip("pty")  # POSIX only

pytestmark = pytest.mark.usefixtures("gateway_env")

COMMAND = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "ask"]
ANSWER = "Hello from the fake gateway."


def in_terminal(*args: str, stderr_too: bool = True) -> tuple[int, str, str]:
    """Exit code, what the terminal showed, and stderr when it went to a pipe instead."""
    leader, follower = pty.openpty()
    err = follower if stderr_too else subprocess.PIPE
    process = subprocess.Popen(
        [*COMMAND, *args], stdin=follower, stdout=follower, stderr=err, close_fds=True
    )
    os.close(follower)
    shown, deadline = b"", time.monotonic() + 60
    while time.monotonic() < deadline:
        if select.select([leader], [], [], 0.5)[0]:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not data:
                break
            shown += data
        elif process.poll() is not None:
            break
    os.close(leader)
    code = process.wait(timeout=30)
    logged = process.stderr.read().decode() if process.stderr else ""
    return code, shown.decode().replace("\r\n", "\n"), logged


def test_the_answer_alone_on_a_terminal() -> None:
    code, shown, _ = in_terminal("Say hello")

    assert code == 0
    assert shown == f"{ANSWER}\n"  # no call log line without -v


def test_verbose_shows_the_call_log_below_the_answer() -> None:
    code, shown, _ = in_terminal("-v", "Say hello")

    assert code == 0
    answer, log, *rest = shown.split("\n")
    assert answer == ANSWER  # its newline came first: the log line starts a line of its own
    assert json.loads(log)["event"] == "upstream_call"
    assert rest == [""]


def test_a_failed_call_shows_its_log_line_and_the_error() -> None:
    code, shown, _ = in_terminal("-m", "fake-error-quota", "Say hello")

    assert code == 1
    log, error, end = shown.split("\n")
    assert json.loads(log)["category"] == "quota"
    assert error.startswith("error[quota]: ")
    assert end == ""


def test_the_call_log_is_still_written_when_stderr_is_not_a_terminal() -> None:
    code, shown, logged = in_terminal("Say hello", stderr_too=False)

    assert code == 0
    assert shown == f"{ANSWER}\n"
    assert json.loads(logged)["event"] == "upstream_call"
