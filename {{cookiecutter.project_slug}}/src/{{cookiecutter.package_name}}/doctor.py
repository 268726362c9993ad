"""`doctor`: the pre-launch checklist, run live against the configured gateway.

`python -m <package> doctor` (or `<slug> doctor`) prints one row per check: pass, warn, fail or
skip, how long it took, and for a failure or a warning what to do about it. A check that needs
an earlier one that failed is skipped, naming the failure. Nothing here depends on a web
framework; the command line is its only entry point.

Time: the whole run ends within 2 x ALLTKN_TIMEOUT_S, even against a host that never answers.
Each network check gets its own share of the timeout (`BUDGET_SHARES`, 1.75 x in all) and runs
in a worker thread that is abandoned, not waited for, once its share is spent.

Cost: one short completion and one short stream on the configured (low-cost) model; nothing else
generates tokens. `GET /models` is free.

The key is never shown beyond its last four characters: every text a check produces, the
gateway's own messages included, goes through the secret scanner's redaction with the live key.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings

from .chat import UPSTREAM_ERRORS, CallInfo, ChatResult, ChatService, ChatStream
from .client import create_client
from .errors import Category, GatewayError, classify, request_id_from_headers
from .logs import configure_logging
from .secret_scan import mask, redact, tracked_files
from .settings import API_KEY_ENV, DEFAULT_BASE_URL, DEFAULT_MODEL, ENV_NAMES, Settings

T = TypeVar("T")

# Shares of ALLTKN_TIMEOUT_S each network check may use; they add up to 1.75, and the whole run
# stops at `TOTAL_SHARE`, which leaves room to print within the promised 2 x.
BUDGET_SHARES: dict[str, float] = {
    "dns": 0.1,
    "tcp": 0.1,
    "tls": 0.15,
    "auth": 0.3,
    "completion": 0.5,
    "stream": 0.6,
}
TOTAL_SHARE = 1.9
# The shape of a one-api / new-api key.
KEY_SHAPE = re.compile(r"sk-[A-Za-z0-9]{48}")
KEY_SHAPE_TEXT = "sk- + 48 letters and digits"
# Short, cheap, and answered in a few tokens by any chat model.
PROMPT: tuple[ChatCompletionMessageParam, ...] = (
    {"role": "user", "content": "Count from 1 to 5, digits only, separated by spaces."},
)
CERT_WARN_DAYS = 14
_ENDPOINT_SUFFIXES = ("/chat/completions", "/completions", "/responses", "/embeddings", "/models")
_ENV_FILE = ".env"
_MAX_TIMEOUT_S = 3600.0
_SHOWN_ADDRESSES = 3
_ENV_EXAMPLE = ".env.example"
_FIX_IN_ENV = "Set it in the environment or in .env (see .env.example)."


class Status(str, Enum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Charge:
    """Whether a failed (or passed) call is likely to appear on the bill, and why."""

    likely: str  # "no", "unlikely", "possible" or "yes"
    reason: str


@dataclass(frozen=True)
class CheckResult:
    id: str
    title: str
    status: Status
    detail: str
    duration_ms: float | None = None
    hint: str | None = None
    # Set when a gateway call (or the way to the gateway) failed: the taxonomy's category, the
    # gateway's own words and its request id.
    error: GatewayError | None = None
    request_id: str | None = None  # the X-Request-ID this check sent
    upstream_request_id: str | None = None
    charge: Charge | None = None
    blocked_by: str | None = None  # a skip caused by this earlier check's failure

    @property
    def blocks(self) -> bool:
        """True if checks that need this one must be skipped."""
        return self.status is Status.FAIL or self.blocked_by is not None


@dataclass(frozen=True)
class DoctorReport:
    checks: tuple[CheckResult, ...]
    started_at: datetime
    duration_ms: float
    model: str
    gateway_host: str  # host[:port] of the base URL, never its path, query or credentials
    gateway_scheme: str
    timeout_s: float
    key_shown: str  # the key masked to its last four characters, or "not set"

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[CheckResult]:
        return [check for check in self.checks if check.status is Status.FAIL]

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        return {status.value: sum(c.status is status for c in self.checks) for status in Status}

    def summary(self) -> str:
        counts = self.counts()
        warnings = "warning" if counts["warn"] == 1 else "warnings"
        return (
            f"{counts['fail']} failed, {counts['warn']} {warnings}, {counts['pass']} passed, "
            f"{counts['skip']} skipped"
        )


# -- configuration, read the way `Settings` reads it -------------------------------------------


class _RawValues(BaseSettings):
    """The values as written (environment, then `.env`), before validation, so that each
    setting gets its own verdict even when another one is invalid."""

    model_config = Settings.model_config

    api_key: str | None = Field(None, validation_alias=ENV_NAMES["api_key"])
    base_url: str | None = Field(None, validation_alias=ENV_NAMES["base_url"])
    model: str | None = Field(None, validation_alias=ENV_NAMES["model"])
    timeout_s: str | None = Field(None, validation_alias=ENV_NAMES["timeout_s"])


@dataclass(frozen=True)
class _Config:
    settings: Settings | None
    problems: dict[str, str]  # setting name -> "ENV_NAME what is wrong"
    key: str
    key_source: str
    base_url: str
    model: str
    timeout_s: float


def _load_config() -> _Config:
    problems: dict[str, str] = {}
    try:
        raw = _RawValues()
    except (OSError, ValueError) as exc:  # an unreadable or undecodable .env
        raw = _RawValues.model_construct(api_key=None, base_url=None, model=None, timeout_s=None)
        problems["settings"] = f"cannot read {_ENV_FILE}: {type(exc).__name__}: {exc}"
    settings: Settings | None = None
    try:
        settings = Settings()
    except ValidationError as exc:
        problems.update(_problems(exc))
    except (OSError, ValueError) as exc:
        problems.setdefault("settings", f"cannot read {_ENV_FILE}: {type(exc).__name__}: {exc}")
    key = settings.api_key.get_secret_value() if settings else (raw.api_key or "")
    return _Config(
        settings=settings,
        problems=problems,
        key=key,
        key_source="the environment" if API_KEY_ENV in os.environ else _ENV_FILE,
        base_url=settings.base_url if settings else (raw.base_url or DEFAULT_BASE_URL).strip(),
        model=settings.model if settings else (raw.model or DEFAULT_MODEL),
        timeout_s=settings.timeout_s if settings else _timeout_or_default(raw.timeout_s),
    )


def _problems(exc: ValidationError) -> dict[str, str]:
    """One "ENV_NAME what is wrong" line per setting, keyed by the setting's name."""
    field_by_env = {env.upper(): name for name, env in ENV_NAMES.items()}
    found: dict[str, str] = {}
    for error in exc.errors(include_input=False, include_url=False):
        loc = str(error["loc"][0]) if error["loc"] else "settings"
        name = field_by_env.get(loc.upper(), loc)
        reason = (
            "is not set"
            if error["type"] == "missing"
            else error["msg"].removeprefix("Value error, ")
        )
        line = f"{ENV_NAMES.get(name, loc)} {reason}"
        found[name] = f"{found[name]}; {line}" if name in found else line
    return found


def _timeout_or_default(raw: str | None) -> float:
    default = float(Settings.model_fields["timeout_s"].default)
    try:
        value = float(raw) if raw is not None else default
    except ValueError:
        return default
    return value if 0 < value <= _MAX_TIMEOUT_S else default


# -- the gateway's address ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int

    @property
    def shown(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _proxy_for(target: _Target) -> str | None:
    """host:port of the proxy the SDK's transport would use for this URL (from the environment,
    as httpx does), or None. Never the proxy URL itself: it may hold credentials."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(target.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(target.host):
        return None
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.hostname or '?'}:{port}" if port else (parts.hostname or "?")


# -- running a check within its deadline -------------------------------------------------------


class _Overrun(Exception):
    """A check's share of the time budget ran out."""


def _within(deadline: float, work: Callable[[], T]) -> T:
    """`work()` in a daemon thread; raise `_Overrun` if it is not done by `deadline`
    (a `time.monotonic()` value). The thread is abandoned, never waited for: a hung DNS lookup
    or a silent socket cannot hold the doctor past its budget, nor the process at exit."""
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))

    worker = threading.Thread(target=target, name="doctor-check", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if not outcome:
        raise _Overrun
    done, value = outcome[0]
    if not done:
        raise value
    result: T = value
    return result


def _seconds(value: float) -> str:
    return f"{value:.3g} s"


def _ms(value: float) -> str:
    return f"{value:.0f} ms"


@dataclass(frozen=True)
class _Outcome:
    status: Status
    detail: str
    hint: str | None = None
    error: GatewayError | None = None
    request_id: str | None = None
    upstream_request_id: str | None = None
    charge: Charge | None = None


def _passed(detail: str, **extra: Any) -> _Outcome:
    return _Outcome(Status.PASS, detail, **extra)


def _failed(detail: str, hint: str, **extra: Any) -> _Outcome:
    return _Outcome(Status.FAIL, detail, hint, **extra)


def _skipped(detail: str) -> _Outcome:
    return _Outcome(Status.SKIP, detail)


_REFUSED = frozenset(
    {
        Category.AUTH,
        Category.QUOTA,
        Category.PERMISSION,
        Category.MODEL_NOT_FOUND,
        Category.BAD_BASE_URL,
        Category.INVALID_REQUEST,
        Category.RATE_LIMITED,
    }
)


_FREE = Charge("no", "listing the models generates nothing")


def charge_for(error: GatewayError, *, first_token_seen: bool = False) -> Charge:
    """How likely a failed call is billed, from its category (one-api bills what it generated;
    requests it refuses, and errors it returns instead of an answer, cost nothing)."""
    if error.category in _REFUSED:
        return Charge("no", "the gateway refused the request before generating anything")
    if error.category is Category.CONNECTION:
        return Charge("no", "the request did not get an answer from the gateway")
    if error.category is Category.UPSTREAM_UNAVAILABLE:
        return Charge("unlikely", "the gateway answered with an error instead of an answer")
    if first_token_seen:
        return Charge("possible", "tokens were generated before the stream broke off")
    return Charge("possible", "the gateway may have generated an answer that nobody read")


# -- the doctor ---------------------------------------------------------------------------------


@dataclass
class _StreamWatch:
    """What the stream worker has seen so far, readable when its time runs out."""

    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    deltas: int = 0
    stream: ChatStream | None = None

    def ttft_ms(self) -> float | None:
        if self.first_token_at is None:
            return None
        return (self.first_token_at - self.started) * 1000

    def close(self) -> None:
        """Stop the stream from another thread (best effort: the worker is abandoned anyway)."""
        if self.stream is not None:
            with contextlib.suppress(Exception):
                self.stream.close()


class _Doctor:
    def __init__(self, config: _Config) -> None:
        self.config = config
        self.results: dict[str, CheckResult] = {}
        self.started = time.monotonic()
        self.started_at = datetime.now(timezone.utc)
        self.check_started = self.started
        self.deadline = self.started + TOTAL_SHARE * config.timeout_s
        self.target: _Target | None = None
        self.proxy: str | None = None
        self.addresses: list[tuple[int, tuple[Any, ...]]] = []
        self.reachable: tuple[int, tuple[Any, ...]] | None = None
        self.tracked: list[Path] | None = None
        self.model_ids: list[str] = []
        self._client: OpenAI | None = None

    # -- bookkeeping ---------------------------------------------------------------------------

    def clean(self, text: str) -> str:
        return redact(text, [self.config.key] if self.config.key else [])

    def run(
        self,
        check_id: str,
        title: str,
        check: Callable[[float], _Outcome],
        needs: Sequence[str] = (),
    ) -> None:
        for need in needs:
            earlier = self.results[need]
            if earlier.blocks:
                cause = self.results[earlier.blocked_by or need]
                self._add(
                    CheckResult(
                        check_id,
                        title,
                        Status.SKIP,
                        f"needs the {cause.title} check, which failed",
                        blocked_by=cause.id,
                    )
                )
                return
        now = self.check_started = time.monotonic()
        limit = self.deadline - now
        share = BUDGET_SHARES.get(check_id)
        if share is not None:
            limit = min(limit, share * self.config.timeout_s)
        started = time.perf_counter()
        if limit <= 0:
            outcome = _failed(
                "not run: the doctor's time budget (2 x ALLTKN_TIMEOUT_S) is spent",
                "Raise ALLTKN_TIMEOUT_S, or look at the slow checks above.",
            )
        else:
            try:
                outcome = check(now + limit)
            except Exception as exc:  # a bug here must still give a report, not a traceback
                outcome = _failed(
                    f"the check itself failed: {type(exc).__name__}: {exc}",
                    "This is a bug in the doctor; please report it with this output.",
                )
        duration = None if outcome.status is Status.SKIP else _elapsed_ms(started)
        error = outcome.error
        if error is not None:
            error = replace(
                error,
                upstream_message=self.clean(error.upstream_message),
                upstream_request_id=error.upstream_request_id,
            )
        self._add(
            CheckResult(
                check_id,
                title,
                outcome.status,
                self.clean(outcome.detail),
                duration,
                self.clean(outcome.hint) if outcome.hint else None,
                error,
                outcome.request_id,
                outcome.upstream_request_id or (error.upstream_request_id if error else None),
                outcome.charge,
            )
        )

    def _add(self, result: CheckResult) -> None:
        self.results[result.id] = result

    def client(self, deadline: float) -> OpenAI:
        """The project's client, without retries and with the time this check has left."""
        settings = self.config.settings
        if settings is None:  # the key, settings and base URL checks passed, so it loaded
            raise RuntimeError("settings did not load")
        if self._client is None:
            self._client = create_client(settings)
        remaining = max(0.01, deadline - time.monotonic())
        return self._client.with_options(timeout=remaining, max_retries=0)

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()

    def report(self) -> DoctorReport:
        target = self.target
        host = target.shown if target else (_host_of(self.config.base_url) or "?")
        scheme = target.scheme if target else urlsplit(self.config.base_url).scheme
        return DoctorReport(
            checks=tuple(self.results.values()),
            started_at=self.started_at,
            duration_ms=round((time.monotonic() - self.started) * 1000, 1),
            model=self.config.model,
            gateway_host=host,
            gateway_scheme=scheme,
            timeout_s=self.config.timeout_s,
            key_shown=mask(self.config.key) if self.config.key else "not set",
        )

    # -- local checks --------------------------------------------------------------------------

    def check_key(self, deadline: float) -> _Outcome:
        config = self.config
        problem = config.problems.get("api_key")
        if problem is not None:
            shown = f" (it holds {mask(config.key)})" if config.key else ""
            return _failed(
                f"{problem}{shown}",
                f"Set {API_KEY_ENV} to the key from the gateway's console, alone (no quotes, "
                f"no 'Bearer '), in the environment or in {_ENV_FILE} (see {_ENV_EXAMPLE}).",
            )
        shown = f"{API_KEY_ENV} = {mask(config.key)}, from {config.key_source}"
        if KEY_SHAPE.fullmatch(config.key):
            return _passed(f"{shown} ({KEY_SHAPE_TEXT})")
        return _Outcome(
            Status.WARN,
            f"{shown}: {len(config.key)} characters, not the usual {KEY_SHAPE_TEXT}",
            "If the gateway issued it like this, ignore this; otherwise copy the whole key again "
            "from the gateway's console.",
        )

    def check_env_file(self, deadline: float) -> _Outcome:
        if shutil.which("git") is None:
            return _skipped("git is not installed")
        self.tracked = _within(deadline, lambda: tracked_files(Path.cwd()))
        if self.tracked is None:
            return _skipped("not inside a git work tree")
        cwd = Path.cwd()
        env_files = [
            path.relative_to(cwd).as_posix()
            for path in self.tracked
            if path.name.startswith(_ENV_FILE) and path.name != _ENV_EXAMPLE
        ]
        if env_files:
            return _failed(
                f"git tracks {', '.join(env_files)}",
                "Untrack it (git rm --cached <file>; keep .env* in .gitignore) and rotate the "
                "key: anything once committed stays in the history of every clone.",
            )
        if not (cwd / _ENV_FILE).exists():
            return _passed(f"no {_ENV_FILE} here, and git tracks none")
        ignored = _git(["check-ignore", "-q", _ENV_FILE], deadline)
        if ignored != 0:
            return _Outcome(
                Status.WARN,
                f"{_ENV_FILE} is not tracked, but git does not ignore it either",
                f"Add {_ENV_FILE} to .gitignore, so that 'git add .' cannot commit it.",
            )
        return _passed(f"{_ENV_FILE} is ignored by git and not tracked")

    def check_key_in_git(self, deadline: float) -> _Outcome:
        if self.tracked is None:
            return _skipped(self.results["env_file"].detail)
        needle = self.config.key.encode()
        cwd = Path.cwd()
        hits: list[str] = []
        for searched, path in enumerate(self.tracked):
            if time.monotonic() > deadline:
                return _Outcome(
                    Status.WARN,
                    f"searched {searched} of {len(self.tracked)} tracked files before the time "
                    "ran out; the key was in none of them",
                    f"Run python -m {__package__}.secret_scan --env {API_KEY_ENV} for a full scan.",
                )
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found = data.find(needle)
            if found >= 0:
                line = data.count(b"\n", 0, found) + 1
                hits.append(f"{path.relative_to(cwd).as_posix()}:{line}")
        if hits:
            return _failed(
                f"the key is in {len(hits)} tracked file(s): {', '.join(hits[:5])}",
                "Remove it from those files and rotate the key: anything once committed stays "
                "in the history of every clone.",
            )
        return _passed(f"the key is in none of the {len(self.tracked)} tracked files")

    def check_settings(self, deadline: float) -> _Outcome:
        others = [
            problem
            for name, problem in self.config.problems.items()
            if name not in ("api_key", "base_url")
        ]
        if others:
            return _failed("; ".join(others), f"Fix the variable(s) named. {_FIX_IN_ENV}")
        settings = self.config.settings
        retries = f", retries {settings.max_retries}" if settings else ""
        return _passed(f"model {self.config.model}, timeout {self.config.timeout_s:g} s{retries}")

    def check_base_url(self, deadline: float) -> _Outcome:
        url = self.config.base_url
        hint = (
            "Set ALLTKN_BASE_URL to the gateway's /api/v1 root, e.g. "
            f"{DEFAULT_BASE_URL} (no /chat/completions, no query, no credentials)."
        )
        problem = self.config.problems.get("base_url")
        if problem is not None:
            return _failed(problem, hint)
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            return _failed("ALLTKN_BASE_URL has an invalid port", hint)
        if parts.username is not None or parts.password is not None:
            return _failed("ALLTKN_BASE_URL holds credentials (user:password@)", hint)
        if parts.query or parts.fragment:
            return _failed("ALLTKN_BASE_URL has a query string or a fragment", hint)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            return _failed("ALLTKN_BASE_URL is not an http(s) URL with a host", hint)
        path = parts.path.rstrip("/")
        shown = f"{parts.scheme}://{parts.netloc}{path}"
        if path.endswith(_ENDPOINT_SUFFIXES):
            return _failed(f"{shown} names an endpoint, not the API root", hint)
        self.target = _Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80))
        if parts.scheme == "http":
            if not _is_loopback(host):
                self.target = None
                return _failed(
                    f"{shown} is plain http to another host: the key would cross the network "
                    "in clear text",
                    "Use the gateway's https:// address.",
                )
            warning = f"{shown}: plain http to a loopback address (a local or fake gateway)"
            return _Outcome(Status.WARN, warning, "Fine for testing; use https in production.")
        if not re.search(r"/v\d+$", path):
            return _Outcome(
                Status.WARN,
                f"{shown}: the path is not an /api/v1-style root",
                "Check the path against the gateway's docs; GET /models below will tell.",
            )
        return _passed(shown)

    def check_openai_env(self, deadline: float) -> _Outcome:
        names = sorted(name for name in os.environ if name.upper().startswith("OPENAI_"))
        if not names:
            return _passed("no OPENAI_* variables set")
        return _Outcome(
            Status.WARN,
            f"set, and ignored by this project: {', '.join(names)}",
            "This project passes the gateway's URL and key explicitly; unset them unless "
            "another tool on this host needs them (the SDK would use them by default).",
        )

    # -- the way to the gateway ----------------------------------------------------------------

    def check_dns(self, deadline: float) -> _Outcome:
        target = self._target()
        self.proxy = _proxy_for(target)
        if self.proxy is not None:
            return _skipped(
                f"requests go through the proxy {self.proxy} (from the *_PROXY "
                "variables); GET /models below tests the way through it"
            )
        try:
            infos = _within(
                deadline,
                lambda: socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM),
            )
        except _Overrun:
            return self._connection_failed(
                f"no DNS answer for {target.host} within {_seconds(self.limit_of(deadline))}",
                "The resolver does not answer: check this host's DNS settings "
                "(/etc/resolv.conf), or set HTTPS_PROXY if it must use a proxy.",
                "DNS lookup timed out",
            )
        except OSError as exc:
            return self._connection_failed(
                f"cannot resolve {target.host}: {exc.strerror or exc}",
                "Check the host name in ALLTKN_BASE_URL, and this host's DNS settings.",
                f"{type(exc).__name__}: {exc}",
            )
        seen: set[str] = set()
        for family, _, _, _, sockaddr in infos:
            if str(sockaddr[0]) not in seen:
                seen.add(str(sockaddr[0]))
                self.addresses.append((int(family), tuple(sockaddr)))
        if _is_ip(target.host):
            return _passed(f"{target.host} is an IP address: nothing to resolve")
        ips = [str(sockaddr[0]) for _, sockaddr in self.addresses]
        shown = ", ".join(ips[:_SHOWN_ADDRESSES]) + (", ..." if len(ips) > _SHOWN_ADDRESSES else "")
        return _passed(f"{target.host} -> {shown}")

    def check_tcp(self, deadline: float) -> _Outcome:
        target = self._target()
        if self.proxy is not None:
            return _skipped(f"connections go through the proxy {self.proxy}")
        refused: OSError | None = None
        for family, sockaddr in self.addresses:
            shown = _address(sockaddr)
            try:
                _within(deadline, functools.partial(_connect, family, sockaddr, deadline))
            except (_Overrun, TimeoutError):
                return self._connection_failed(
                    f"no answer from {shown} within {_seconds(self.limit_of(deadline))}",
                    "A firewall or a missing route drops the connection: check the network "
                    "path from this host, or set HTTPS_PROXY if it must use a proxy.",
                    "TCP connect timed out",
                )
            except OSError as exc:
                refused = exc
                continue
            self.reachable = (family, sockaddr)
            return _passed(f"{shown} accepts connections")
        if isinstance(refused, ConnectionRefusedError):
            return self._connection_failed(
                f"{target.shown} refused the connection: nothing listens there",
                f"Check the host and port in ALLTKN_BASE_URL ({target.shown}), and that the "
                "gateway is running there.",
                f"{type(refused).__name__}: {refused}",
            )
        return self._connection_failed(
            f"cannot connect to {target.shown}: {refused}",
            "Check ALLTKN_BASE_URL, and the firewall and proxy settings of this host.",
            f"{type(refused).__name__}: {refused}",
        )

    def check_tls(self, deadline: float) -> _Outcome:
        target = self._target()
        if target.scheme == "http":
            return _skipped("plain http, no TLS")
        if self.proxy is not None:
            return _skipped(f"TLS is negotiated through the proxy {self.proxy}")
        if self.reachable is None:
            raise RuntimeError("TLS check without a reachable address")
        family, sockaddr = self.reachable
        try:
            version, expires = _within(
                deadline, lambda: _handshake(family, sockaddr, target.host, deadline)
            )
        except (_Overrun, TimeoutError):
            return self._connection_failed(
                f"no TLS handshake with {target.shown} within {_seconds(self.limit_of(deadline))}",
                "Something at that address accepts connections but does not answer TLS: "
                "check the scheme and port of ALLTKN_BASE_URL.",
                "TLS handshake timed out",
            )
        except ssl.SSLCertVerificationError as exc:
            return self._connection_failed(
                f"the certificate of {target.host} is not trusted: {exc.verify_message}",
                "Update this host's CA certificates (ca-certificates); behind a TLS-inspecting "
                "proxy, point SSL_CERT_FILE at a bundle that holds its CA.",
                f"{type(exc).__name__}: {exc}",
            )
        except (ssl.SSLError, OSError) as exc:
            return self._connection_failed(
                f"TLS handshake with {target.shown} failed: {exc}",
                f"Something at {target.shown} does not speak TLS: check the scheme (https or "
                "http) and the port of ALLTKN_BASE_URL.",
                f"{type(exc).__name__}: {exc}",
            )
        if expires is None:
            return _passed(version)
        days = int((expires - time.time()) // 86400)
        until = datetime.fromtimestamp(expires, timezone.utc).strftime("%Y-%m-%d")
        detail = f"{version}, certificate valid until {until} ({days} days)"
        if days < CERT_WARN_DAYS:
            return _Outcome(
                Status.WARN, detail, "Tell the gateway's operators: the certificate expires soon."
            )
        return _passed(detail)

    # -- the gateway ---------------------------------------------------------------------------

    def check_auth(self, deadline: float) -> _Outcome:
        client = self.client(deadline)

        def list_models() -> tuple[list[str], str | None]:
            raw = client.models.with_raw_response.list()
            page = raw.parse()
            return [model.id for model in page.data], request_id_from_headers(raw.headers)

        try:
            self.model_ids, upstream_id = _within(deadline, list_models)
        except _Overrun:
            error = GatewayError(
                Category.TIMEOUT,
                f"no answer to GET /models within {_seconds(self.limit_of(deadline))}",
            )
            return self._gateway_failed("GET /models", error, charge=_FREE)
        except (*UPSTREAM_ERRORS, AttributeError) as exc:  # AttributeError: not a model list
            # `classify` keeps the transport's cause of a connection error or timeout, as the
            # chat calls' errors do.
            return self._gateway_failed("GET /models", classify(exc), charge=_FREE)
        return _passed(
            f"GET /models: the key is accepted, {len(self.model_ids)} models",
            upstream_request_id=upstream_id,
        )

    def check_model_listed(self, deadline: float) -> _Outcome:
        model = self.config.model
        listed = len(self.model_ids)
        if model in self.model_ids:
            return self._fallbacks_listed(f"{model} is one of the {listed} models this key can use")
        close = difflib.get_close_matches(model, self.model_ids, n=3)
        detail = f"{model} is not among the {listed} models GET /models lists for this key"
        if close:
            detail += f"; closest: {', '.join(close)}"
        error = GatewayError(Category.MODEL_NOT_FOUND, f"{model} is not in GET /models")
        return _failed(
            detail,
            "Set ALLTKN_MODEL to a listed model, or ask the key owner to give the key's group "
            "access to this one.",
            error=error,
            upstream_request_id=self.results["auth"].upstream_request_id,
            charge=_FREE,
        )

    def _fallbacks_listed(self, detail: str) -> _Outcome:
        """The rollback models (ALLTKN_FALLBACK_MODELS) must be usable too, before they are
        needed."""
        settings = self.config.settings
        fallbacks = settings.fallback_model_list if settings else ()
        missing = [name for name in fallbacks if name not in self.model_ids]
        if missing:
            return _Outcome(
                Status.WARN,
                f"{detail}; but ALLTKN_FALLBACK_MODELS names unlisted {', '.join(missing)}",
                "Fix ALLTKN_FALLBACK_MODELS now: a rollback to a model this key cannot use "
                "fails too.",
            )
        if fallbacks:
            detail += f"; so are the fallbacks {', '.join(fallbacks)}"
        return _passed(detail)

    def check_completion(self, deadline: float) -> _Outcome:
        service = ChatService(self.client(deadline), self.config.model)
        call = CallInfo(task="doctor")
        try:
            result = _within(deadline, lambda: service.complete(PROMPT, call=call))
        except _Overrun:
            error = GatewayError(
                Category.TIMEOUT,
                f"no answer within {_seconds(self.limit_of(deadline))} "
                f"({BUDGET_SHARES['completion']:g} x ALLTKN_TIMEOUT_S)",
            )
            return self._gateway_failed("", error, request_id=call.request_id)
        except GatewayError as error:
            return self._gateway_failed("", error, request_id=call.request_id)
        return _passed(
            f"{result.model} answered {_snippet(result.content)}{_tokens(result)}",
            request_id=call.request_id,
            upstream_request_id=result.upstream_request_id,
            charge=Charge("yes", "a few tokens"),
        )

    def check_stream(self, deadline: float) -> _Outcome:
        outcome = self._stream(deadline)
        settings = self.config.settings
        if outcome.status is Status.FAIL and settings is not None and settings.streaming == "off":
            # The service does not stream now; this tells whether it can again.
            return replace(
                outcome,
                status=Status.WARN,
                detail=f"{outcome.detail} (ALLTKN_STREAMING=off: the service does not stream)",
                hint=f"Fix this before setting ALLTKN_STREAMING=on again. {outcome.hint}",
            )
        return outcome

    def _stream(self, deadline: float) -> _Outcome:
        service = ChatService(self.client(deadline), self.config.model)
        call = CallInfo(task="doctor")
        watch = _StreamWatch()

        def consume() -> ChatResult:
            with service.open_stream(PROMPT, call=call) as stream:
                watch.stream = stream
                for _ in stream:
                    if watch.first_token_at is None:
                        watch.first_token_at = time.monotonic()
                    watch.deltas += 1
                    if time.monotonic() > deadline:
                        raise _Overrun
                return stream.result()

        try:
            result = _within(deadline, consume)
        except _Overrun:
            watch.close()
            limit = _seconds(self.limit_of(deadline))
            ttft = watch.ttft_ms()
            # The stream had opened, so its headers gave the gateway's request id.
            upstream_id = watch.stream.result().upstream_request_id if watch.stream else None
            if ttft is None:
                error = GatewayError(
                    Category.TIMEOUT, f"no first token within {limit}", upstream_id
                )
            else:
                error = GatewayError(
                    Category.STREAM_INTERRUPTED,
                    f"first token after {_ms(ttft)}, but the stream had not ended within {limit}",
                    upstream_id,
                )
            return self._gateway_failed(
                "", error, request_id=call.request_id, first_token_seen=ttft is not None
            )
        except GatewayError as error:
            return self._gateway_failed(
                "",
                error,
                request_id=call.request_id,
                first_token_seen=watch.first_token_at is not None,
            )
        ttft = watch.ttft_ms()
        total = (time.monotonic() - watch.started) * 1000
        first = f"first token after {_ms(ttft)}" if ttft is not None else "no content"
        return _passed(
            f"{first}, {watch.deltas} deltas, done in {_ms(total)}{_tokens(result)}",
            request_id=call.request_id,
            upstream_request_id=result.upstream_request_id,
            charge=Charge("yes", "a few tokens"),
        )

    # -- helpers -------------------------------------------------------------------------------

    def _target(self) -> _Target:
        if self.target is None:
            raise RuntimeError("network check without a usable base URL")
        return self.target

    def limit_of(self, deadline: float) -> float:
        """The time the running check was given."""
        return max(0.0, deadline - self.check_started)

    def _connection_failed(self, detail: str, hint: str, text: str) -> _Outcome:
        error = GatewayError(Category.CONNECTION, text)
        return _failed(
            detail, hint, error=error, charge=Charge("no", "nothing reached the gateway")
        )

    def _gateway_failed(
        self,
        what: str,
        error: GatewayError,
        *,
        request_id: str | None = None,
        first_token_seen: bool = False,
        charge: Charge | None = None,
    ) -> _Outcome:
        said = error.upstream_message or error.message
        prefix = f"{what}: " if what else ""
        return _failed(
            f"{prefix}error[{error.category.value}] {said}",
            error.hint,
            error=error,
            request_id=request_id,
            charge=charge or charge_for(error, first_token_seen=first_token_seen),
        )


def _host_of(url: str) -> str:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return ""
    if not host:
        return ""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _address(sockaddr: tuple[Any, ...]) -> str:
    host = str(sockaddr[0])
    return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"


def _connect(family: int, sockaddr: tuple[Any, ...], deadline: float) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        sock.connect(sockaddr)


def _handshake(
    family: int, sockaddr: tuple[Any, ...], host: str, deadline: float
) -> tuple[str, float | None]:
    """(TLS version, certificate expiry as a Unix time) after a verified handshake."""
    context = ssl.create_default_context()
    with socket.socket(family, socket.SOCK_STREAM) as raw:
        raw.settimeout(max(0.01, deadline - time.monotonic()))
        raw.connect(sockaddr)
        with context.wrap_socket(raw, server_hostname=host) as tls:
            cert = tls.getpeercert() or {}
            not_after = cert.get("notAfter")
            expires = ssl.cert_time_to_seconds(not_after) if isinstance(not_after, str) else None
            return tls.version() or "TLS", expires


def _git(args: list[str], deadline: float) -> int | None:
    """git's exit status, or None if it could not run in time."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed git subcommands, no shell
            ["git", *args],  # noqa: S607 - git from PATH, as the user runs it
            capture_output=True,
            check=False,
            timeout=max(0.01, deadline - time.monotonic()),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.returncode


def _snippet(text: str, limit: int = 40) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _tokens(result: ChatResult) -> str:
    return f" ({result.usage.total_tokens} tokens)" if result.usage else ""


# -- the run -----------------------------------------------------------------------------------


def run_doctor() -> DoctorReport:
    """Run every check against the gateway configured in the environment and `.env` (read from
    the current directory, like the service does) and return the report.

    Sets up logging the way the other commands do (JSON on stderr, key redaction), but keeps
    the per-call log lines quiet unless LOG_LEVEL=DEBUG: the report carries what they would.
    """
    config = _load_config()
    level = "DEBUG" if config.settings and config.settings.log_level == "DEBUG" else "ERROR"
    configure_logging(level, secrets=[config.key] if config.key else [])
    doctor = _Doctor(config)
    checks: list[tuple[str, str, Callable[[float], _Outcome], tuple[str, ...]]] = [
        ("key", "API key", doctor.check_key, ()),
        ("env_file", ".env not in git", doctor.check_env_file, ()),
        ("key_in_git", "key not in git", doctor.check_key_in_git, ("key",)),
        ("settings", "other settings", doctor.check_settings, ()),
        ("base_url", "base URL", doctor.check_base_url, ()),
        ("dns", "DNS", doctor.check_dns, ("base_url",)),
        ("tcp", "TCP", doctor.check_tcp, ("dns",)),
        ("tls", "TLS", doctor.check_tls, ("tcp",)),
        ("auth", "auth (GET /models)", doctor.check_auth, ("key", "settings", "tls")),
        ("model_listed", "model listed", doctor.check_model_listed, ("auth",)),
        ("completion", "completion", doctor.check_completion, ("auth",)),
        ("stream", "stream", doctor.check_stream, ("completion",)),
        ("openai_env", "OPENAI_* ignored", doctor.check_openai_env, ()),
    ]
    try:
        for check_id, title, check, needs in checks:
            doctor.run(check_id, title, check, needs)
    finally:
        doctor.close()
    return doctor.report()
