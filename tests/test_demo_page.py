"""The web variants' demo page, in a real browser: Debian's Chromium driven by Playwright.

The page must render the answer as it streams in, show failures by category, and never hold
or receive the key. Skipped, with the reason, where Chromium or Playwright is not installed
(.ci/run installs both).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

KEY = "sk-" + "".join(chr(ord("a") + (i * 7) % 26) for i in range(48))  # built, not committed
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


@pytest.fixture(scope="module", params=["fastapi", "flask"])
def service(request: pytest.FixtureRequest, cookies_session: Any) -> Iterator[str]:
    framework = request.param
    result = cookies_session.bake(extra_context={"framework": framework})
    assert result.exit_code == 0, result.exception
    project = Path(str(result.project_path))
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
            **os.environ,
            "ALLTKN_API_KEY": KEY,
            "ALLTKN_BASE_URL": base_url,
            "ALLTKN_MAX_RETRIES": "0",
            "PYTHONPATH": str(project / "src"),
        }
        command = [sys.executable, *COMMANDS[framework], target]
        if framework == "flask":
            command.append("alltkn_service.app:app")
        with running(command, project, env):
            url = f"http://127.0.0.1:{port}"
            wait_for(url + "/healthz")
            yield url


@pytest.fixture
def page(service: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield browser.new_page()
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


def test_the_answer_appears_as_it_streams(service: str, page: Any) -> None:
    bodies = received_bodies(page)
    page.goto(service + "/")
    page.fill("#prompt", "Count slowly please")
    page.click("#send")

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


@pytest.mark.parametrize(
    ("model", "category"),
    [
        pytest.param("fake-error-quota", "quota", id="refused-before-streaming"),
        pytest.param("fake-stream-cut", "stream_interrupted", id="cut-after-streaming-began"),
    ],
)
def test_failures_are_shown_by_category(service: str, page: Any, model: str, category: str) -> None:
    bodies = received_bodies(page)
    page.goto(service + "/")
    page.fill("#prompt", "hello")
    page.fill("#model", model)
    page.click("#send")

    page.wait_for_selector("#error", state="visible", timeout=10_000)
    assert page.inner_text("#error .category") == category
    assert page.inner_text("#error .hint").startswith("Hint: ")
    assert not any(KEY in body for body in bodies)
