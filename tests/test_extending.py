"""The generated docs/EXTENDING.md's promise: a new request parameter is one field and one line.

The diff it shows is applied, as written, to fresh bakes (FastAPI for HTTP, the script
variant for the CLI and batch); then `top_p` must reach the gateway from all three, be refused
with one line when it is out of range, and not be sent when the caller leaves it out.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx2
import pytest
from conftest import bake_cli, load_module, out_dir

KEY = "any-key-works-with-the-fake"
PACKAGE = "alltkn_service"


def readme_diff(project: Path) -> list[tuple[str, str]]:
    """(context line, added line) for each `+` line of docs/EXTENDING.md's diff."""
    readme = (project / "docs" / "EXTENDING.md").read_text(encoding="utf-8")
    section = readme.split("# Extending", 1)[1]
    block = re.search(r"```diff\n(.*?)```", section, re.DOTALL)
    assert block, "the Extending section shows no diff"
    pairs, context = [], ""
    for line in block.group(1).splitlines():
        if line.startswith("+"):
            pairs.append((context, line[1:]))
        elif line.strip() and line.strip() != "...":
            context = line[1:]
    return pairs


def extend(project: Path) -> None:
    """Apply the README's diff to request.py: each added line right after its context line."""
    path = project / "src" / PACKAGE / "request.py"
    lines = path.read_text(encoding="utf-8").splitlines()
    for context, added in readme_diff(project):
        index = lines.index(context)  # a ValueError: the README no longer matches the code
        lines.insert(index + 1, added)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def bake_extended(tmp_path: Path, framework: str) -> Path:
    done = bake_cli(tmp_path, framework=framework)
    assert done.returncode == 0, done.stderr
    project = out_dir(tmp_path) / "alltkn-service"
    extend(project)
    return project


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    project = bake_extended(tmp_path_factory.mktemp("fastapi"), "fastapi")
    fake: ModuleType = load_module(project / "tests" / "fake_gateway.py", "extending_fake")
    with fake.FakeGateway(api_key=KEY) as gw:
        gw.project = project
        yield gw


def env(gateway: Any, project: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(project / "src"),
        "ALLTKN_API_KEY": KEY,
        "ALLTKN_BASE_URL": gateway.base_url,
        "ALLTKN_MAX_RETRIES": "0",
        "LOG_LEVEL": "WARNING",
    }


def run(project: Path, environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", PACKAGE, *args]
    return subprocess.run(
        command,
        cwd=project,
        env=environ,
        stdin=subprocess.DEVNULL,  # not the runner's own: `ask` reads piped input
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_readme_diff_is_one_field_and_one_line(gateway: Any) -> None:
    added = [line for _, line in readme_diff(gateway.project)]
    assert len(added) == 2
    assert added[0].strip().startswith("top_p:")
    assert added[1].strip() == '"top_p": request.top_p,'


def test_top_p_reaches_the_gateway_from_http(gateway: Any) -> None:
    project = gateway.project
    environ = env(gateway, project)
    created = run(project, environ, "keys", "create", "extending")  # the default bake's callers
    assert created.returncode == 0, created.stderr
    auth = {"Authorization": f"Bearer {created.stdout.strip()}"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", PACKAGE, "serve", "--port", str(port)],
        cwd=project, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx2.get(f"{url}/healthz", timeout=1)
                break
            except httpx2.HTTPError:
                time.sleep(0.1)
        for path in ("/v1/chat", "/v1/chat/stream"):
            gateway.reset()
            body = {"prompt": "hi", "top_p": 0.5}
            answer = httpx2.post(f"{url}{path}", json=body, headers=auth, timeout=10)
            assert answer.status_code == 200, answer.text
            assert gateway.requests[-1].body["top_p"] == 0.5, path
        body = {"prompt": "hi", "top_p": 3}
        answer = httpx2.post(f"{url}/v1/chat", json=body, headers=auth, timeout=10)
        assert answer.status_code == 422
        assert answer.json()["error"]["message"].startswith("top_p: ")
        gateway.reset()
        answer = httpx2.post(f"{url}/v1/chat", json={"prompt": "hi"}, headers=auth, timeout=10)
        assert answer.is_success, answer.text
        assert "top_p" not in gateway.requests[-1].body
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_top_p_reaches_the_gateway_from_the_cli_and_batch(gateway: Any, tmp_path: Path) -> None:
    project = bake_extended(tmp_path, "script")
    environ = env(gateway, project)

    gateway.reset()
    done = run(project, environ, "ask", "hi", "--top-p", "0.5")
    assert done.returncode == 0, done.stderr
    assert gateway.requests[-1].body["top_p"] == 0.5
    done = run(project, environ, "ask", "hi", "--top-p", "3")
    assert (done.returncode, done.stderr.startswith("error: --top-p: ")) == (2, True)

    rows = [{"id": 1, "prompt": "hi", "top_p": 0.25}, {"id": 2, "prompt": "hi"}]
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    gateway.reset()
    done = run(project, environ, "batch", str(source), str(target))
    assert done.returncode == 0, done.stderr
    sent = sorted(str(request.body.get("top_p", "left out")) for request in gateway.requests)
    assert sent == ["0.25", "left out"]
