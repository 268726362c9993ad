"""checkov over what the docker, kubernetes and ci options generate: no failed check, and every
check the generated `.checkov.yaml` skips carries its written reason.

checkov pins dependencies the template's tooling does not share, so it lives in its own
virtualenv, `.venv-checkov` next to this directory, made from `requirements-checkov.txt` when it
is missing (`.ci/run` makes it first).
"""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TEMPLATE_DIR

CHECKOV_VENV = TEMPLATE_DIR / ".venv-checkov"
CHECKOV = CHECKOV_VENV / "bin" / "checkov"
REQUIREMENTS = TEMPLATE_DIR / "requirements-checkov.txt"

# Every bake that has a Dockerfile, manifests and CI files, both CIs, with and without caller keys.
BAKES = [
    pytest.param({"framework": "fastapi", "kubernetes": "yes"}, id="fastapi-github"),
    pytest.param({"framework": "flask", "kubernetes": "yes"}, id="flask-github"),
    pytest.param(
        {"framework": "fastapi", "kubernetes": "yes", "caller_auth": "none", "ci": "gitlab"},
        id="fastapi-open-gitlab",
    ),
    pytest.param({"framework": "flask", "kubernetes": "yes", "ci": "gitlab"}, id="flask-gitlab"),
    pytest.param({"framework": "script"}, id="script-github"),
    # The worker's Deployment and NetworkPolicy next to the web ones.
    pytest.param(
        {"framework": "fastapi", "kubernetes": "yes", "worker": "celery"}, id="fastapi-celery"
    ),
    pytest.param(
        {"framework": "flask", "kubernetes": "yes", "caller_auth": "none", "worker": "celery"},
        id="flask-open-celery",
    ),
]


def checkov() -> Path:
    """checkov in its own virtualenv, installed once (a lock keeps xdist workers from racing)."""
    with (TEMPLATE_DIR / ".venv-checkov.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not CHECKOV.exists():
            subprocess.run([sys.executable, "-m", "venv", str(CHECKOV_VENV)], check=True)
            pip = [str(CHECKOV_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
            done = subprocess.run(
                [*pip, "-r", str(REQUIREMENTS)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                pytest.skip(f"checkov could not be installed:\n{done.stderr[-2000:]}")
    return CHECKOV


def run_checkov(project: Path) -> subprocess.CompletedProcess[str]:
    # The project's .checkov.yaml is read from the working directory, as for its users.
    return subprocess.run(
        [str(checkov()), "-d", ".", "--skip-download"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def bake(cookies: Any, answers: dict[str, str]) -> Path:
    result = cookies.bake(extra_context=answers)
    assert result.exit_code == 0, result.exception
    return Path(str(result.project_path))


@pytest.mark.parametrize("answers", BAKES)
def test_checkov_finds_nothing(cookies: Any, answers: dict[str, str]) -> None:
    project = bake(cookies, answers)
    done = run_checkov(project)

    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    scanned = re.findall(
        r"^(\w+) scan results:\s+Passed checks: \d+, Failed checks: (\d+)", done.stdout, re.M
    )
    web = answers["framework"] != "script"
    ci = "gitlab_ci" if answers.get("ci") == "gitlab" else "github_actions"
    assert {name for name, _ in scanned} == {"dockerfile", ci, *(["kubernetes"] if web else [])}
    assert all(failed == "0" for _, failed in scanned), done.stdout


def test_every_skipped_check_says_why(cookies: Any) -> None:
    project = bake(cookies, {"framework": "fastapi", "kubernetes": "yes"})
    text = (project / ".checkov.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    lines = text.splitlines()

    assert config["skip-check"]
    for check in config["skip-check"]:
        at = lines.index(f"  - {check}")
        reason = []
        for line in reversed(lines[:at]):
            if not line.startswith("  #"):
                break
            reason.append(line)
        assert reason, f"{check} is skipped without a reason"
        assert check in reason[-1]


def test_checkov_fails_a_latest_image(cookies: Any) -> None:
    """The gate works: the same bake with the image by `:latest` fails CKV_K8S_14 / 43."""
    project = bake(cookies, {"framework": "flask", "kubernetes": "yes"})
    deployment = project / "k8s" / "deployment.yaml"
    text = deployment.read_text(encoding="utf-8")
    deployment.write_text(
        re.sub(r"image: \S+", "image: alltkn-service:latest", text), encoding="utf-8"
    )
    done = run_checkov(project)

    assert done.returncode == 1
    assert "CKV_K8S_14" in done.stdout
    assert "CKV_K8S_43" in done.stdout
