"""The command line, run as a user would: `python -m {{ cookiecutter.package_name }} ask ...`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from {{ cookiecutter.package_name }}.settings import API_KEY_ENV

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway

pytestmark = pytest.mark.usefixtures("gateway_env")


def ask(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "ask", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_ask_streams_the_answer(gateway: FakeGateway) -> None:
    done = ask("say hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello from the fake gateway.\n"
    assert gateway.requests_for("gpt-4o-mini")[0].body["stream"] is True
    assert '"event": "upstream_call"' in done.stderr


def test_ask_no_stream_with_model_user_and_task(gateway: FakeGateway) -> None:
    done = ask("say hello", "--no-stream", "--model", "gpt-4o", "--user", "u1", "--task", "t1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello from the fake gateway.\n"
    assert "stream" not in (gateway.requests_for("gpt-4o")[0].body or {})
    assert '"user": "u1"' in done.stderr
    assert '"task": "t1"' in done.stderr


def test_parameters_reach_the_gateway(gateway: FakeGateway) -> None:
    done = ask("hello", "--no-stream", "--temperature", "0.5", "--max-tokens", "30")
    assert done.returncode == 0, done.stderr
    body = gateway.requests_for("gpt-4o-mini")[0].body
    assert (body["temperature"], body["max_tokens"]) == (0.5, 30)


def test_the_output_cap_is_sent_when_no_max_tokens_is_given(gateway: FakeGateway) -> None:
    done = ask("hello")
    assert done.returncode == 0, done.stderr
    assert gateway.requests_for("gpt-4o-mini")[0].body["max_tokens"] == 4096


@pytest.mark.parametrize(
    ("args", "named"),
    [
        pytest.param(("hello", "--temperature", "3"), "--temperature", id="temperature-above-2"),
        pytest.param(("hello", "--max-tokens", "0"), "--max-tokens", id="max-tokens-zero"),
        pytest.param(("hello", "--max-tokens", "many"), "--max-tokens", id="max-tokens-text"),
        pytest.param(("   ",), "the prompt", id="blank-prompt"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    gateway: FakeGateway, args: tuple[str, ...], named: str
) -> None:
    done = ask(*args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {named}: ")
    assert done.stderr.count("\n") == 1
    assert not gateway.requests


def test_max_tokens_above_the_cap_is_refused_before_any_call(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_MAX_OUTPUT_TOKENS", "100")
    done = ask("hello", "--max-tokens", "101")
    assert done.returncode == 1
    assert "ALLTKN_MAX_OUTPUT_TOKENS" in done.stderr
    assert not gateway.requests


@pytest.mark.parametrize(
    ("model", "category"),
    [
        pytest.param("fake-error-401", "auth", id="auth"),
        pytest.param("fake-error-quota", "quota", id="quota"),
        pytest.param("fake-error-503-model", "model_not_found", id="model-not-found"),
        pytest.param("fake-stream-cut", "stream_interrupted", id="stream-cut"),
    ],
)
def test_failures_print_category_and_hint_and_exit_1(model: str, category: str) -> None:
    done = ask("hello", "--model", model)
    assert done.returncode == 1
    assert f"error[{category}]: " in done.stderr
    assert "(hint: " in done.stderr
    assert "Traceback" not in done.stderr
    assert SENTINEL_KEY not in done.stdout + done.stderr


def test_missing_key_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV)
    done = ask("hello")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert API_KEY_ENV in done.stderr
    assert ".env.example" in done.stderr


def test_ctrl_c_closes_the_stream_and_exits_130(gateway: FakeGateway) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "ask", "hi", "--model", "fake-slow"],
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
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "ask", "hi", "--model", "fake-slow"],
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
