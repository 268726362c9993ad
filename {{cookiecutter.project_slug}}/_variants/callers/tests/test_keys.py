"""`python -m <package> keys ...`, run in this process as an operator would: the new key alone
on stdout, never a key again, bad input one `error:` line and exit 2."""

from __future__ import annotations

import json
import re
import socket
import stat
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.callers import Caller, hash_key
from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.limiter import Limiter, Plan
from {{ cookiecutter.package_name }}.settings import ENV_NAMES, KEY_ENV_VAR

from .redis_server import RedisServer, redis_server  # noqa: F401

KEY_LINE = re.compile(r"ck_[A-Za-z0-9_-]{43}\n")


@pytest.fixture
def callers_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory of its own, no service setting in the environment (no gateway key
    either: managing callers needs none), ALLTKN_CALLERS_FILE pointing into it."""
    monkeypatch.chdir(tmp_path)
    for name in ENV_NAMES.values():
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "callers.json"
    monkeypatch.setenv("ALLTKN_CALLERS_FILE", str(path))
    return path


def keys(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`keys ...` in this process: exit code, stdout, stderr."""
    try:
        code = main(["keys", *args])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def create(capsys: pytest.CaptureFixture[str], name: str, *options: str) -> str:
    code, out, err = keys(capsys, "create", name, *options)
    assert code == 0, err
    return out.strip()


def test_create_prints_the_key_alone_and_stores_only_its_hash(
    callers_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = keys(
        capsys, "create", "team-a", "--models", "gpt-4o-mini, gpt-4o", "--rpm", "5",
        "--tpm", "100", "--daily-tokens", "1000",
    )  # fmt: skip

    assert code == 0
    assert KEY_LINE.fullmatch(out), "the key alone on one line, for `$(... keys create ...)`"
    key = out.strip()
    assert err.startswith(f"caller team-a added to {callers_file}.")
    assert "only time the key is shown" in err
    assert key not in err
    assert stat.S_IMODE(callers_file.stat().st_mode) == 0o600
    text = callers_file.read_text(encoding="utf-8")
    assert key not in text
    stored = json.loads(text)["callers"]["team-a"]
    assert stored["key_sha256"] == hash_key(key)
    assert stored["models"] == ["gpt-4o-mini", "gpt-4o"]
    assert (stored["rpm"], stored["tpm"], stored["daily_tokens"]) == (5, 100, 1000)


def test_create_needs_no_gateway_key(
    callers_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    # The gateway's settings are not the callers': a placeholder there is not checked here.
    (callers_file.parent / ".env").write_text(f"{KEY_ENV_VAR}=<your-alltkn-api-key>\n")
    assert KEY_LINE.fullmatch(create(capsys, "team-a") + "\n")


def test_list_shows_names_prefixes_and_policies_never_a_key(
    callers_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_b = create(capsys, "team-b", "--rpm", "5", "--daily-tokens", "1000")
    key_a = create(capsys, "team-a", "--models", "m1,m2")

    code, out, err = keys(capsys, "list")

    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"team-a\t{key_a[:8]}...\tm1,m2\tno limits",
        f"team-b\t{key_b[:8]}...\t(allowed models)\trpm 5, daily tokens 1000",
    ]
    assert key_a[8:] not in out
    assert key_b[8:] not in out


def test_list_of_a_file_without_callers(
    callers_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create(capsys, "team-a")
    keys(capsys, "revoke", "team-a")
    assert keys(capsys, "list") == (0, "", f"no callers in {callers_file}\n")


def test_revoke_removes_the_caller(callers_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create(capsys, "team-a")
    create(capsys, "team-b")

    code, out, err = keys(capsys, "revoke", "team-a")

    assert (code, out) == (0, "")
    assert err == "revoked team-a; the service refuses its key within 2 s\n"
    assert list(json.loads(callers_file.read_text())["callers"]) == ["team-b"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ("revoke", "team-x"), "error: there is no caller team-x in", id="revoke-unknown"
        ),
        pytest.param(("create", "team-a"), "error: caller team-a exists", id="duplicate"),
        pytest.param(("create", "team b"), "error: caller name 'team b'", id="bad-name"),
        pytest.param(
            ("create", "x", "--rpm", "0"),
            "error: --rpm: Input should be greater than 0",
            id="rpm-0",
        ),
        pytest.param(
            ("create", "x", "--tpm", "-1"),
            "error: --tpm: Input should be greater than 0",
            id="tpm-minus-1",
        ),
        pytest.param(
            ("create", "x", "--daily-tokens", "0"),
            "error: --daily-tokens: Input should be",
            id="daily-0",
        ),
        pytest.param(
            ("create", "x", "--rpm", "abc"),
            "error: argument --rpm: invalid int value: 'abc'",
            id="rpm-abc",
        ),
        pytest.param(
            ("create", "x", "--models", ",a"), "error: --models: list model names", id="models-,a"
        ),
        pytest.param(
            ("create", "x", "--models", "a,,b"),
            "error: --models: list model names",
            id="models-a,,b",
        ),
        pytest.param(
            ("create", "x", "--models", ""), "error: --models: list model names", id="models-empty"
        ),
        pytest.param(
            ("rotate", "team-a"),
            "error: argument COMMAND: invalid choice: 'rotate'",
            id="no-such-command",
        ),
        pytest.param((), "error: the following arguments are required: COMMAND", id="no-command"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(
    callers_file: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], expected: str
) -> None:
    create(capsys, "team-a")
    before = callers_file.read_bytes()

    code, out, err = keys(capsys, *args)

    assert (code, out) == (2, "")
    assert err.count("\n") == 1, err
    assert expected in err
    assert callers_file.read_bytes() == before


BROKEN = {  # id: (content, mode, what the error says)
    "not-json": ("{", 0o600, "is not valid JSON"),
    "missing": (None, 0o600, "does not exist"),
    "mode-644": ('{"callers": {}}', 0o644, "is readable by every user"),
}


@pytest.mark.parametrize(
    ("command", "content", "mode", "expected"),
    [
        pytest.param(command, *BROKEN[broken], id=f"{command}-{broken}")
        for command in ("list", "create", "revoke")
        for broken in BROKEN
        if (command, broken) != ("create", "missing")  # create makes the file
    ],
)
def test_a_broken_callers_file_exits_2_naming_it(
    callers_file: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    content: str | None,
    mode: int,
    expected: str,
) -> None:
    if content is not None:
        callers_file.write_text(content)
        callers_file.chmod(mode)
    args = {"list": ["list"], "create": ["create", "team-a"], "revoke": ["revoke", "team-a"]}

    code, out, err = keys(capsys, *args[command])

    assert (code, out) == (2, "")
    assert err.startswith(f"error: callers file {callers_file} {expected}")
    assert err.count("\n") == 1


def test_create_into_a_missing_directory_exits_2_naming_the_file(
    callers_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_CALLERS_FILE", "deploy/callers.json")
    code, out, err = keys(capsys, "create", "team-a")
    assert (code, out) == (2, "")
    assert err.startswith("error: callers file deploy/callers.json cannot be written")
    assert err.count("\n") == 1


# --- usage ----------------------------------------------------------------------------------


def test_usage_shows_requests_and_tokens_per_caller_and_model(
    callers_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    redis_server.flush()
    monkeypatch.setenv("ALLTKN_LIMITS_REDIS_URL", redis_server.url)
    service = Limiter(redis_server.url)  # as the service counts its calls
    caller = Caller(key_sha256="0" * 64, key_prefix="ck_test", rpm=10)
    try:
        for name, model, used in [
            ("team-a", "gpt-4o-mini", 30),
            ("team-a", "gpt-4o-mini", 12),
            ("team-a", "gpt-4o", 100),
            ("team-b", "gpt-4o-mini", 7),
        ]:
            service.settle(service.reserve(Plan.make(name, caller, model, 10, 100)), used)
    finally:
        service.redis.close()

    code, out, err = keys(capsys, "usage")
    assert (code, err) == (0, "")
    title, header, *rows = out.splitlines()
    assert re.fullmatch(r"usage on \d{4}-\d\d-\d\d \(UTC\)", title)
    assert header == "caller\tmodel\trequests\ttokens"
    assert rows == [
        "team-a\tgpt-4o\t1\t100",
        "team-a\tgpt-4o-mini\t2\t42",
        "team-b\tgpt-4o-mini\t1\t7",
    ]

    code, out, _ = keys(capsys, "usage", "team-b")
    assert (code, out.splitlines()[2:]) == (0, ["team-b\tgpt-4o-mini\t1\t7"])


def test_usage_without_redis_exits_2_with_the_one_line_explanation(
    callers_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = keys(capsys, "usage")
    assert (code, out) == (2, "")
    assert err.startswith("error[config]: usage is counted in the service's own memory without ")
    assert "ALLTKN_LIMITS_REDIS_URL" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("url", "code", "expected"),
    [
        pytest.param(
            "http://127.0.0.1:6379",
            2,
            "error[config]: ALLTKN_LIMITS_REDIS_URL must start with redis://",
            id="not-redis",
        ),
        pytest.param(
            "redis://127.0.0.1:port/0",
            2,
            "error[config]: ALLTKN_LIMITS_REDIS_URL has a port that is not a number",
            id="bad-port",
        ),
        pytest.param(
            "redis://:pw-s3cret@127.0.0.1:{closed}/0",  # pragma: allowlist secret
            1,
            "error: cannot read usage from Redis (ConnectionError)",
            id="redis-down",
        ),
    ],
)
def test_usage_with_a_bad_or_unreachable_redis(
    callers_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    code: int,
    expected: str,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("ALLTKN_LIMITS_REDIS_URL", url.format(closed=closed))

    exit_code, out, err = keys(capsys, "usage")

    assert (exit_code, out) == (code, "")
    assert expected in err
    assert err.count("\n") == 1
    assert "s3cret" not in err
