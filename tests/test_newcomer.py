"""A newcomer's first run, from a fresh bake of each variant, in real processes (slow tier).

The README's Quick start (`git init`, `make dev`: a .venv installed with uv or pip), then its
"Try it without a key" block, extracted from the README and run as written by bash (so the
README cannot drift from what works): the fake gateway and, for the web variants, the service
in the background, one curl and one `ask`. The web variants' demo page then answers in
Chromium, and after `git add -A && git commit` (the pre-commit hooks `make dev` installed run,
offline) `doctor` against the fake passes with the README's documented key. Ports: the try
block's own 8000 is replaced by a free port, and PORT / FAKE_PORT are passed to make, which
the README's Makefile takes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.slow

FAKE_KEY = "fake-key-for-the-fake-gateway"  # the README's documented key (doctor.FAKE_GATEWAY_KEY)
ANSWER = "Hello from the fake gateway."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def block(readme: str, heading: str, fence: str) -> str:
    """The first ```fence block under `## heading`."""
    section = readme.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"^```{fence}\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert found, f"no ```{fence} block under ## {heading}"
    return found.group(1)


def run(command: str, project: Path, env: dict[str, str], timeout: float = 900) -> str:
    done = subprocess.run(
        ["bash", "-c", command], cwd=project, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def demo_page_answers(url: str, caller_key: str | None) -> str:
    """The answer the demo page shows for one prompt, in Chromium."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.fill("#prompt", "Say hello")
            page.click("#send")
            if caller_key is not None:  # the page asks for a caller key when the service does
                page.wait_for_selector("#keyform", state="visible", timeout=20_000)
                page.fill("#callerkey", caller_key)
                page.click("#usekey")
            page.locator("#answer", has_text=ANSWER).wait_for(timeout=30_000)  # CSP: no eval
            return str(page.inner_text("#answer"))
        finally:
            browser.close()


@pytest.mark.parametrize("framework", ["fastapi", "flask", "script"])
def test_the_readme_path_works_as_written(cookies: Any, tmp_path: Path, framework: str) -> None:
    for needed in ("make", "git", "curl"):
        if shutil.which(needed) is None:
            pytest.skip(f"{needed} is not installed")
    result = cookies.bake(extra_context={"framework": framework})
    assert result.exit_code == 0, result.exception
    project = Path(str(result.project_path))
    readme = (project / "README.md").read_text(encoding="utf-8")
    port, fake_port = free_port(), free_port()
    # A newcomer's shell (its proxy and CA settings reach uv and pip), without this run's venv
    # or any gateway setting that would make the keyless path pass for the wrong reason.
    shell = {
        name: value
        for name, value in os.environ.items()
        if name != "VIRTUAL_ENV" and not name.startswith(("ALLTKN_", "OPENAI_", "OTEL_"))
    }
    env = {
        **shell,
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit"),
        "PORT": str(port),
        "FAKE_PORT": str(fake_port),
        **{f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
           for what, value in (("NAME", "Newcomer"), ("EMAIL", "new@example.com"))},
    }  # fmt: skip

    # Quick start, as written, but for `make test`: the slow tier's test_generated_projects
    # runs every variant's suite (`make check`) already.
    quick = block(readme, "Quick start", "bash")
    assert [line.split("#")[0].split() for line in quick.splitlines()][:3] == [
        ["git", "init"], ["make", "dev"], ["make", "test"]
    ]  # fmt: skip
    run("\n".join(line for line in quick.splitlines() if not line.startswith("make test")),
        project, env)  # fmt: skip

    try_it = block(readme, "Try it without a key", "bash try")
    assert "make fake &" in try_it
    script = try_it.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    log = tmp_path / "try.log"  # a file: the background jobs keep writing after bash exits
    with log.open("w") as output:
        session = subprocess.Popen(
            ["bash", "-c", script], cwd=project, env=env, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        session.wait(timeout=180)  # the foreground commands: the background jobs run on
        shown = log.read_text(encoding="utf-8")
        assert session.returncode == 0, shown
        web = framework != "script"
        # One answer from `ask` (make try / make try-ask), one in the curl's JSON on the web.
        assert shown.count(ANSWER) >= (2 if web else 1), shown
        if web:
            assert f'"content":"{ANSWER}"' in shown, shown  # the curl's JSON
            caller_key = None
            if "keys create" in try_it:  # a second caller for the browser (read within 2 s)
                created = run(".venv/bin/alltkn-service keys create browser 2>/dev/null", project,
                              env)  # fmt: skip
                caller_key = created.strip().splitlines()[-1]
            assert ANSWER in demo_page_answers(f"http://127.0.0.1:{port}/", caller_key)

        # The first commit runs the hooks `make dev` installed, offline; then doctor against
        # the fake passes with the README's key, which is in the committed files.
        assert (project / ".git" / "hooks" / "pre-commit").is_file()
        run("git add -A && git commit -q -m 'First commit'", project, env)
        assert FAKE_KEY in readme
        doctor = {
            **env,
            "ALLTKN_BASE_URL": f"http://127.0.0.1:{fake_port}/api/v1",
            "ALLTKN_API_KEY": FAKE_KEY,
        }
        report = run(".venv/bin/alltkn-service doctor", project, doctor, timeout=120)
        assert re.search(r"PASS  key not in git ", report), report
        assert "OK: 0 failed" in report, report
        if framework == "script":  # its "Use the real gateway" block, as written, at the fake
            shown = run(block(readme, "Use the real gateway", "bash"), project, doctor)
            assert ANSWER in shown, shown
            result = json.loads((project / "results.jsonl").read_text(encoding="utf-8"))
            assert (result["id"], result["content"]) == (1, ANSWER)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the fake and the service, with make
            os.killpg(session.pid, signal.SIGTERM)
        session.wait(timeout=30)
