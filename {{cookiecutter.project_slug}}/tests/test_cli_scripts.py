"""`ask` in scripts, run as processes: piped input, a system prompt, the JSON object."""

from __future__ import annotations

import json

import pytest

from {{ cookiecutter.package_name }} import CLIENT_NAME
from {{ cookiecutter.package_name }}.errors import Category

from .conftest import ANSWER, SENTINEL_KEY
from .fake_gateway import FakeGateway
from .test_cli import run

pytestmark = pytest.mark.usefixtures("gateway_env")

NO_PROMPT = f"{CLIENT_NAME} ask: error: no prompt: "


def sent(gateway: FakeGateway) -> list[dict[str, str]]:
    """The messages of the one request the gateway received."""
    (request,) = gateway.requests
    messages: list[dict[str, str]] = request.body["messages"]
    return messages


# -- piped input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        pytest.param(
            ("Write a commit message",), b"--- a/x.py\n+++ b/x.py\n+print(1)\n",
            "--- a/x.py\n+++ b/x.py\n+print(1)\n\nWrite a commit message", id="pipe-then-prompt",
        ),
        pytest.param(("-",), b"Summarise: it rained.\n", "Summarise: it rained.", id="dash-alone"),
        pytest.param((), b"Summarise: it rained.\n", "Summarise: it rained.", id="no-prompt"),
        pytest.param(("-",), b"\xef\xbb\xbfcaf\xc3\xa9", "café", id="utf-8-with-bom"),
        pytest.param(("hi",), b"", "hi", id="empty-pipe"),
        pytest.param(("hi",), b"\n  \n", "hi", id="blank-pipe"),
    ],
)  # fmt: skip
def test_piped_input_goes_before_the_prompt_in_one_message(
    gateway: FakeGateway, args: tuple[str, ...], stdin: bytes, message: str
) -> None:
    done = run("ask", *args, stdin=stdin)

    assert (done.returncode, done.stdout) == (0, ANSWER + "\n"), done.stderr
    assert sent(gateway) == [{"role": "user", "content": message}]


NO_INPUT = [  # an empty pipe, and no pipe at all
    pytest.param(b"", id="empty-pipe"),
    *(pytest.param(kind, id=kind) for kind in ("dev-null", "closed", "terminal")),
]


@pytest.mark.parametrize("stdin", NO_INPUT)
def test_without_input_on_stdin_the_prompt_goes_alone(
    gateway: FakeGateway, stdin: bytes | str
) -> None:
    done = run("ask", "hi", stdin=stdin)  # a terminal's input is never waited for

    assert (done.returncode, done.stdout) == (0, ANSWER + "\n"), done.stderr
    assert sent(gateway) == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        *(pytest.param((), *case.values, id=f"{case.id}-no-prompt") for case in NO_INPUT),
        pytest.param(("   ",), "dev-null", id="blank-prompt"),
        pytest.param(("-",), b"  \n\n", id="dash-blank-pipe"),
    ],
)
def test_nothing_to_send_is_the_usage_line_and_exit_2(
    gateway: FakeGateway, args: tuple[str, ...], stdin: bytes | str
) -> None:
    done = run("ask", *args, stdin=stdin)

    assert done.returncode == 2
    assert done.stderr.startswith(NO_PROMPT)
    assert done.stderr.count("\n") == 1
    assert not gateway.requests


@pytest.mark.parametrize(
    "stdin",
    [
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", id="png"),
        pytest.param("café crème".encode("latin-1"), id="latin-1-text"),
        pytest.param("hello".encode("utf-16"), id="utf-16-text"),
    ],
)
def test_input_that_is_not_utf8_exits_2_with_one_line(gateway: FakeGateway, stdin: bytes) -> None:
    done = run("ask", "Summarise", stdin=stdin)

    assert done.returncode == 2
    assert done.stderr.startswith("error: stdin: not UTF-8 text (byte 0x")
    assert done.stderr.count("\n") == 1
    assert not gateway.requests


def test_input_of_several_pipe_buffers_arrives_whole(gateway: FakeGateway) -> None:
    text = "".join(f"línea {number}: ✓\n" for number in range(10_000))  # 175 k characters

    done = run("ask", "-", stdin=text.encode())

    assert done.returncode == 0, done.stderr
    assert sent(gateway) == [{"role": "user", "content": text.rstrip()}]


@pytest.mark.parametrize(
    ("size", "words"),
    [
        pytest.param(1_100_000, "over 800000 bytes", id="over-1-MB"),
        pytest.param(300_000, "at most 200000 characters", id="over-200k-characters"),
    ],
)
def test_input_longer_than_one_message_exits_2_naming_the_limit(
    gateway: FakeGateway, size: int, words: str
) -> None:
    done = run("ask", "Summarise", stdin=b"x" * size)

    assert done.returncode == 2
    assert done.stderr.startswith("error: stdin")
    assert words in done.stderr
    assert done.stderr.count("\n") == 1
    assert not gateway.requests


@pytest.mark.parametrize(
    ("stdin", "code"),
    [
        pytest.param(b"123456789", 0, id="total-at-the-limit"),  # 9 + 2 + 9 characters
        pytest.param(b"1234567890", 1, id="total-over-the-limit"),
    ],
)
def test_the_input_limit_applies_to_input_and_prompt_together(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, stdin: bytes, code: int
) -> None:
    monkeypatch.setenv("ALLTKN_MAX_INPUT_CHARS", "20")

    done = run("ask", "123456789", stdin=stdin)

    assert done.returncode == code, done.stderr
    if code:
        assert "error[invalid_request]: The input is 21 characters long; the limit is 20" in (
            done.stderr
        )
    assert len(gateway.requests) == (0 if code else 1)


def test_system_model_and_parameters_reach_the_gateway(gateway: FakeGateway) -> None:
    done = run(
        "ask", "-s", "Answer in one line.", "-m", "gpt-4o", "--temperature", "0.2",
        "--max-tokens", "50", "Explain", stdin=b"def f(): pass",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    (request,) = gateway.requests_for("gpt-4o")
    assert request.body["messages"] == [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "def f(): pass\n\nExplain"},
    ]
    assert (request.body["temperature"], request.body["max_tokens"]) == (0.2, 50)


# -- --json --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param((), {}, id="streamed"),
        pytest.param(("--no-stream",), {}, id="no-stream"),
        pytest.param((), {"ALLTKN_STREAMING": "off"}, id="streaming-off"),
    ],
)
def test_json_prints_one_object_with_the_answer(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    env: dict[str, str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    done = run("ask", "say hello please", "--json", *args)

    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    answer = json.loads(done.stdout)
    assert list(answer) == [
        "content", "model", "usage", "request_id", "upstream_request_id", "finish_reason"
    ]  # fmt: skip
    assert (answer["content"], answer["model"]) == (ANSWER, "gpt-4o-mini")
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert answer["request_id"] == gateway.requests[0].headers["x-request-id"]
    assert answer["upstream_request_id"]
    assert answer["finish_reason"] == "stop"


# Every category a gateway call can end with. The others are the web services' own refusals
# (a model not allowed, caller keys), made before any call; `ask` makes none of them.
JSON_FAILURES = [
    pytest.param(("-m", "fake-error-400"), {}, "invalid_request", id="invalid-request"),
    pytest.param(("-m", "fake-error-401"), {}, "auth", id="auth"),
    pytest.param(("-m", "fake-error-quota"), {}, "quota", id="quota"),
    pytest.param(("-m", "fake-error-403"), {}, "permission", id="permission"),
    pytest.param(("-m", "fake-error-404-model"), {}, "model_not_found", id="model-not-found"),
    pytest.param((), {"ALLTKN_BASE_URL": "{gateway}/v2"}, "bad_base_url", id="bad-base-url"),
    pytest.param(("-m", "fake-error-429"), {}, "rate_limited", id="rate-limited"),
    pytest.param(("-m", "fake-error-500"), {}, "upstream_unavailable", id="upstream-unavailable"),
    pytest.param(("-m", "fake-timeout"), {"ALLTKN_TIMEOUT_S": "0.2"}, "timeout", id="timeout"),
    pytest.param(
        (), {"ALLTKN_BASE_URL": "http://127.0.0.1:9/api/v1"}, "connection", id="connection"
    ),
    pytest.param(("-m", "fake-stream-cut"), {}, "stream_interrupted", id="stream-interrupted"),
]
SERVICE_REFUSALS = {
    "model_not_allowed", "caller_auth", "caller_rate_limited", "caller_budget_exhausted",
    "limiter_unavailable", "metrics_auth", "server_busy", "host_not_allowed", "job_not_found",
    "queue_unavailable",
}  # fmt: skip


def test_json_failures_cover_every_category_of_a_gateway_call() -> None:
    covered = {case.values[2] for case in JSON_FAILURES}
    assert covered == {category.value for category in Category} - SERVICE_REFUSALS


@pytest.mark.parametrize(("args", "env", "category"), JSON_FAILURES)
def test_json_prints_the_error_object_on_stdout_and_exits_1(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    env: dict[str, str],
    category: str,
) -> None:
    monkeypatch.setattr(gateway, "hang_seconds", 0.5)  # fake-timeout: past ALLTKN_TIMEOUT_S
    origin = gateway.base_url.removesuffix("/api/v1")
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(gateway=origin))

    done = run("ask", "hello", "--json", *args)

    assert done.returncode == 1, done.stderr
    assert done.stdout.count("\n") == 1
    error = json.loads(done.stdout)["error"]
    assert list(error) == ["category", "message", "hint", "request_id"]
    assert error["category"] == category
    assert error["message"]
    assert error["hint"]
    assert len(error["request_id"]) == 32
    if gateway.requests:  # the id the call was sent with, to find it in the logs
        assert error["request_id"] == gateway.requests[0].headers["x-request-id"]
    assert "Traceback" not in done.stderr
    assert SENTINEL_KEY not in done.stdout + done.stderr
