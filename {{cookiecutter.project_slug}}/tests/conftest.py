"""Shared fixtures: a fake gateway on loopback and an environment that points at it.

Every test runs with a unique sentinel key, built at run time, so any test can assert that the
key never appears where it must not (responses, logs, output).
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.settings import API_KEY_ENV, ENV_NAMES

from .fake_gateway import FakeGateway

SENTINEL_KEY = "sk-" + "".join(
    secrets.choice(string.ascii_letters + string.digits) for _ in range(48)
)


@pytest.fixture(scope="session")
def gateway() -> Iterator[FakeGateway]:
    with FakeGateway(api_key=SENTINEL_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_gateway(gateway: FakeGateway) -> None:
    gateway.reset()


@pytest.fixture
def gateway_env(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The service's settings pointed at the fake gateway, isolated from any local .env and
    from the service's variables in the environment the tests run in (a rollback switch left
    set in a shell must not change what the tests see)."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    env = {
        API_KEY_ENV: SENTINEL_KEY,
        "ALLTKN_BASE_URL": gateway.base_url,
        "ALLTKN_MODEL": "gpt-4o-mini",
        "ALLTKN_TIMEOUT_S": "2",
        "ALLTKN_MAX_RETRIES": "0",
        "LOG_LEVEL": "INFO",
        # Decoys: the project must never fall back to the SDK's own variables.
        "OPENAI_API_KEY": "decoy-openai-key-value",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/never-used",
    }
    for name in ENV_NAMES.values():
        if name not in env:
            monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def upstream_calls(caplog: pytest.LogCaptureFixture) -> Callable[[], list[dict[str, Any]]]:
    """Reads the `upstream_call` log entries emitted so far in the test, as dicts."""
    caplog.set_level(logging.INFO)

    def read() -> list[dict[str, Any]]:
        return [record.call for record in caplog.records if hasattr(record, "call")]

    return read
