"""Settings: read from the environment, the key held as a secret, bad values refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.settings import API_KEY_ENV, ConfigError, load_settings

from .conftest import SENTINEL_KEY

pytestmark = pytest.mark.usefixtures("gateway_env")


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALLTKN_TIMEOUT_S")
    monkeypatch.delenv("ALLTKN_MAX_RETRIES")
    monkeypatch.setenv("LOG_LEVEL", "debug")

    settings = load_settings()

    assert settings.api_key.get_secret_value() == SENTINEL_KEY
    assert settings.timeout_s == 60
    assert settings.max_retries == 1
    assert settings.log_level == "DEBUG"


def test_the_key_never_shows_in_repr_str_or_dumps() -> None:
    settings = load_settings()
    for shown in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
    ):
        assert SENTINEL_KEY not in shown


def test_a_local_env_file_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    monkeypatch.delenv("ALLTKN_MODEL")
    (tmp_path / ".env").write_text("ALLTKN_MODEL=model-from-dotenv\n")  # type: ignore[operator]
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    assert load_settings().model == "model-from-dotenv"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        pytest.param(API_KEY_ENV, None, f"{API_KEY_ENV} is not set", id="key-missing"),
        pytest.param(API_KEY_ENV, "", f"{API_KEY_ENV} is empty or a placeholder", id="key-empty"),
        pytest.param(API_KEY_ENV, "<your-alltkn-api-key>", "placeholder", id="key-placeholder"),
        pytest.param(
            "ALLTKN_BASE_URL", "ftp://gateway/api/v1", "ALLTKN_BASE_URL must start", id="url-scheme"
        ),
        pytest.param(
            "ALLTKN_BASE_URL",
            "https://x/api/v1/chat/completions",
            "without /chat/completions",
            id="url-endpoint",
        ),
        pytest.param("ALLTKN_TIMEOUT_S", "soon", "ALLTKN_TIMEOUT_S", id="timeout-not-number"),
        pytest.param("ALLTKN_TIMEOUT_S", "0", "ALLTKN_TIMEOUT_S", id="timeout-zero"),
        pytest.param("ALLTKN_MAX_RETRIES", "-1", "ALLTKN_MAX_RETRIES", id="retries-negative"),
        pytest.param("ALLTKN_MODEL", "  ", "ALLTKN_MODEL", id="model-blank"),
        pytest.param("LOG_LEVEL", "LOUD", "LOG_LEVEL", id="log-level-unknown"),
    ],
)
def test_bad_settings_fail_in_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str | None, expected: str
) -> None:
    if value is None:
        monkeypatch.delenv(name)
    else:
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert ".env.example" in message
    assert SENTINEL_KEY not in message


def test_the_suite_ignores_the_services_variables_set_in_its_shell() -> None:
    # An operator's shell with rollback switches thrown must not change what the tests see.
    switches = {"ALLTKN_MAX_INPUT_CHARS": "5", "ALLTKN_STREAMING": "off"}
    root = Path(__file__).resolve().parents[1]
    one_test = "tests/test_cli.py::test_ask_streams_the_answer"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", one_test],
        cwd=root,
        env={**os.environ, **switches},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:]
