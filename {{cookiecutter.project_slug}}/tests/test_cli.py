"""The command line, run as a user would: `python -m {{ cookiecutter.package_name }} ask ...`."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.cli import for_terminal, main
from {{ cookiecutter.package_name }}.settings import KEY_ENV_VAR

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway

pytestmark = pytest.mark.usefixtures("gateway_env")

COMMAND = [sys.executable, "-m", "{{ cookiecutter.package_name }}"]


def run(*args: str, stdin: bytes | str = "dev-null") -> subprocess.CompletedProcess[str]:
    """The command as a process: for what only a process shows (signals, pipes, the exit).
    `stdin`: bytes piped in, or "dev-null", "closed" or "terminal"; never the runner's own."""
    command: list[str] = [*COMMAND, *args]
    options: dict[str, Any] = {"stdin": subprocess.DEVNULL}
    with contextlib.ExitStack() as opened:
        if isinstance(stdin, bytes):
            options = {"input": stdin}
        elif stdin == "closed":
            command = ["sh", "-c", 'exec "$@" <&-', "sh", *command]
        elif stdin == "terminal":
            import pty  # POSIX only

            terminal, options["stdin"] = pty.openpty()
            opened.callback(os.close, terminal)
            opened.callback(os.close, options["stdin"])
        done = subprocess.run(command, capture_output=True, timeout=60, check=False, **options)
    return subprocess.CompletedProcess(
        command, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def ask(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`ask` in this process (much faster than a process per case): exit code, stdout, stderr."""
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stdin", io.StringIO())  # no piped input, whatever the runner's
            code = main(["ask", *args])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_ask_streams_the_answer_as_a_process(gateway: FakeGateway) -> None:
    done = run("ask", "say hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello from the fake gateway.\n"
    body = gateway.requests_for("gpt-4o-mini")[0].body
    assert body["stream"] is True
    assert body["max_tokens"] == 4096  # the output cap, sent when no --max-tokens is given
    assert "temperature" not in body
    assert '"event": "upstream_call"' in done.stderr


def test_options_reach_the_gateway_and_the_log(
    gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = ask(
        capsys, "hi", "--no-stream", "--model", "gpt-4o", "--user", "u1", "--task", "t1",
        "--temperature", "0.5", "--max-tokens", "30",
    )  # fmt: skip
    assert (code, out) == (0, "Hello from the fake gateway.\n")
    body = gateway.requests_for("gpt-4o")[0].body
    assert (body["temperature"], body["max_tokens"], "stream" in body) == (0.5, 30, False)
    assert '"user": "u1"' in err
    assert '"task": "t1"' in err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        pytest.param(("hello", "--temperature", "3"), "--temperature", id="temperature-above-2"),
        pytest.param(("hello", "--max-tokens", "0"), "--max-tokens", id="max-tokens-zero"),
        pytest.param(("hello", "--max-tokens", "many"), "--max-tokens", id="max-tokens-text"),
        pytest.param(("hello", "--max-tokens", "1.0"), "--max-tokens", id="max-tokens-float"),
        pytest.param(("hello", "--system", ""), "--system", id="empty-system"),
        pytest.param(("hello", "-m", "two words"), "--model", id="model-with-a-space"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    gateway: FakeGateway, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], named: str
) -> None:
    code, _, err = ask(capsys, *args)
    assert code == 2
    assert err.startswith(f"error: {named}: ")
    assert err.count("\n") == 1
    assert not gateway.requests


@pytest.mark.parametrize(
    ("switch", "args", "code", "expected"),
    [
        pytest.param(
            {"ALLTKN_MAX_OUTPUT_TOKENS": "100"}, ("--max-tokens", "101"), 1,
            "ALLTKN_MAX_OUTPUT_TOKENS", id="max-tokens-above-the-cap",
        ),
        pytest.param(
            {"ALLTKN_MAX_INPUT_CHARS": "3"}, (), 1, "the limit is 3 characters",
            id="input-above-the-limit",
        ),
        pytest.param(
            {"ALLTKN_STREAMING": "off"}, (), 0, "Hello from the fake gateway.", id="streaming-off"
        ),
        pytest.param(
            {"ALLTKN_FALLBACK_MODELS": "gpt-4o"}, ("--model", "fake-error-503-model"), 0,
            "Hello from the fake gateway.", id="fallback-model",
        ),
    ],
)  # fmt: skip
def test_rollback_switches_apply_to_ask(
    gateway: FakeGateway,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    switch: dict[str, str],
    args: tuple[str, ...],
    code: int,
    expected: str,
) -> None:
    for name, value in switch.items():
        monkeypatch.setenv(name, value)
    result, out, err = ask(capsys, "hello", *args)
    assert result == code
    assert expected in (out if code == 0 else err)
    if code:
        assert not gateway.requests  # refused before any upstream call
    elif "ALLTKN_STREAMING" in switch:
        assert "stream" not in gateway.requests[0].body


@pytest.mark.parametrize(
    ("model", "category"),
    [
        pytest.param("fake-error-401", "auth", id="auth"),
        pytest.param("fake-error-quota", "quota", id="quota"),
        pytest.param("fake-error-503-model", "model_not_found", id="model-not-found"),
        pytest.param("fake-stream-cut", "stream_interrupted", id="stream-cut"),
    ],
)
def test_failures_print_category_and_hint_and_exit_1(
    capsys: pytest.CaptureFixture[str], model: str, category: str
) -> None:
    code, out, err = ask(capsys, "hello", "--model", model)
    assert code == 1
    assert f"error[{category}]: " in err
    assert "(hint: " in err
    assert "Traceback" not in err
    assert SENTINEL_KEY not in out + err


def test_missing_key_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV_VAR)
    done = run("ask", "hello")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert KEY_ENV_VAR in done.stderr
    assert ".env.example" in done.stderr


# What a command's help has no use for: the SDK and its HTTP stacks (`--help` took about a second
# with them), the settings and request models, the servers, the queue.
HEAVY = {"openai", "httpx2", "aiohttp", "pydantic", "pydantic_settings", "fastapi", "uvicorn"}
HEAVY |= {"flask", "gunicorn", "prometheus_client", "opentelemetry", "redis", "celery", "rich"}


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        pytest.param(("--help",), set(), id="help"),
        pytest.param(("ask", "--help"), {"pydantic"}, id="ask-help"),  # its options' model
    ],
)
def test_help_loads_no_sdk(args: tuple[str, ...], allowed: set[str]) -> None:
    """Help answers at once: the modules a command needs are imported when it runs (`-X
    importtime` lists every module the process imported)."""
    command = [sys.executable, "-X", "importtime", *COMMAND[1:], *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "{{ cookiecutter.package_name }}" in imported  # the listing is there
    assert imported & HEAVY <= allowed


def test_ctrl_c_closes_the_stream_and_exits_130(gateway: FakeGateway) -> None:
    process = subprocess.Popen(
        [*COMMAND, "ask", "hi", "--model", "fake-slow"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert process.stdout is not None
    assert process.stdout.read(5) == "tok0 "  # the first delta is printed before the rest exist
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)

    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)


def test_a_reader_leaving_closes_the_stream_quietly(gateway: FakeGateway) -> None:
    # `ask ... | head -c 5`: the pipe closes after the first delta.
    process = subprocess.Popen(
        [*COMMAND, "ask", "hi", "--model", "fake-slow"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert process.stdout is not None
    assert process.stderr is not None
    assert process.stdout.read(5) == "tok0 "
    process.stdout.close()
    stderr = process.stderr.read()
    process.wait(timeout=10)

    assert process.returncode == 141
    assert "Traceback" not in stderr
    assert "Exception ignored" not in stderr
    assert '"status": "client_disconnect"' in stderr
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=2)


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
def test_control_characters_of_an_answer_are_stripped_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch, tty: bool
) -> None:
    """An answer's escape sequences could retitle the window, move the cursor or hide text in a
    terminal; piped, the answer goes out as the model wrote it."""
    answer = "red:\x1b[31m\x1b]0;title\x07 bell\x07 back\x08\r\x9b2J\nline two\tand a tab"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    shown = for_terminal(answer)
    if tty:
        assert shown == "red:[31m]0;title bell back2J\nline two\tand a tab"
    else:
        assert shown == answer
