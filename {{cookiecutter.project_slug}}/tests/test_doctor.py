"""`doctor` and its support report, run live against the fake gateway on loopback.

Through the command line in process (`cli.main`) and as a real `python -m` subprocess: the
verdict and hint of every failure a team meets at launch, the time bound (2 x the timeout) on
hosts that never answer and streams that stall, and a support report that carries the gateway's
own words and request id but never the key.
"""

from __future__ import annotations

import contextlib
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

from {{ cookiecutter.package_name }} import TEMPLATE_VERSION, __version__, cli, support
from {{ cookiecutter.package_name }}.client import CLIENT_NAME
from {{ cookiecutter.package_name }}.errors import Category, GatewayError
from {{ cookiecutter.package_name }}.settings import API_KEY_ENV, ENV_NAMES

from .conftest import SENTINEL_KEY
from .fake_gateway import MODELS, FakeGateway

CHECK_IDS = [
    "key",
    "env_file",
    "key_in_git",
    "settings",
    "base_url",
    "dns",
    "tcp",
    "tls",
    "auth",
    "model_listed",
    "completion",
    "stream",
    "openai_env",
]
CHECK_FIELDS = {
    "id",
    "title",
    "status",
    "duration_ms",
    "detail",
    "hint",
    "category",
    "error",
    "request_id",
    "upstream_request_id",
    "charge",
    "charge_reason",
}
# Scenario models the fake lists in GET /models, so each failure below is its own.
LISTED = (*MODELS, "fake-error-quota", "fake-error-503-model", "fake-stream-slow-start")
LISTED += ("fake-stream-stall", "fake-drop")
OTHER_KEY = "sk-" + "Q" * 48  # well-formed, but not the key the fake accepts
KEY_PIECES = (SENTINEL_KEY, SENTINEL_KEY[:20], SENTINEL_KEY[3:23], SENTINEL_KEY[-12:])
PROXY_VARIABLES = [
    f"{name}{suffix}" for name in ("http", "https", "all", "no") for suffix in ("_proxy", "_PROXY")
]
REQUEST_ID = re.compile(r"\(request id: ([0-9a-f]+)\)")


@pytest.fixture(scope="module")
def listing_gateway() -> Iterator[FakeGateway]:
    with FakeGateway(api_key=SENTINEL_KEY, models=LISTED, hang_seconds=5) as fake:
        yield fake


@pytest.fixture
def doctor_env(
    listing_gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., None]:
    """Point the settings at the fake, from an empty directory outside any git work tree;
    call the result with overrides (`None` unsets a variable)."""
    listing_gateway.reset()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    base = {
        API_KEY_ENV: SENTINEL_KEY,
        "ALLTKN_BASE_URL": listing_gateway.base_url,
        "ALLTKN_MODEL": "gpt-4o-mini",
        "ALLTKN_TIMEOUT_S": "10",
        "ALLTKN_MAX_RETRIES": "0",
        "LOG_LEVEL": "INFO",
        # Decoys: the doctor must name them, never use them.
        "OPENAI_API_KEY": "decoy-openai-key-value",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/never-used",
    }

    for proxy in PROXY_VARIABLES:  # the tests talk to loopback directly
        monkeypatch.delenv(proxy, raising=False)
    for name in ENV_NAMES.values():  # nor may a switch set in the shell change the verdicts
        monkeypatch.delenv(name, raising=False)

    def apply(**overrides: str | None) -> None:
        for name, value in {**base, **overrides}.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)

    apply()
    return apply


def run_doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["doctor", *args])
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


def test_all_pass_exits_0_and_makes_one_completion_and_one_stream(
    doctor_env: Callable[..., None],
    listing_gateway: FakeGateway,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    code, out, _ = run_doctor(capsys)

    assert code == 0, out
    rows = out.splitlines()
    assert rows[-1].startswith("OK: 0 failed")
    for title in ("API key", "base URL", "DNS", "TCP", "TLS", "auth (GET /models)", "stream"):
        assert sum(f"  {title}  " in row for row in rows) == 1, title
    assert f"****{SENTINEL_KEY[-4:]}" in out
    calls = listing_gateway.requests_for("gpt-4o-mini")
    assert [bool(call.body.get("stream")) for call in calls] == [False, True]
    assert all(call.headers["x-client-name"] == f"{CLIENT_NAME}/{__version__}" for call in calls)
    assert not list(tmp_path.glob("support-report-*"))  # only failed runs leave a report


def test_all_pass_verdicts_in_json(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    document = doctor_json(capsys)

    assert document["ok"] is True
    checks = checks_of(document)
    assert [check["id"] for check in document["checks"]] == CHECK_IDS
    assert {check_id: c["status"] for check_id, c in checks.items()} == {
        "key": "pass",
        "env_file": "skip",  # not in a git work tree
        "key_in_git": "skip",
        "settings": "pass",
        "base_url": "warn",  # plain http, but to loopback
        "dns": "pass",
        "tcp": "pass",
        "tls": "skip",  # plain http
        "auth": "pass",
        "model_listed": "pass",
        "completion": "pass",
        "stream": "pass",
        "openai_env": "warn",
    }
    assert "not inside a git work tree" in checks["env_file"]["detail"]
    assert "loopback" in checks["base_url"]["detail"]
    assert re.search(r"first token after \d+ ms", checks["stream"]["detail"])
    assert checks["stream"]["upstream_request_id"]
    assert checks["completion"]["charge"] == "yes"
    openai_env = checks["openai_env"]["detail"]
    assert "OPENAI_API_KEY" in openai_env
    assert "OPENAI_BASE_URL" in openai_env
    assert "decoy" not in json.dumps(document)  # names only, never values


def test_json_shape(doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> None:
    doctor_env(ALLTKN_MODEL="fake-error-quota")
    document = doctor_json(capsys)

    assert set(document) == {
        "ok",
        "exit_code",
        "time",
        "duration_ms",
        "versions",
        "model",
        "gateway_host",
        "timeout_s",
        "key",
        "summary",
        "checks",
        "support_report",
    }
    assert document["ok"] is False
    assert document["exit_code"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", document["time"])
    assert document["key"] == f"****{SENTINEL_KEY[-4:]}"
    assert document["versions"]["template"] == TEMPLATE_VERSION
    assert set(document["summary"]) == {"pass", "warn", "fail", "skip"}
    assert sum(document["summary"].values()) == len(CHECK_IDS)
    for check in document["checks"]:
        assert set(check) == CHECK_FIELDS
        assert check["status"] in {"pass", "warn", "fail", "skip"}
        assert (check["duration_ms"] is None) == (check["status"] == "skip")
    assert Path(document["support_report"]).is_file()


# -- each failure: its verdict and hint -------------------------------------------------------

TIMEOUT_S = 2.0


def category_hint(category: Category) -> str:
    return GatewayError(category).hint


# (settings, the one check that fails, its category, whether a charge is likely)
FAILURES = [
    pytest.param({API_KEY_ENV: OTHER_KEY}, "auth", Category.AUTH, "no", id="wrong-key"),
    pytest.param(
        {"ALLTKN_BASE_URL": "{root}/wrong/v1"},
        "auth",
        Category.BAD_BASE_URL,
        "no",
        id="wrong-base-path",
    ),
    pytest.param(
        {"ALLTKN_MODEL": "fake-error-503-model"},
        "completion",
        Category.MODEL_NOT_FOUND,
        "no",
        id="model-503-no-channel",
    ),
    pytest.param(
        {"ALLTKN_MODEL": "fake-error-quota"}, "completion", Category.QUOTA, "no", id="no-balance"
    ),
    pytest.param(
        {"ALLTKN_BASE_URL": "http://127.0.0.1:{closed}/api/v1"},
        "tcp",
        Category.CONNECTION,
        "no",
        id="closed-port",
    ),
    pytest.param(
        {"ALLTKN_BASE_URL": "https://nonexistent.invalid/api/v1"},
        "dns",
        Category.CONNECTION,
        "no",
        id="unresolvable-host",
    ),
    pytest.param(
        {"ALLTKN_BASE_URL": "http://127.0.0.1:{silent}/api/v1"},
        "auth",
        Category.TIMEOUT,
        "no",
        id="host-never-answers",
    ),
    pytest.param(
        {"ALLTKN_BASE_URL": "https://127.0.0.1:{port}/api/v1"},
        "tls",
        Category.CONNECTION,
        "no",
        id="https-to-a-plain-http-port",
    ),
    pytest.param(
        {"ALLTKN_MODEL": "fake-stream-slow-start"},
        "stream",
        Category.TIMEOUT,
        "possible",
        id="stream-first-token-too-late",
    ),
    pytest.param(
        {"ALLTKN_MODEL": "fake-stream-stall"},
        "stream",
        Category.STREAM_INTERRUPTED,
        "possible",
        id="stream-stalls-after-first-token",
    ),
]


@pytest.mark.parametrize(("overrides", "failing", "category", "charge"), FAILURES)
def test_failure_verdict_hint_and_time_bound(
    doctor_env: Callable[..., None],
    listing_gateway: FakeGateway,
    closed_port: int,
    silent_port: int,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, str],
    failing: str,
    category: Category,
    charge: str,
) -> None:
    fill = {
        "root": listing_gateway.base_url.removesuffix("/api/v1"),
        "closed": closed_port,
        "silent": silent_port,
        "port": listing_gateway.port,
    }
    doctor_env(
        ALLTKN_TIMEOUT_S=str(TIMEOUT_S), **{k: v.format(**fill) for k, v in overrides.items()}
    )

    started = time.monotonic()
    document = doctor_json(capsys)
    elapsed = time.monotonic() - started

    assert elapsed < 2 * TIMEOUT_S
    checks = checks_of(document)
    assert [c["id"] for c in document["checks"] if c["status"] == "fail"] == [failing]
    failed = checks[failing]
    assert failed["category"] == category.value
    assert failed["charge"] == charge
    assert failed["hint"]
    if failing in ("auth", "completion", "stream"):  # a gateway answer: the taxonomy's hint
        assert failed["hint"] == category_hint(category)
    later = CHECK_IDS[CHECK_IDS.index(failing) + 1 : CHECK_IDS.index("stream") + 1]
    assert [checks[check_id]["status"] for check_id in later] == ["skip"] * len(later)
    assert document["exit_code"] == 1


@pytest.mark.parametrize("model", ["fake-stream-slow-start", "fake-stream-stall"], ids=str)
def test_a_stream_out_of_time_keeps_the_gateway_request_id(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], model: str
) -> None:
    doctor_env(ALLTKN_MODEL=model, ALLTKN_TIMEOUT_S=str(TIMEOUT_S))
    code, out, _ = run_doctor(capsys, "--support")

    assert code == 1
    assert field(out, "Category") in ("timeout", "stream_interrupted")
    # The stream had opened: its headers carried the gateway's id (one-api style).
    assert re.fullmatch(r"\d{14}[0-9a-f]{16}", field(out, "Gateway request id"))


def test_a_dropped_connection_names_the_transport_error_in_every_check(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(ALLTKN_MODEL="fake-drop")
    completion = checks_of(doctor_json(capsys))["completion"]
    # The SDK's "Connection error." alone would not say what failed; the transport's error does.
    assert completion["category"] == "connection"
    assert re.search(r"Connection error\. \(\w+: .+\)", completion["detail"]), completion


def test_wrong_key_skips_what_needs_auth(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(**{API_KEY_ENV: OTHER_KEY})
    code, out, _ = run_doctor(capsys)

    assert code == 1
    assert "error[auth] 无效的令牌" in out
    assert f"hint: {category_hint(Category.AUTH)}" in out
    for title in ("model listed", "completion", "stream"):
        assert re.search(rf"SKIP  {re.escape(title)} .*needs the auth \(GET /models\) check", out)
    assert OTHER_KEY not in out
    assert f"****{OTHER_KEY[-4:]}" in out


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
    assert stream["status"] == "warn"
    assert stream["category"] == "timeout"
    assert "ALLTKN_STREAMING=on" in stream["hint"]


def test_fallback_models_must_be_listed(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(ALLTKN_FALLBACK_MODELS="gpt-4o,gpt-9-turbo")
    listed = checks_of(doctor_json(capsys))["model_listed"]

    assert listed["status"] == "warn"
    assert "unlisted gpt-9-turbo" in listed["detail"]
    assert "ALLTKN_FALLBACK_MODELS" in listed["hint"]


def test_unlisted_model_fails_with_closest_names(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(ALLTKN_MODEL="gpt-4o-mni")
    checks = checks_of(doctor_json(capsys))

    listed = checks["model_listed"]
    assert listed["status"] == "fail"
    assert listed["category"] == "model_not_found"
    assert "closest: gpt-4o-mini" in listed["detail"]
    assert "ALLTKN_MODEL" in listed["hint"]


def test_missing_key_is_a_failed_row_not_a_config_exit(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(**{API_KEY_ENV: None})
    code, out, err = run_doctor(capsys)

    assert code == 1
    assert re.search(rf"FAIL  API key .*{API_KEY_ENV} is not set", out)
    assert ".env.example" in out
    assert "config error" not in err
    assert re.search(r"SKIP  auth \(GET /models\) .*needs the API key check", out)
    assert re.search(r"PASS  TCP ", out)  # the way to the gateway is still checked


def test_malformed_base_url_fails_and_skips_the_network(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(ALLTKN_BASE_URL="api.alltkn.com/api/v1")
    checks = checks_of(doctor_json(capsys))

    assert checks["base_url"]["status"] == "fail"
    assert "must start with https://" in checks["base_url"]["detail"]
    assert "ALLTKN_BASE_URL" in checks["base_url"]["hint"]
    for check_id in ("dns", "tcp", "tls", "auth", "completion", "stream"):
        assert checks[check_id]["status"] == "skip"
        assert "base URL" in checks[check_id]["detail"]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param("http://gateway.example.com/api/v1", "clear text", id="http-not-loopback"),
        pytest.param("https://u:p@gateway.example.com/api/v1", "credentials", id="credentials"),
        pytest.param("https://gateway.example.com/api/v1?x=1", "query", id="query"),
        pytest.param("https://gateway.example.com/api/v1/models", "endpoint", id="endpoint"),
    ],
)
def test_base_url_form_failures(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], url: str, problem: str
) -> None:
    doctor_env(ALLTKN_BASE_URL=url)
    document = doctor_json(capsys)
    checks = checks_of(document)

    assert checks["base_url"]["status"] == "fail"
    assert problem in checks["base_url"]["detail"]
    assert checks["dns"]["status"] == "skip"  # nothing is sent anywhere
    assert "u:p@" not in json.dumps(document)


def test_invalid_other_setting_fails_its_row(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(ALLTKN_MAX_RETRIES="many")
    checks = checks_of(doctor_json(capsys))

    assert checks["settings"]["status"] == "fail"
    assert "ALLTKN_MAX_RETRIES" in checks["settings"]["detail"]
    assert checks["key"]["status"] == "pass"
    assert checks["auth"]["status"] == "skip"


def test_odd_key_shape_is_a_warning(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(**{API_KEY_ENV: "-".join(("gw", "live", "0123456789abcdefXYZ"))})
    key = checks_of(doctor_json(capsys))["key"]

    assert key["status"] == "warn"
    assert "sk- + 48 letters and digits" in key["detail"]
    assert "****fXYZ" in key["detail"]
    assert "0123456789" not in key["detail"]


def test_a_proxy_is_named_and_its_credentials_are_not(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    password = "-".join(("proxy", "pass", "1234"))  # built here: no secret-shaped literal
    doctor_env(HTTP_PROXY=f"http://proxyuser:{password}@127.0.0.1:{closed_port}")
    document = doctor_json(capsys)
    checks = checks_of(document)

    for check_id in ("dns", "tcp"):  # a direct connection would prove nothing
        assert checks[check_id]["status"] == "skip"
        assert f"proxy 127.0.0.1:{closed_port}" in checks[check_id]["detail"]
    assert checks["auth"]["status"] == "fail"  # the requests really go through the proxy
    assert checks["auth"]["category"] == "connection"
    assert "ConnectError" in checks["auth"]["detail"]
    assert password not in json.dumps(document)


@pytest.fixture
def tls_port(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """(port, certificate) of a loopback TLS server whose self-signed certificate for
    127.0.0.1 expires in 2 days; it completes handshakes and hangs up."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (it makes the test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
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


def test_tls_certificate_checks(
    doctor_env: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    tls_port: tuple[int, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, cert = tls_port
    doctor_env(ALLTKN_BASE_URL=f"https://127.0.0.1:{port}/api/v1", ALLTKN_TIMEOUT_S="5")

    untrusted = checks_of(doctor_json(capsys))["tls"]
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now this host trusts it
    trusted = checks_of(doctor_json(capsys))["tls"]

    assert untrusted["status"] == "fail"
    assert "is not trusted" in untrusted["detail"]
    assert "CA certificates" in untrusted["hint"]
    assert trusted["status"] == "warn"
    assert re.search(r"TLSv1\.[23], certificate valid until .* \([12] days\)", trusted["detail"])
    assert "expires soon" in trusted["hint"]


# -- git ----------------------------------------------------------------------------------------

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True, timeout=30)


@needs_git
def test_tracked_env_file_and_key_in_tracked_files_fail(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doctor_env(**{API_KEY_ENV: None})
    git("init", "-q")
    shutil.copy(Path(__file__).parents[1] / ".gitignore", tmp_path / ".gitignore")
    (tmp_path / ".env").write_text(f"{API_KEY_ENV}={SENTINEL_KEY}\n")
    (tmp_path / "notes.md").write_text(f"# Notes\n\nkey: {SENTINEL_KEY}\n")
    git("add", "-f", ".env", "notes.md", ".gitignore")

    code, out, _ = run_doctor(capsys)

    assert code == 1
    assert re.search(r"FAIL  \.env not in git .*git tracks \.env", out)
    assert re.search(r"FAIL  key not in git .*in 2 tracked file\(s\): \.env:1, notes\.md:3", out)
    assert "from .env" in out  # the key itself was read from the file
    reports = list(tmp_path.glob("support-report-*.txt"))
    assert len(reports) == 1
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", reports[0].name], check=False, timeout=30
    )
    assert ignored.returncode == 0  # the generated .gitignore keeps reports out of commits


@needs_git
def test_ignored_env_file_passes(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    git("init", "-q")
    shutil.copy(Path(__file__).parents[1] / ".gitignore", tmp_path / ".gitignore")
    (tmp_path / ".env").write_text(f"{API_KEY_ENV}={SENTINEL_KEY}\n")
    git("add", ".gitignore")

    checks = checks_of(doctor_json(capsys))

    assert checks["env_file"]["status"] == "pass"
    assert checks["key_in_git"]["status"] == "pass"


@needs_git
def test_env_file_that_git_does_not_ignore_is_a_warning(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    git("init", "-q")
    (tmp_path / ".env").write_text("LOG_LEVEL=INFO\n")

    checks = checks_of(doctor_json(capsys))

    assert checks["env_file"]["status"] == "warn"
    assert ".gitignore" in checks["env_file"]["hint"]


# -- the support report -------------------------------------------------------------------------


def test_support_report_has_the_evidence_and_no_key(
    doctor_env: Callable[..., None],
    listing_gateway: FakeGateway,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    doctor_env(ALLTKN_MODEL="fake-error-quota")
    code, out, err = run_doctor(capsys, "--support")

    assert code == 1
    request_ids = REQUEST_ID.findall(out)
    assert request_ids  # the gateway's id, as it wrote it into its message
    request_id = request_ids[0]
    assert field(out, "Gateway request id") == request_id
    verbatim = f"用户额度不足, 剩余额度: $0.000000 (request id: {request_id})"
    assert field(out, "Error text") == verbatim
    assert field(out, "Category") == "quota"
    assert field(out, "Charge likely").startswith("no: ")
    assert re.fullmatch(r"[0-9a-f]{32} \(sent as X-Request-ID\)", field(out, "Our request id"))
    assert field(out, "Client").startswith(f"{CLIENT_NAME} {__version__} ")
    assert field(out, "Template version") == TEMPLATE_VERSION
    assert field(out, "Python").startswith(platform.python_version())
    assert field(out, "openai") == metadata.version("openai")
    assert field(out, "Model") == "fake-error-quota"
    assert field(out, "Gateway host") == f"127.0.0.1:{listing_gateway.port} (http)"
    assert field(out, "Key").startswith(f"{API_KEY_ENV} = ****{SENTINEL_KEY[-4:]} ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", field(out, "Time"))
    framework = field(out, "Framework")
    for name in support.FRAMEWORK_DISTRIBUTIONS:
        assert f"{name} {metadata.version(name)}" in framework
    if not support.FRAMEWORK_DISTRIBUTIONS:
        assert framework.startswith("none")
    # The same report is written to a file, whose name is given on stderr.
    saved = list(tmp_path.glob("support-report-*.txt"))
    assert len(saved) == 1
    assert re.fullmatch(r"support-report-\d{8}T\d{6}Z\.txt", saved[0].name)
    assert saved[0].read_text(encoding="utf-8") + "\n" == out
    assert str(saved[0].resolve()) in err
    assert_no_key(saved[0].read_text(encoding="utf-8"))


def test_support_report_for_a_passing_run(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run_doctor(capsys, "--support")

    assert code == 0
    assert "Every check passed." in out
    assert not list(tmp_path.glob("support-report-*"))


def test_support_report_of_a_local_failure_says_nothing_reached_the_gateway(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_env(**{API_KEY_ENV: None})
    _, out, _ = run_doctor(capsys, "--support")

    assert field(out, "Key").startswith(f"{API_KEY_ENV} = not set")
    assert field(out, "Category").startswith("none: checked on this host")


def test_unwritable_directory_still_reports(
    doctor_env: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doctor_env(**{API_KEY_ENV: None})
    monkeypatch.setattr(support, "REPORT_PREFIX", "missing-dir/support-report-")
    code, out, err = run_doctor(capsys)

    assert code == 1
    assert "FAIL  API key" in out
    assert "could not write the support report" in err
    assert "doctor --support" in err


def test_json_and_support_together_is_a_usage_error(
    doctor_env: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["doctor", "--json", "--support"])

    assert exited.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


# -- as a user runs it --------------------------------------------------------------------------


def doctor_process(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    # The package as this test imported it, also when it is not installed (PYTHONPATH=src).
    source = str(Path(cli.__file__).parents[1])
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


def test_subprocess_all_pass(doctor_env: Callable[..., None]) -> None:
    done, _ = doctor_process("--json")

    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["ok"] is True


def test_subprocess_unreachable_host_fails_within_twice_the_timeout(
    doctor_env: Callable[..., None], silent_port: int
) -> None:
    doctor_env(
        ALLTKN_BASE_URL=f"http://127.0.0.1:{silent_port}/api/v1",
        ALLTKN_TIMEOUT_S=str(TIMEOUT_S),
    )
    done, elapsed = doctor_process()

    assert done.returncode == 1
    assert re.search(r"FAIL  auth \(GET /models\) .*error\[timeout\]", done.stdout)
    assert f"hint: {category_hint(Category.TIMEOUT)}" in done.stdout
    assert "Support report: " in done.stdout
    # The interpreter's start and imports come on top of the doctor's own 2 x bound.
    assert elapsed < 2 * TIMEOUT_S + 3
