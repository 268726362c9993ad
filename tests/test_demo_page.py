"""The web variants' demo page, in a real browser: Debian's Chromium driven by Playwright.

The page must render the answer as it streams in, show failures by category, and never hold
or receive the key. With caller keys (the default) it asks for one when the service answers 401
and keeps it in the tab's sessionStorage only; with caller_auth=none it never asks. Skipped,
with the reason, where Chromium or Playwright is not installed (.ci/run installs both).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CHROMIUM, CHROMIUM_FLAGS

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

KEY = "sk-" + "".join(chr(ord("a") + (i * 7) % 26) for i in range(48))  # built, not committed
KEY_ITEM = "alltkn-caller-key"  # the page's sessionStorage item
WRONG_CALLER_KEY = "ck_" + "x" * 43  # well-formed, unknown to the service
COMMANDS = {
    "fastapi": ["-m", "uvicorn", "alltkn_service.app:app", "--port"],
    "flask": ["-m", "gunicorn", "-c", "gunicorn.conf.py", "--workers", "1", "--bind"],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


@contextmanager
def running(command: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass(frozen=True)
class Service:
    url: str
    caller_key: str | None  # None: the bake takes no caller keys (caller_auth=none)


# (framework, caller_auth) of each bake; the caller-key tests (`keyed`) run on the first two.
BAKES = [
    pytest.param(("fastapi", "keys"), id="fastapi"),
    pytest.param(("flask", "keys"), id="flask"),
    pytest.param(("fastapi", "none"), id="fastapi-no-caller-keys"),
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "service" in metafunc.fixturenames:
        bakes = BAKES[:2] if "keyed" in metafunc.fixturenames else BAKES
        metafunc.parametrize("service", bakes, indirect=True, scope="module")


@pytest.fixture(scope="module")
def service(request: pytest.FixtureRequest, cookies_session: Any) -> Iterator[Service]:
    framework, caller_auth = request.param
    result = cookies_session.bake(
        extra_context={"framework": framework, "caller_auth": caller_auth}
    )
    assert result.exit_code == 0, result.exception
    project = Path(str(result.project_path))
    source = {**os.environ, "PYTHONPATH": str(project / "src")}
    caller_key = None
    if caller_auth == "keys":  # one caller, as the README says: `keys create NAME`
        created = subprocess.run(
            [sys.executable, "-m", "alltkn_service", "keys", "create", "demo"],
            cwd=project, env=source, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        caller_key = created.stdout.strip()
        assert caller_key.startswith("ck_"), created.stderr
    fake = [
        sys.executable,
        str(project / "tests" / "fake_gateway.py"),
        "--api-key",
        KEY,
        "--first-token-delay",
        "0.2",
        "--delta-interval",
        "0.15",
        "--deltas",
        "12",
    ]
    with running(fake, project, dict(os.environ)) as gateway:
        assert gateway.stdout is not None
        base_url = gateway.stdout.readline().strip().removeprefix("base_url=")
        port = free_port()
        target = f"127.0.0.1:{port}" if framework == "flask" else str(port)
        env = {
            **source,
            "ALLTKN_API_KEY": KEY,
            "ALLTKN_BASE_URL": base_url,
            "ALLTKN_MAX_RETRIES": "0",
            "ALLTKN_ALLOWED_MODELS": "*",  # the fake's scenario models
            "ALLTKN_DEV_UI": "on",  # the page is a development surface, off by default
        }
        command = [sys.executable, *COMMANDS[framework], target]
        if framework == "flask":
            command.append("alltkn_service.app:app")
        with running(command, project, env):
            url = f"http://127.0.0.1:{port}"
            wait_for(url + "/healthz")
            yield Service(url, caller_key)


@pytest.fixture
def page(service: Service) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
        )
        try:
            yield browser.new_context().new_page()  # a context: a test may open another tab
        finally:
            browser.close()


def received_bodies(page: Any) -> list[str]:
    bodies: list[str] = []
    page.on(
        "response",
        lambda response: bodies.append(
            f"{response.url} {response.all_headers()} {response.text()}"
        ),
    )
    return bodies


def sent_authorizations(page: Any) -> list[str | None]:
    """The Authorization header of each chat request the page sends."""
    sent: list[str | None] = []

    def seen(request: Any) -> None:
        if "/v1/chat" in request.url:
            sent.append(request.headers.get("authorization"))

    page.on("request", seen)
    return sent


def ask(page: Any, service: Service, prompt: str, model: str = "") -> None:
    """Open the page and send `prompt`; with caller keys, the first request is refused (401)
    and the page asks for the key: enter it, which sends the prompt again."""
    page.goto(service.url + "/")
    assert page.is_hidden("#keyform")  # nothing asked before the service asks
    page.fill("#prompt", prompt)
    if model:
        page.fill("#model", model)
    page.click("#send")
    if service.caller_key is None:
        return
    page.wait_for_selector("#keyform", state="visible", timeout=10_000)
    assert page.inner_text("#error .category") == "caller_auth"
    page.fill("#callerkey", service.caller_key)
    page.click("#usekey")


def storage(page: Any) -> dict[str, Any]:
    return page.evaluate(
        f"""() => ({{session: sessionStorage.getItem({KEY_ITEM!r}),
            sessionItems: sessionStorage.length, localItems: localStorage.length,
            cookie: document.cookie}})"""
    )


def wait_for_answer(page: Any) -> None:
    # Selectors, not wait_for_function: the page's CSP (no 'unsafe-eval') refuses its predicates.
    page.wait_for_selector("#status:has-text(' ms. Request id: ')", timeout=10_000)


def test_the_answer_appears_as_it_streams(service: Service, page: Any) -> None:
    bodies = received_bodies(page)
    sent = sent_authorizations(page)
    ask(page, service, "Count slowly please")

    snapshots: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = page.inner_text("#answer")
        if not snapshots or text != snapshots[-1]:
            snapshots.append(text)
        if " ms. Request id: " in page.inner_text("#status"):  # the done event arrived
            break
        time.sleep(0.03)

    final = "".join(f"w{i} " for i in range(12))
    assert page.inner_text("#answer").strip() == final.strip()
    partial = [text for text in snapshots if text and text.strip() != final.strip()]
    assert len(partial) >= 3, snapshots  # it grew delta by delta, not all at once
    assert "Request id: " in page.inner_text("#status")
    page.wait_for_timeout(200)
    assert not any(KEY in body or KEY[-12:] in body for body in bodies)
    assert KEY not in page.content()
    if service.caller_key is None:  # caller_auth=none: the page never asks, never sends one
        assert sent == [None]
        assert page.is_hidden("#keyform")
        assert page.is_hidden("#forgetkey")
    else:  # refused without a key, then sent with it
        assert sent == [None, f"Bearer {service.caller_key}"]
        assert page.is_hidden("#keyform")
        assert page.is_visible("#forgetkey")
        assert not any(service.caller_key in body for body in bodies)


@pytest.mark.parametrize(
    ("model", "category"),
    [
        pytest.param("fake-error-quota", "quota", id="refused-before-streaming"),
        pytest.param("fake-stream-cut", "stream_interrupted", id="cut-after-streaming-began"),
    ],
)
def test_failures_are_shown_by_category(
    service: Service, page: Any, model: str, category: str
) -> None:
    bodies = received_bodies(page)
    ask(page, service, "hello", model)

    page.wait_for_selector(f"#error:visible .category:text-is('{category}')", timeout=10_000)
    assert page.inner_text("#error .hint").startswith("Hint: ")
    assert not any(KEY in body for body in bodies)


# -- caller keys (caller_auth=keys) -------------------------------------------------------------


@pytest.fixture
def keyed(service: Service) -> Service:
    assert service.caller_key is not None
    return service


def test_the_caller_key_stays_in_this_tabs_session_storage(keyed: Service, page: Any) -> None:
    sent = sent_authorizations(page)
    ask(page, keyed, "Count slowly please")
    wait_for_answer(page)

    held = storage(page)
    assert (held["session"], held["sessionItems"]) == (keyed.caller_key, 1)
    assert (held["localItems"], held["cookie"]) == (0, "")
    assert page.context.cookies() == []
    assert keyed.caller_key not in page.url
    assert keyed.caller_key not in page.content()  # not left in the input either

    # Reloaded, the tab still has it: sent at once, no 401.
    page.reload()
    assert page.is_hidden("#keyform")
    assert page.is_visible("#forgetkey")
    page.fill("#prompt", "again")
    page.click("#send")
    wait_for_answer(page)
    assert sent == [None, *[f"Bearer {keyed.caller_key}"] * 2]

    # Forgotten: gone from the tab, and the next request is refused and asks again.
    page.click("#forgetkey")
    assert storage(page)["sessionItems"] == 0
    assert page.is_hidden("#forgetkey")
    page.click("#send")
    page.wait_for_selector("#error", state="visible", timeout=10_000)
    assert page.inner_text("#error .category") == "caller_auth"
    assert page.is_visible("#keyform")
    assert sent[-1] is None


def test_another_tab_does_not_get_the_key(keyed: Service, page: Any) -> None:
    ask(page, keyed, "hello")
    wait_for_answer(page)

    other = page.context.new_page()  # same browser profile, another tab
    other.goto(keyed.url + "/")
    assert storage(other)["session"] is None
    assert other.is_hidden("#forgetkey")


def test_a_wrong_key_shows_the_401_message_and_is_not_kept(keyed: Service, page: Any) -> None:
    sent = sent_authorizations(page)
    ask(page, Service(keyed.url, WRONG_CALLER_KEY), "hello")

    deadline = time.monotonic() + 10
    while len(sent) < 2 and time.monotonic() < deadline:  # sent again, with the wrong key
        page.wait_for_timeout(50)
    page.wait_for_selector("#keyform", state="visible", timeout=10_000)  # refused: asks again
    assert sent == [None, f"Bearer {WRONG_CALLER_KEY}"]
    assert page.inner_text("#error .category") == "caller_auth"
    assert page.inner_text("#error .message")
    assert page.inner_text("#error .hint").startswith("Hint: ")
    assert storage(page)["sessionItems"] == 0  # a refused key is not kept
    assert page.inner_text("#answer") == ""
