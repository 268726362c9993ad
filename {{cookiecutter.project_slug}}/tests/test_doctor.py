"""`doctor` and its support report, run live against the shared fake gateway on loopback.

In process through `doctor.add_arguments` / `doctor.main` (what the CLI delegates to), and as a
real `python -m` subprocess: each check's verdict and hint, the diagnosis of an unreachable
gateway, the time bound (2 x the timeout), and output that never holds the key.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from {{ cookiecutter.package_name }} import CLIENT_NAME, TEMPLATE_VERSION, __version__, doctor, support
{%- if cookiecutter.caller_auth == "keys" %}
from {{ cookiecutter.package_name }}.callers import add as add_caller
{%- endif %}
from {{ cookiecutter.package_name }}.errors import Category, GatewayError
from {{ cookiecutter.package_name }}.settings import ENV_NAMES, KEY_ENV_VAR

from .conftest import SENTINEL_KEY
from .fake_gateway import MODELS, FakeGateway
{%- if cookiecutter.worker == "celery" %}
from .redis_server import RedisServer, redis_server  # noqa: F401
{%- endif %}

CHECK_IDS = list(doctor.CHECKS)
CHECK_FIELDS = {"id", "title", "status", "duration_ms", "detail", "hint", "category", "error"}
CHECK_FIELDS |= {"request_id", "upstream_request_id", "charge", "charge_reason"}
# Scenario models the fake lists in GET /models, so that each failure below is its own.
LISTED = (*MODELS, "fake-error-quota", "fake-error-503-model", "fake-stream-slow-start")
LISTED += ("fake-stream-stall", "fake-drop")
OTHER_KEY = "sk-" + "Q" * 48  # well-formed, but not the key the fake accepts
KEY_PIECES = (SENTINEL_KEY, SENTINEL_KEY[:20], SENTINEL_KEY[3:23], SENTINEL_KEY[-12:])
PROXY_VARIABLES = [f"{n}{s}" for n in ("http", "https", "all", "no") for s in ("_proxy", "_PROXY")]
REQUEST_ID = re.compile(r"\(request id: ([0-9a-f]+)\)")
TIMEOUT_S = 2.0


@pytest.fixture
def doctor_env(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
{%- if cookiecutter.worker == "celery" %}
    redis_server: RedisServer,  # noqa: F811
{%- endif %}
) -> Callable[..., None]:
    """Point the settings at the fake{% if cookiecutter.worker == "celery" %} (the queue at a real Redis){% endif %}, from an empty directory
    outside any git work tree; call the result with overrides (`None` unsets a variable)."""
    monkeypatch.setattr(gateway, "models", LISTED)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    for name in [*PROXY_VARIABLES, *ENV_NAMES.values()]:  # nor may the shell change verdicts
        monkeypatch.delenv(name, raising=False)
    base = {
        KEY_ENV_VAR: SENTINEL_KEY,
        "ALLTKN_BASE_URL": gateway.base_url,
        "ALLTKN_MODEL": "gpt-4o-mini",
        "ALLTKN_TIMEOUT_S": "10",
        "ALLTKN_MAX_RETRIES": "3",  # the doctor makes each call once all the same
        "LOG_LEVEL": "INFO",
        # Decoys: the doctor must name them, never use them.
        "OPENAI_API_KEY": "decoy-openai-key-value",  # pragma: allowlist secret
        "OPENAI_BASE_URL": "http://127.0.0.1:9/never-used",
{%- if cookiecutter.worker == "celery" %}
        "ALLTKN_QUEUE_URL": redis_server.url,
        "ALLTKN_QUEUE_VISIBILITY_TIMEOUT_S": None,
        "ALLTKN_QUEUE_RETRY_AFTER_CAP_S": None,
{%- endif %}
    }

    def apply(**overrides: str | None) -> None:
        for name, value in {**base, **overrides}.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)

    apply()
{%- if cookiecutter.worker == "celery" %}
    redis_server.flush()  # no job, and no worker running
{%- endif %}
{%- if cookiecutter.caller_auth == "keys" %}
    add_caller(tmp_path / "callers.json", "tests")  # the callers file: one caller, no limits
{%- endif %}
    return apply


def run_doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`<slug> doctor ARGS` as the CLI runs it."""
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    code = doctor.main(parser.parse_args(args))
    out, err = capsys.readouterr()
    assert_no_key(out, err)
    return code, out, err


def doctor_json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, _ = run_doctor(capsys, "--json")
    document: dict[str, Any] = json.loads(out)
    assert document["exit_code"] == code
    return document


def checks_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["id"]: check for check in document["checks"]}


def field(report: str, label: str) -> str:
    """The value of the first `label:` line of a support report."""
    found = re.search(rf"^ *{re.escape(label)}: +(.*)$", report, re.MULTILINE)
    assert found is not None, label
    return found.group(1)


def assert_no_key(*texts: str) -> None:
    for text in texts:
        for piece in KEY_PIECES:
            assert piece not in text


def category_hint(category: Category) -> str:
    return GatewayError(category).hint


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


# -- all pass -----------------------------------------------------------------------------------


def test_all_pass_exits_0_after_one_completion_and_one_stream(
    doctor_env: Callable[..., None],
    gateway: FakeGateway,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    code, out, _ = run_doctor(capsys)

    assert code == 0, out
    rows = out.splitlines()
    assert rows[-1].startswith("OK: 0 failed")
    for title in ("settings", "API key", "base URL", "auth (GET /models)", "stream"):
        assert sum(f"  {title}  " in row for row in rows) == 1, title
    assert f"****{SENTINEL_KEY[-4:]}" in out
    calls = gateway.requests_for("gpt-4o-mini")
    assert [bool(call.body.get("stream")) for call in calls] == [False, True]  # no retries
    assert all(call.body["max_tokens"] == doctor.MAX_TOKENS for call in calls)
    assert all(call.headers["x-client-name"] == f"{CLIENT_NAME}/{__version__}" for call in calls)
    assert not list(tmp_path.glob("support-reports/*"))  # only failed runs leave a report


def test_all_pass_verdicts_in_json(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    document = doctor_json(capsys)

    assert document["ok"] is True
    assert [check["id"] for check in document["checks"]] == CHECK_IDS
    checks = checks_of(document)
    assert {check_id: check["status"] for check_id, check in checks.items()} == {
        "settings": "pass",
        "key": "pass",
        "env_file": "skip",  # not in a git work tree
        "key_in_git": "skip",
{%- if cookiecutter.caller_auth == "keys" %}
        "callers": "pass",
        "limits": "pass",  # no caller has limits
{%- endif %}
{%- if cookiecutter.framework != "script" %}
        "allowed_hosts": "warn",  # the default: loopback names only
{%- endif %}
{%- if cookiecutter.worker == "celery" %}
        "queue_url": "pass",
        "queue": "pass",
        "visibility": "pass",
        "workers": "warn",  # none running
{%- endif %}
        "base_url": "warn",  # plain http, but to loopback
        "auth": "pass",
        "model_listed": "pass",
        "completion": "pass",
        "stream": "pass",
        "openai_env": "warn",
    }
    assert "not inside a git work tree" in checks["env_file"]["detail"]
    assert "loopback" in checks["base_url"]["detail"]
    assert re.search(r"first token after \d+ ms, \d+ deltas", checks["stream"]["detail"])
    assert checks["stream"]["upstream_request_id"]
    assert (checks["completion"]["charge"], checks["auth"]["charge"]) == ("yes", None)
    assert "OPENAI_API_KEY, OPENAI_BASE_URL" in checks["openai_env"]["detail"]
    assert "decoy" not in json.dumps(document)  # names only, never values


def test_json_shape_of_a_failed_run(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(ALLTKN_MODEL="fake-error-quota")
    document = doctor_json(capsys)

    assert set(document) == {
        *("ok", "exit_code", "time", "duration_ms", "versions", "model", "gateway_host"),
        *("timeout_s", "key", "summary", "checks", "support_report"),
    }
    assert (document["ok"], document["exit_code"]) == (False, 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", document["time"])
    assert document["key"] == f"****{SENTINEL_KEY[-4:]}"
    assert document["versions"]["template"] == TEMPLATE_VERSION
    passed = {{ 6 if cookiecutter.caller_auth == "keys" else 4 }}{% if cookiecutter.worker == "celery" %} + 3  # the queue's rows as well{% endif %}
    warned = {{ 3 if cookiecutter.framework != "script" else 2 }}{% if cookiecutter.worker == "celery" %} + 1{% endif %}  # web: allowed_hosts as well{% if cookiecutter.worker == "celery" %}; no worker running{% endif %}
    assert document["summary"] == {"pass": passed, "warn": warned, "fail": 1, "skip": 3}
    for check in document["checks"]:
        assert set(check) == CHECK_FIELDS
        assert (check["duration_ms"] is None) == (check["status"] == "skip")
    assert Path(document["support_report"]).is_file()


# -- each failure: its verdict, hint and time bound ---------------------------------------------

# (settings, the one check that fails, its category, whether a charge is likely, its detail)
FAILURES = [
    pytest.param(
        {KEY_ENV_VAR: OTHER_KEY}, "auth", Category.AUTH, "no", "无效的令牌", id="wrong-key"
    ),
    pytest.param(
        {"ALLTKN_BASE_URL": "{root}/wrong/v1"},
        *("auth", Category.BAD_BASE_URL, "no", "Invalid URL"),
        id="wrong-base-path",
    ),
    pytest.param(
        {"ALLTKN_MODEL": "fake-error-503-model"},
        *("completion", Category.MODEL_NOT_FOUND, "no", "无可用渠道"),
        id="model-503-no-channel",
    ),
    pytest.param(
        {"ALLTKN_MODEL": "fake-error-quota"},
        *("completion", Category.QUOTA, "no", "用户额度不足"),
        id="no-balance",
    ),
    pytest.param(
        {"ALLTKN_MODEL": "fake-drop"},  # the transport's error says what failed
        *("completion", Category.CONNECTION, "no", r"Connection error\. \(\w+: .+\)"),
        id="connection-dropped",
    ),
    pytest.param(
        {"ALLTKN_BASE_URL": "http://127.0.0.1:{closed}/api/v1"},
        *("auth", Category.CONNECTION, "no", "^TCP: 127.0.0.1:.*refused"),
        id="closed-port",
    ),
    pytest.param(
        {"ALLTKN_BASE_URL": "https://nonexistent.invalid/api/v1"},
        *("auth", Category.CONNECTION, "no", "^DNS: nonexistent.invalid:443: "),
        id="unresolvable-host",
    ),
    pytest.param(
        {"ALLTKN_BASE_URL": "http://127.0.0.1:{silent}/api/v1"},
        *("auth", Category.TIMEOUT, "no", "^DNS and TCP work, but 127.0.0.1:.* did not answer"),
        id="host-never-answers",
    ),
    pytest.param(
        {"ALLTKN_BASE_URL": "https://127.0.0.1:{port}/api/v1"},
        *("auth", Category.CONNECTION, "no", "^TLS: 127.0.0.1:"),
        id="https-to-a-plain-http-port",
    ),
    pytest.param(
        {"ALLTKN_MODEL": "fake-stream-slow-start"},
        *("stream", Category.TIMEOUT, "possible", "error.timeout"),
        id="stream-first-token-too-late",
    ),
    pytest.param(
        {"ALLTKN_MODEL": "fake-stream-stall"},
        *("stream", Category.STREAM_INTERRUPTED, "possible", "error.stream_interrupted"),
        id="stream-stalls-after-first-token",
    ),
]


@pytest.mark.parametrize(("overrides", "failing", "category", "charge", "detail"), FAILURES)
def test_failure_verdict_hint_and_time_bound(
    doctor_env: Callable[..., None],
    gateway: FakeGateway,
    closed_port: int,
    silent_port: int,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, str],
    failing: str,
    category: Category,
    charge: str,
    detail: str,
) -> None:
    fill = {
        "root": gateway.base_url.removesuffix("/api/v1"),
        "closed": closed_port,
        "silent": silent_port,
        "port": gateway.port,
    }
    values = {name: value.format(**fill) for name, value in overrides.items()}
    doctor_env(ALLTKN_TIMEOUT_S=str(TIMEOUT_S), **values)

    started = time.monotonic()
    document = doctor_json(capsys)
    elapsed = time.monotonic() - started

    assert elapsed < 2 * TIMEOUT_S
    checks = checks_of(document)
    assert [c["id"] for c in document["checks"] if c["status"] == "fail"] == [failing]
    failed = checks[failing]
    assert (failed["category"], failed["charge"]) == (category.value, charge)
    assert re.search(detail, failed["detail"]), failed["detail"]
    if failing in ("completion", "stream") or not detail.startswith("^"):
        assert failed["hint"] == category_hint(category)  # a gateway answer: the taxonomy's
    else:  # the diagnosis' own advice
        assert "ALLTKN_BASE_URL" in failed["hint"] or "ALLTKN_TIMEOUT_S" in failed["hint"]
    if failing == "stream":  # the stream had opened: its headers gave the gateway's id
        assert re.fullmatch(r"\d{14}[0-9a-f]{16}", failed["upstream_request_id"])
    later = CHECK_IDS[CHECK_IDS.index(failing) + 1 : CHECK_IDS.index("stream") + 1]
    assert [checks[check_id]["status"] for check_id in later] == ["skip"] * len(later)


def test_wrong_key_text_output_names_the_failure_in_each_skip(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(**{KEY_ENV_VAR: OTHER_KEY})
    code, out, _ = run_doctor(capsys)

    assert code == 1
    assert "error[auth] 无效的令牌" in out
    assert f"hint: {category_hint(Category.AUTH)}" in out
    for title in ("model listed", "completion", "stream"):
        assert re.search(rf"SKIP  {re.escape(title)} .*needs the auth \(GET /models\) check", out)
    assert OTHER_KEY not in out
    assert f"****{OTHER_KEY[-4:]}" in out
    assert re.search(
        r"^Support report: .*support-reports/support-report-\d{8}T\d{6}Z\.txt", out, re.MULTILINE
    )


def test_gateway_text_prints_on_a_terminal_that_cannot_show_it(
    doctor_env: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    doctor_env(**{KEY_ENV_VAR: OTHER_KEY})
    written = io.BytesIO()
    terminal = io.TextIOWrapper(written, encoding="ascii")
    monkeypatch.setattr(sys, "stdout", terminal)
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)

    code = doctor.main(parser.parse_args([]))

    terminal.flush()
    assert code == 1
    assert "error[auth] \\u65e0\\u6548" in written.getvalue().decode("ascii")


def test_stream_failure_is_a_warning_while_streaming_is_switched_off(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(
        ALLTKN_MODEL="fake-stream-slow-start",
        ALLTKN_TIMEOUT_S=str(TIMEOUT_S),
        ALLTKN_STREAMING="off",
    )
    document = doctor_json(capsys)
    stream = checks_of(document)["stream"]

    assert document["exit_code"] == 0
    assert (stream["status"], stream["category"]) == ("warn", "timeout")
    assert "ALLTKN_STREAMING=on" in stream["hint"]


@pytest.mark.parametrize(
    ("overrides", "status", "detail", "hint"),
    [
        pytest.param(
            {"ALLTKN_FALLBACK_MODELS": "gpt-4o,gpt-9-turbo"},
            *("warn", "unlisted gpt-9-turbo", "ALLTKN_FALLBACK_MODELS"),
            id="unlisted-fallback",
        ),
        pytest.param(
            {"ALLTKN_MODEL": "gpt-4o-mni"},
            *("fail", "closest: gpt-4o-mini", "ALLTKN_MODEL"),
            id="unlisted-model-with-closest-names",
        ),
    ],
)
def test_model_and_fallbacks_must_be_listed(
    doctor_env: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, str],
    status: str,
    detail: str,
    hint: str,
) -> None:
    doctor_env(**overrides)
    listed = checks_of(doctor_json(capsys))["model_listed"]

    assert listed["status"] == status
    assert detail in listed["detail"]
    assert hint in listed["hint"]


# -- settings and the base URL: rows of the report, never an error[config] exit -------------------

SETTINGS_PROBLEMS = [
    pytest.param({KEY_ENV_VAR: None}, f"{KEY_ENV_VAR} is not set", id="missing-key"),
    pytest.param({KEY_ENV_VAR: "Bearer " + SENTINEL_KEY}, "contains spaces", id="bearer-key"),
    pytest.param({"ALLTKN_MAX_RETRIES": "many"}, "ALLTKN_MAX_RETRIES", id="bad-other-setting"),
    pytest.param(
        {"ALLTKN_BASE_URL": "api.alltkn.com/api/v1"},
        "ALLTKN_BASE_URL must start with https://",
        id="base-url-without-scheme",
    ),
]


@pytest.mark.parametrize(("overrides", "detail"), SETTINGS_PROBLEMS)
def test_settings_problems_are_a_failed_row_and_nothing_is_sent(
    doctor_env: Callable[..., None],
    gateway: FakeGateway,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, str | None],
    detail: str,
) -> None:
    doctor_env(**overrides)
    code, out, err = run_doctor(capsys)

    assert code == 1
    assert "error[config]" not in err
    assert re.search(rf"^FAIL  settings .*{re.escape(detail)}.*\(see \.env\.example\)", out, re.M)
    for title in ("API key", "base URL", "auth (GET /models)", "completion", "stream"):
        assert re.search(rf"^SKIP  {re.escape(title)} .*needs the settings check", out, re.M)
    assert out.count("FAIL  ") == 1
    assert not gateway.requests


def test_an_unreadable_env_file_is_a_failed_settings_row(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / ".env").write_bytes(b"LOG_LEVEL=\xff\xfe\n")
    settings = checks_of(doctor_json(capsys))["settings"]

    assert settings["status"] == "fail"
    assert ".env cannot be read: UnicodeDecodeError" in settings["detail"]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param("http://gateway.example.com/api/v1", "is plain http", id="http-not-loopback"),
        pytest.param("https://u:p@gateway.example.com/api/v1", "holds credentials", id="creds"),
        pytest.param("https://gateway.example.com/api/v1?x=1", "has a query", id="query"),
        pytest.param("https://gateway.example.com/api/v1/models", "names an endpoint", id="ep"),
    ],
)
def test_base_url_form_failures(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], url: str, problem: str
) -> None:
    """The settings refuse these (settings.base_url_problem, the rule the base URL row uses)."""
    doctor_env(ALLTKN_BASE_URL=url)
    document = doctor_json(capsys)
    checks = checks_of(document)

    assert checks["settings"]["status"] == "fail"
    assert f"ALLTKN_BASE_URL {problem}" in checks["settings"]["detail"]
    assert checks["base_url"]["status"] == checks["auth"]["status"] == "skip"  # nothing sent
    assert "u:p@" not in json.dumps(document)


def test_odd_key_shape_is_a_warning(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(**{KEY_ENV_VAR: "-".join(("gw", "live", "0123456789abcdefXYZ"))})
    key = checks_of(doctor_json(capsys))["key"]

    assert key["status"] == "warn"
    assert "sk- + 48 letters and digits" in key["detail"]
    assert "****fXYZ" in key["detail"]
    assert "0123456789" not in key["detail"]


# -- the way to the gateway ---------------------------------------------------------------------


def test_a_proxy_is_diagnosed_and_its_credentials_are_not_shown(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    password = "-".join(("proxy", "pass", "1234"))  # built here: no secret-shaped literal
    doctor_env(HTTP_PROXY=f"http://proxyuser:{password}@127.0.0.1:{closed_port}")
    document = doctor_json(capsys)
    auth = checks_of(document)["auth"]

    assert auth["category"] == "connection"  # the requests really go through the proxy
    assert auth["detail"].startswith(f"TCP: the proxy 127.0.0.1:{closed_port}: ")
    assert password not in json.dumps(document)


@pytest.fixture
def tls_port(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """(port, certificate) of a loopback TLS server with a self-signed certificate for
    127.0.0.1; it completes handshakes and hangs up."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (it makes the test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(connection, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1]), cert
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_tls_diagnosis_names_an_untrusted_certificate(
    doctor_env: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    tls_port: tuple[int, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, cert = tls_port
    doctor_env(ALLTKN_BASE_URL=f"https://127.0.0.1:{port}/api/v1", ALLTKN_TIMEOUT_S="5")

    untrusted = checks_of(doctor_json(capsys))["auth"]
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now this host trusts it
    trusted = checks_of(doctor_json(capsys))["auth"]

    assert untrusted["detail"].startswith(f"TLS: 127.0.0.1:{port}: self-signed certificate")
    assert "SSL_CERT_FILE" in untrusted["hint"]
    assert trusted["detail"].startswith(f"DNS, TCP and TLS work, but 127.0.0.1:{port}")


# -- git ----------------------------------------------------------------------------------------


def git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True, timeout=30)


GIT_CASES = [
    pytest.param(True, True, ("fail", "fail"), id="env-and-key-tracked"),
    pytest.param(False, True, ("pass", "pass"), id="env-ignored"),
    pytest.param(False, False, ("warn", "pass"), id="env-not-ignored"),
]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize(("tracked", "gitignore", "statuses"), GIT_CASES)
def test_env_file_and_key_in_git(
    doctor_env: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tracked: bool,
    gitignore: bool,
    statuses: tuple[str, str],
) -> None:
    doctor_env(**{KEY_ENV_VAR: None})  # read from .env
    git("init", "-q")
    if gitignore:  # the project's own
        shutil.copy(Path(__file__).parents[1] / ".gitignore", tmp_path / ".gitignore")
    (tmp_path / ".env").write_text(f"{KEY_ENV_VAR}={SENTINEL_KEY}\n")
    (tmp_path / "notes.md").write_text(f"# Notes\n\nkey: {SENTINEL_KEY}\n")
    if tracked:
        git("add", "-f", ".env", "notes.md")

    code, out, _ = run_doctor(capsys)

    assert "from .env" in out
    assert re.search(rf"{statuses[0].upper()}  \.env not in git ", out)
    assert re.search(rf"{statuses[1].upper()}  key not in git ", out)
    if tracked:
        assert "git tracks .env" in out
        assert "the key is in tracked files, at 2 place(s): .env:1, notes.md:3" in out
        reports = list(tmp_path.glob("support-reports/support-report-*.txt"))
        assert len(reports) == 1
        ignored = subprocess.run(["git", "check-ignore", "-q", str(reports[0])], check=False)
        assert ignored.returncode == 0  # the project's .gitignore keeps reports out of commits
    else:
        assert code == 0


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_fake_gateways_documented_key_is_no_leak(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The README's try-it key, committed in the docs and the Makefile, passes the git check;
    any other key in the same files fails it."""
    doctor_env(**{KEY_ENV_VAR: doctor.FAKE_GATEWAY_KEY})
    git("init", "-q")
    (tmp_path / "README.md").write_text(f"make try sets {doctor.FAKE_GATEWAY_KEY}\n")
    git("add", "README.md")

    _, out, _ = run_doctor(capsys)  # (this fake takes one key only: auth fails)

    assert re.search(r"PASS  key not in git .*the fake gateway's documented key", out)
    assert re.search(r"WARN  API key ", out)  # not shaped like a gateway key, as it says

    doctor_env(**{KEY_ENV_VAR: doctor.FAKE_GATEWAY_KEY + "-not"})
    (tmp_path / "README.md").write_text(f"{doctor.FAKE_GATEWAY_KEY}-not\n")
    git("add", "README.md")
    _, out, _ = run_doctor(capsys)
    assert "FAIL  key not in git" in out


# -- the support report -------------------------------------------------------------------------


def test_support_report_has_the_evidence_and_no_key(
    doctor_env: Callable[..., None],
    gateway: FakeGateway,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    doctor_env(ALLTKN_MODEL="fake-error-quota")
    code, out, err = run_doctor(capsys, "--support")

    assert code == 1
    request_id = REQUEST_ID.findall(out)[0]  # the gateway's id, as it wrote it in its message
    assert field(out, "Gateway request id") == request_id
    assert (
        field(out, "Error text") == f"用户额度不足, 剩余额度: $0.000000 (request id: {request_id})"
    )
    assert field(out, "Category") == "quota"
    assert field(out, "Charge likely").startswith("no: ")
    assert re.fullmatch(r"[0-9a-f]{32} \(sent as X-Request-ID\)", field(out, "Our request id"))
    assert field(out, "Client").startswith(f"{CLIENT_NAME} {__version__} ")
    assert field(out, "Template version") == TEMPLATE_VERSION
    assert field(out, "Python").startswith(platform.python_version())
    assert field(out, "openai") == metadata.version("openai")
    assert field(out, "Model") == "fake-error-quota"
    assert field(out, "Gateway host") == f"127.0.0.1:{gateway.port} (http)"
    assert field(out, "Key").startswith(f"{KEY_ENV_VAR} = ****{SENTINEL_KEY[-4:]} ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", field(out, "Time"))
    framework = field(out, "Framework")
    for name in support.FRAMEWORKS:
        assert f"{name} {metadata.version(name)}" in framework
    if not support.FRAMEWORKS:
        assert framework.startswith("none")
    # The same report is written to a file, whose name is given on stderr.
    saved = list(tmp_path.glob("support-reports/support-report-*.txt"))
    assert len(saved) == 1
    assert re.fullmatch(r"support-report-\d{8}T\d{6}Z\.txt", saved[0].name)
    assert saved[0].read_text(encoding="utf-8") + "\n" == out
    assert str(saved[0].resolve()) in err
    assert_no_key(saved[0].read_text(encoding="utf-8"))


def test_support_report_of_a_passing_run_writes_no_file(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run_doctor(capsys, "--support")

    assert code == 0
    assert "Every check passed." in out
    assert not list(tmp_path.glob("support-reports/*"))


def test_support_report_of_a_local_failure_says_nothing_reached_the_gateway(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(**{KEY_ENV_VAR: None})
    _, out, _ = run_doctor(capsys, "--support")

    assert field(out, "Key") == f"{KEY_ENV_VAR} = not set"
    assert field(out, "Category").startswith("none: checked on this host")


def test_unwritable_directory_still_reports(
    doctor_env: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doctor_env(**{KEY_ENV_VAR: None})
    monkeypatch.setattr(support, "REPORTS_DIR", Path("missing-dir/support-reports"))
    code, out, err = run_doctor(capsys)

    assert code == 1
    assert "FAIL  settings" in out
    assert "could not write the support report" in err
    assert "doctor --support" in err


def test_only_the_newest_support_reports_are_kept(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doctor_env(**{KEY_ENV_VAR: None})
    saved = []
    for _ in range(support.KEEP_REPORTS + 2):
        code, _, err = run_doctor(capsys, "--support")
        assert code == 1
        saved.append(Path(err.split("Support report: ", 1)[1].split(" (paste", 1)[0]))

    kept = sorted((tmp_path / "support-reports").iterdir())
    assert sorted(saved[-support.KEEP_REPORTS :]) == kept
    assert len(kept) == support.KEEP_REPORTS == 5


def test_json_and_support_together_is_a_usage_error() -> None:
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)

    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--json", "--support"])

    assert exited.value.code == 2


def test_interrupted_run_exits_130(
    doctor_env: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(doctor, "_Doctor", interrupted)
    from {{ cookiecutter.package_name }} import cli  # it turns Ctrl-C into exit 130

    assert cli.main(["doctor"]) == 130


# -- as a user runs it --------------------------------------------------------------------------


def doctor_process(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    # The package as this test imported it, also when it is not installed (PYTHONPATH=src).
    source = str(Path(doctor.__file__).parents[1])
    path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert_no_key(done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done, time.monotonic() - started


def test_subprocess_unreachable_host_fails_within_twice_the_timeout(
    doctor_env: Callable[..., None], silent_port: int
) -> None:
    doctor_env(
        ALLTKN_BASE_URL=f"http://127.0.0.1:{silent_port}/api/v1",
        ALLTKN_TIMEOUT_S=str(TIMEOUT_S),
    )
    done, elapsed = doctor_process("--json")
    document = json.loads(done.stdout)

    assert done.returncode == document["exit_code"] == 1
    assert "did not answer" in checks_of(document)["auth"]["detail"]
    assert document["duration_ms"] < 2 * TIMEOUT_S * 1000
    assert f"Support report: {document['support_report']} " in done.stderr
    # Nothing holds the process at exit (the interpreter's start and imports come on top).
    assert elapsed < 2 * TIMEOUT_S + 8
