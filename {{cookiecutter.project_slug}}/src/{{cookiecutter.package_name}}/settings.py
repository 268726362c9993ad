"""Settings, read once at start from the environment (and a local `.env` in development).

The only place the API key is read: a `SecretStr` (dumps show `**********`), and errors name the
variable, never its value. An empty, placeholder or mis-pasted key stops the service at start.
"""

from __future__ import annotations

import re
import sys
{%- if cookiecutter.caller_auth == "keys" %}
from pathlib import Path
{%- endif %}
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import CLIENT_HEADERS

KEY_ENV_VAR = {{ cookiecutter.api_key_env_var | tojson }}
DEFAULT_BASE_URL = {{ cookiecutter.alltkn_base_url | tojson }}
DEFAULT_MODEL = {{ cookiecutter.default_model | tojson }}
# Values people paste from docs instead of a real key; refused at start.
_PLACEHOLDER_MARKERS = (
    "<", ">", "your", "changeme", "xxxx", "placeholder", "example", "...", "${", "$("
)  # fmt: skip

_ENDPOINTS = ("/chat/completions", "/completions", "/responses", "/embeddings", "/models")
_LOOPBACK_HTTP = re.compile(r"http://(localhost|127\.[\d.]+|\[::1\])([:/]|$)", re.IGNORECASE)

SettingsT = TypeVar("SettingsT", bound=BaseSettings)
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
Switch = Literal["on", "off"]


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line and never holds the key."""


{% if cookiecutter.caller_auth == "keys" or cookiecutter.worker == "celery" -%}
def redis_url(value: object) -> object:
    """A Redis URL setting, before validation: empty is unset (None); else redis://, rediss://
    or unix://, with a port that is a number. The message never repeats it (a password)."""
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str) and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    if isinstance(value, str):
        try:
            urlsplit(value).port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            raise ValueError("has a port that is not a number: redis://host:6379/0") from None
    return value


{% endif -%}
{% if cookiecutter.caller_auth == "keys" -%}
class CallerSettings(BaseSettings):
    """What the callers need (the `keys` command reads only these: it needs no gateway key)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Who may call the service (keys.py, callers.py); never committed, mode 0600.
    callers_file: Path = Field(Path("callers.json"), validation_alias="ALLTKN_CALLERS_FILE")
    # Shared counters for the callers' limits (limiter.py): one Redis for all workers and
    # replicas. Unset: counted in this process, so one worker only.
    limits_redis_url: SecretStr | None = Field(None, validation_alias="ALLTKN_LIMITS_REDIS_URL")

    @field_validator("limits_redis_url", mode="before")
    @classmethod
    def _check_redis_url(cls, value: object) -> object:
        return redis_url(value)


class Settings(CallerSettings):
{%- else -%}
class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )
{% endif %}
    api_key: SecretStr = Field(validation_alias=KEY_ENV_VAR)
    base_url: str = Field(DEFAULT_BASE_URL, validation_alias="ALLTKN_BASE_URL")
    model: str = Field(DEFAULT_MODEL, validation_alias="ALLTKN_MODEL")
    timeout_s: float = Field(60.0, gt=0, le=3600, validation_alias="ALLTKN_TIMEOUT_S")
    max_retries: int = Field(1, ge=0, le=10, validation_alias="ALLTKN_MAX_RETRIES")
    log_level: LogLevel = Field("INFO", validation_alias="LOG_LEVEL")
    # A comment line on a silent stream this often keeps proxies from timing it out and shows
    # the server a client that left.
    sse_keepalive_s: float = Field(15.0, gt=0, le=300, validation_alias="ALLTKN_SSE_KEEPALIVE_S")
    # A client that stops reading for this long is dropped, and its upstream stream closed.
    sse_send_timeout_s: float = Field(
        30.0, gt=0, le=3600, validation_alias="ALLTKN_SSE_SEND_TIMEOUT_S"
    )
    # A longer 429 Retry-After fails fast (the caller gets the delay) instead of hanging.
    retry_after_cap_s: float = Field(5.0, ge=0, le=120, validation_alias="ALLTKN_RETRY_AFTER_CAP_S")
    # Rollback switches (docs/RUNBOOK.md). Models tried in order after the requested one
    # fails with model_not_found, upstream_unavailable or timeout: "gpt-4o,gpt-4o-mini".
    fallback_models: str = Field("", validation_alias="ALLTKN_FALLBACK_MODELS")
    # "off": stream endpoints answer with one delta from a non-streaming call.
    streaming: Switch = Field("on", validation_alias="ALLTKN_STREAMING")
    # Requests whose message contents hold more characters are refused before any call.
    max_input_chars: int = Field(
        200_000, gt=0, le=10_000_000, validation_alias="ALLTKN_MAX_INPUT_CHARS"
    )
    # A whole stream, first byte to last: a gateway trickling tokens holds it no longer.
    max_stream_s: float = Field(300.0, gt=0, le=86_400, validation_alias="ALLTKN_MAX_STREAM_S")
    # The most tokens one answer may ask for: sent when a request names none, a 422 above it.
    max_output_tokens: int = Field(
        4096, gt=0, le=1_000_000, validation_alias="ALLTKN_MAX_OUTPUT_TOKENS"
    )
{%- if cookiecutter.framework != "script" %}
    # Models callers may name (comma-separated; "*": any). Default: ALLTKN_MODEL and the
    # fallback models, so a caller cannot spend the key on a model nobody chose.
    allowed_models: str = Field("", validation_alias="ALLTKN_ALLOWED_MODELS")
    # "off": no `GET /metrics` (404), nothing counted for it, no file written: no cost at all.
    metrics: Switch = Field("on", validation_alias="ALLTKN_METRICS")
    # Unset: `GET /metrics` is open (keep it off the internet); set: it wants this as a Bearer.
    metrics_token: SecretStr | None = Field(None, validation_alias="ALLTKN_METRICS_TOKEN")
    # A request body over this many bytes is refused (413) before it is read to the end.
    max_body_bytes: int = Field(
        1_048_576, ge=1024, le=1_073_741_824, validation_alias="ALLTKN_MAX_BODY_BYTES"
    )
    # Chat requests one worker serves at once (streams included); past it, 503 server_busy.
{%- if cookiecutter.framework == "flask" %}
    # Below GUNICORN_THREADS (gunicorn.conf.py checks), so /healthz always finds a thread.
    max_streams: int = Field(24, ge=1, le=100_000, validation_alias="ALLTKN_MAX_STREAMS")
{%- else %}
    max_streams: int = Field(200, ge=1, le=100_000, validation_alias="ALLTKN_MAX_STREAMS")
{%- endif %}
    # "on": /docs, /redoc, /openapi.json (FastAPI) and the demo page `GET /`; off: 404.
    dev_ui: Switch = Field("off", validation_alias="ALLTKN_DEV_UI")
    # The Host names the service answers to (comma-separated; "*": any); another gets 400.
    # /healthz and /metrics answer any host (probes and scrapes come by pod IP).
    allowed_hosts: str = Field("localhost,127.0.0.1,::1", validation_alias="ALLTKN_ALLOWED_HOSTS")
    # A client gets this long to send a request's head and its body: then 408.
    client_timeout_s: float = Field(10.0, gt=0, le=3600, validation_alias="ALLTKN_CLIENT_TIMEOUT_S")
{%- endif %}

    @field_validator("api_key")
    @classmethod
    def _refuse_placeholder_key(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value()
        if is_placeholder_key(key):
            raise ValueError("is empty or a placeholder, not a real key")
        if any(char.isspace() or char in "\"'" for char in key):
            raise ValueError("contains spaces or quotes; set the key alone, without 'Bearer '")
        return value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if problem := base_url_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _check_model(cls, value: object) -> object:
        if isinstance(value, str) and (not value.strip() or value != value.strip()):
            raise ValueError("must be a model name without surrounding spaces")
        return value

    @field_validator("fallback_models"{% if cookiecutter.framework != "script" %}, "allowed_models"{% endif %})
    @classmethod
    def _check_model_list(cls, value: str) -> str:
        models = [name.strip() for name in value.split(",")] if value.strip() else []
        if not all(models):
            raise ValueError("has an empty entry; list model names separated by single commas")
        if spaced := next((name for name in models if any(c.isspace() for c in name)), None):
            raise ValueError(
                f"has a space inside {spaced!r}; separate model names with commas: "
                '"gpt-4o,gpt-4o-mini"'
            )
        if len(set(models)) != len(models):
            raise ValueError("lists a model twice")
        return ",".join(models)

    @field_validator("streaming"{% if cookiecutter.framework != "script" %}, "metrics", "dev_ui"{% endif %}, mode="before")
    @classmethod
    def _check_switch(cls, value: object) -> object:
        if isinstance(value, str) and (value := value.strip().lower()) not in ("on", "off"):
            raise ValueError("must be on or off")
        return value

{%- if cookiecutter.framework != "script" %}

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value
{%- endif %}

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def client_options(self) -> dict[str, Any]:
        """What every SDK client is made with. `base_url` and `api_key` always explicit: left
        out, the SDK would read `OPENAI_BASE_URL` / `OPENAI_API_KEY` and could go elsewhere."""
        return {
            "base_url": self.base_url,
            "api_key": self.api_key.get_secret_value(),
            "timeout": self.timeout_s,
            "max_retries": self.max_retries,
            "default_headers": CLIENT_HEADERS,
        }

    @property
    def secret_values(self) -> list[str]:
        """What every log line masks."""
{%- if cookiecutter.framework != "script" %}
        token = self.metrics_token
        return [self.api_key.get_secret_value(), token.get_secret_value() if token else ""]
{%- else %}
        return [self.api_key.get_secret_value()]
{%- endif %}

    @property
    def fallback_model_list(self) -> tuple[str, ...]:
        return tuple(self.fallback_models.split(",")) if self.fallback_models else ()
{%- if cookiecutter.framework != "script" %}

    @property
    def allowed_model_set(self) -> frozenset[str] | None:
        """The models callers may name; None: any."""
        if self.allowed_models == "*":
            return None
        if self.allowed_models:
            return frozenset(self.allowed_models.split(","))
        return frozenset((self.model, *self.fallback_model_list))

    @property
    def allowed_host_set(self) -> frozenset[str] | None:
        """The Host names requests may carry, lower-cased; None: any."""
        hosts = {host.strip().lower().strip("[]") for host in self.allowed_hosts.split(",")}
        return None if "*" in hosts else frozenset(hosts - {""})
{%- endif %}


# Each setting's environment variable (its alias above): {"model": "ALLTKN_MODEL", ...}.
ENV_NAMES = {name: str(field.validation_alias) for name, field in Settings.model_fields.items()}


def is_loopback_http(url: str) -> bool:
    """Plain http to this machine (a local or fake gateway): the one place http is allowed."""
    return bool(_LOOPBACK_HTTP.match(url))


def base_url_problem(url: str) -> str | None:
    """What is wrong with a base URL, with the fix, or None; never repeats the URL (it may
    hold credentials). Settings refuse it at start; `doctor` shows it as its base URL row."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        return "is not a valid URL; use the gateway's https:// /api/v1 root"
    wrong = [
        (parts.scheme not in ("https", "http"), "must start with https:// (the /api/v1 root)"),
        (
            parts.username is not None or parts.password is not None,
            "holds credentials (user:password@); remove them: the key goes in "
            f"{KEY_ENV_VAR}, and rotate anything that was in the URL",
        ),
        (
            bool(parts.query or parts.fragment),
            "has a query string or a fragment; use the /api/v1 root alone",
        ),
        (
            parts.path.rstrip("/").endswith(_ENDPOINTS),
            "names an endpoint, not the API root; use the /api/v1 root, "
            "without /chat/completions or /models",
        ),
        (
            parts.scheme == "http" and not is_loopback_http(url),
            "is plain http: the key would go in clear text; use https:// "
            "(http only to localhost, 127.0.0.1 or ::1)",
        ),
    ]
    return next((text for bad, text in wrong if bad), None)


def is_placeholder_key(value: str) -> bool:
    lowered = value.strip().lower()
    return len(lowered) < 8 or any(marker in lowered for marker in _PLACEHOLDER_MARKERS)


def load_settings() -> Settings:
    """Build the settings or raise `ConfigError` with one line naming the variable to fix."""
    return build(Settings)


def build(kind: type[SettingsT]) -> SettingsT:
    try:
        return kind()
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            name = str(error["loc"][0]) if error["loc"] else "settings"  # the variable's name
            reason = error["msg"].removeprefix("Value error, ")
            problems.append(f"{name} {'is not set' if error['type'] == 'missing' else reason}")
        advice = ". Set it in the environment or in .env (see .env.example)."
        raise ConfigError("; ".join(problems) + advice) from None


def load_settings_or_exit() -> Settings:
    """For entry points: print the one-line problem and exit 2 instead of a traceback."""
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"error[config]: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
