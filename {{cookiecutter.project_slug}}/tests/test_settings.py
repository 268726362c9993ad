"""Settings: read from the environment, the key held as a secret, bad values refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.settings import (
    KEY_ENV_VAR,
    ConfigError,
    load_settings,
    load_settings_or_exit,
)

from .conftest import SENTINEL_KEY

pytestmark = pytest.mark.usefixtures("gateway_env")
URL_PASSWORD = "-".join(("url", "pass", "5678"))  # built here: no secret-shaped literal


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALLTKN_TIMEOUT_S")
    monkeypatch.delenv("ALLTKN_MAX_RETRIES")
    monkeypatch.setenv("LOG_LEVEL", "debug")

    settings = load_settings()

    assert settings.api_key.get_secret_value() == SENTINEL_KEY
    assert (settings.timeout_s, settings.max_retries, settings.retry_after_cap_s) == (60, 1, 5)
    assert settings.log_level == "DEBUG"
    assert settings.max_output_tokens == 4096


def test_the_key_never_shows_in_repr_str_or_dumps() -> None:
    settings = load_settings()
    for shown in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
    ):
        assert SENTINEL_KEY not in shown


def test_a_local_env_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ALLTKN_MODEL")
    (tmp_path / ".env").write_text("ALLTKN_MODEL=model-from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().model == "model-from-dotenv"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        pytest.param(KEY_ENV_VAR, None, f"{KEY_ENV_VAR} is not set", id="key-missing"),
        pytest.param(KEY_ENV_VAR, "", f"{KEY_ENV_VAR} is empty or a placeholder", id="key-empty"),
        pytest.param(KEY_ENV_VAR, "<your-alltkn-api-key>", "placeholder", id="key-placeholder"),
        pytest.param(
            KEY_ENV_VAR, "Bearer sk-abcdefgh12345678", "without 'Bearer '", id="key-bearer"
        ),
        pytest.param(
            "ALLTKN_BASE_URL", "ftp://gateway/api/v1", "must start with https://", id="url-scheme"
        ),
        pytest.param(
            "ALLTKN_BASE_URL",
            "https://x/api/v1/chat/completions",
            "names an endpoint, not the API root",
            id="url-endpoint",
        ),
        pytest.param(
            "ALLTKN_BASE_URL",
            "http://gateway.example.com/api/v1",
            "is plain http: the key would go in clear text; use https://",
            id="url-http-not-loopback",
        ),
        pytest.param(
            "ALLTKN_BASE_URL",
            f"https://alice:{URL_PASSWORD}@gateway.example.com/api/v1",
            "holds credentials (user:password@); remove them",
            id="url-credentials",
        ),
        pytest.param(
            "ALLTKN_BASE_URL",
            "http://localhost.evil.example/api/v1",
            "is plain http",
            id="url-http-loopback-lookalike",
        ),
        pytest.param("ALLTKN_TIMEOUT_S", "soon", "number", id="timeout-not-a-number"),
        pytest.param("ALLTKN_TIMEOUT_S", "0", "greater than 0", id="timeout-zero"),
        pytest.param("ALLTKN_MAX_RETRIES", "-1", "greater than or equal", id="retries-negative"),
        pytest.param("ALLTKN_MODEL", "  ", "without surrounding spaces", id="model-blank"),
        pytest.param("LOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'", id="log-level"),
        pytest.param("ALLTKN_STREAMING", "maybe", "must be on or off", id="streaming-maybe"),
        pytest.param("ALLTKN_MAX_INPUT_CHARS", "-5", "greater than 0", id="max-chars-negative"),
        pytest.param("ALLTKN_MAX_INPUT_CHARS", "0", "greater than 0", id="max-chars-zero"),
        pytest.param("ALLTKN_MAX_INPUT_CHARS", "lots", "integer", id="max-chars-not-a-number"),
        pytest.param("ALLTKN_MAX_OUTPUT_TOKENS", "0", "greater than 0", id="max-tokens-zero"),
        pytest.param("ALLTKN_MAX_OUTPUT_TOKENS", "4k", "integer", id="max-tokens-not-a-number"),
        pytest.param("ALLTKN_FALLBACK_MODELS", "gpt-4o,,gpt-4o-mini", "empty entry", id="fb-gap"),
        pytest.param("ALLTKN_FALLBACK_MODELS", "gpt-4o,", "empty entry", id="fallback-trailing"),
        pytest.param("ALLTKN_FALLBACK_MODELS", "gpt-4o,gpt-4o", "twice", id="fallback-twice"),
        pytest.param(
            "ALLTKN_FALLBACK_MODELS",
            "gpt-4o gpt-4o-mini",
            "has a space inside 'gpt-4o gpt-4o-mini'; separate model names with commas",
            id="fallback-space-separated",
        ),
        pytest.param("ALLTKN_RETRY_AFTER_CAP_S", "-1", "greater than or equal", id="cap-negative"),
        pytest.param("ALLTKN_RETRY_AFTER_CAP_S", "600", "less than or equal", id="cap-too-long"),
    ],
)
def test_a_bad_setting_fails_in_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str | None, expected: str
) -> None:
    if value is None:
        monkeypatch.delenv(name)
    else:
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert message.startswith(f"{name} ")
    assert expected in message
    assert "\n" not in message
    assert message.endswith("Set it in the environment or in .env (see .env.example).")
    assert SENTINEL_KEY not in message
    assert URL_PASSWORD not in message
    assert "alice" not in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8765/api/v1",
        "http://localhost:8765/api/v1",
        "http://[::1]:8765/api/v1",
        "https://gateway.example.com/api/v1/",
    ],
)
def test_https_or_http_to_loopback_is_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("ALLTKN_BASE_URL", url)
    assert load_settings().base_url == url.rstrip("/")


def test_a_credentialed_base_url_exits_2_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALLTKN_BASE_URL", f"http://bob:{URL_PASSWORD}@gateway.example.com/api/v1")
    with pytest.raises(SystemExit) as caught:
        load_settings_or_exit()

    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err.startswith("error[config]: ALLTKN_BASE_URL holds credentials")
    assert err.count("\n") == 1
    assert URL_PASSWORD not in err
    assert "bob" not in err


def test_entry_points_exit_2_with_the_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALLTKN_STREAMING", "maybe")
    with pytest.raises(SystemExit) as caught:
        load_settings_or_exit()

    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error[config]: ALLTKN_STREAMING must be on or off. "
        "Set it in the environment or in .env (see .env.example)."
    ]


class TestTheSuiteIgnoresTheServicesVariablesSetInItsShell:
    """An operator's shell with rollback switches thrown must not change what the tests see:
    `gateway_env` clears them."""

    @pytest.fixture(autouse=True)
    def _switches_thrown_in_the_shell(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Autouse: set before the module's `gateway_env` runs, as a shell's would be.
        for name, value in {
            "ALLTKN_STREAMING": "off",
            "ALLTKN_MAX_INPUT_CHARS": "5",
            "ALLTKN_FALLBACK_MODELS": "gpt-4o",
            "ALLTKN_MAX_OUTPUT_TOKENS": "7",
        }.items():
            monkeypatch.setenv(name, value)

    def test_the_switches_are_cleared(self) -> None:
        settings = load_settings()
        assert (settings.streaming, settings.max_input_chars) == ("on", 200_000)
        assert (settings.fallback_model_list, settings.max_output_tokens) == ((), 4096)
