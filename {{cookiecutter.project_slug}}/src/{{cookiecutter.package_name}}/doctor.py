"""`doctor`: the pre-launch checklist, run live against the configured gateway.

One row per check: pass, warn, fail, or skip naming the failed check it needs. Settings come
from `load_settings()`, and its problems are rows. The live checks use this project's chat
service: GET /models (free), one short completion, one short stream. If the gateway cannot be
reached, a diagnosis names the first of DNS, TCP and TLS that fails. The run ends within
2 x ALLTKN_TIMEOUT_S: each network step has a share of it, in a thread abandoned when it is up.
"""

from __future__ import annotations

import argparse
{%- if cookiecutter.framework == "fastapi" %}
import asyncio
{%- endif %}
import difflib
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from .chat import UPSTREAM_ERRORS, CallInfo, ChatResult
{%- if cookiecutter.framework == "fastapi" %}
from .chat_async import AsyncChatService, create_async_client
{%- else %}
from .chat_sync import ChatService, create_client
{%- endif %}
from .errors import Category, GatewayError, classify, request_id_from_headers
from .logs import configure_logging
from .redaction import mask, redact
from .request import ChatRequest
from .settings import API_KEY_ENV, DEFAULT_BASE_URL, ConfigError, Settings, load_settings
from .support import Check, Report, output

T = TypeVar("T")
# Shares of ALLTKN_TIMEOUT_S: each step's own limit, and the whole run's.
SHARES = {"git": 0.2, "models": 0.3, "step": 0.15, "completion": 0.5, "stream": 0.6}
TOTAL_SHARE = 1.9
KEY_SHAPE, KEY_SHAPE_TEXT = re.compile(r"sk-[A-Za-z0-9]{48}"), "sk- + 48 letters and digits"
PROMPT, MAX_TOKENS = "Count from 1 to 5, digits only, separated by spaces.", 16
URL_ENV, IN_ENV = "ALLTKN_BASE_URL", "in the environment or in .env (see .env.example)"
URL_HINT = f"Set {URL_ENV} to the gateway's /api/v1 root, e.g. {DEFAULT_BASE_URL}."
ENDPOINTS = ("/chat/completions", "/completions", "/responses", "/embeddings", "/models")
ROTATE = "rotate the key: anything once committed stays in the history of every clone."
NOTHING_GENERATED = {Category.AUTH, Category.QUOTA, Category.PERMISSION, Category.CONNECTION}
NOTHING_GENERATED |= {Category.MODEL_NOT_FOUND, Category.BAD_BASE_URL, Category.RATE_LIMITED}
NOTHING_GENERATED |= {Category.INVALID_REQUEST}
CHECKS = {  # id: (title, the checks it needs)
    "settings": ("settings", ()),
    "key": ("API key", ()),
    "env_file": (".env not in git", ()),
    "key_in_git": ("key not in git", ("key",)),
    "base_url": ("base URL", ()),
    "auth": ("auth (GET /models)", ("key", "settings", "base_url")),
    "model_listed": ("model listed", ("auth",)),
    "completion": ("completion", ("auth",)),
    "stream": ("stream", ("completion",)),
    "openai_env": ("OPENAI_* ignored", ()),
}


def charge_for(error: GatewayError, first_token_seen: bool = False) -> tuple[str, str]:
    """Whether a failed call is likely billed (one-api bills what it generated)."""
    if error.category in NOTHING_GENERATED:
        return "no", "the gateway refused the request, or never got it: it generated nothing"
    if error.category is Category.UPSTREAM_UNAVAILABLE:
        return "unlikely", "the gateway answered with an error instead of an answer"
    if first_token_seen:
        return "possible", "tokens were generated before the stream broke off"
    return "possible", "the gateway may have generated an answer that nobody read"


class _Overrun(Exception):
    """A network step's time ran out."""


def _bounded(seconds: float, work: Callable[[], T]) -> T:
    """`work()` in a daemon thread, abandoned after `seconds`: a hung DNS lookup or a silent
    socket holds neither the doctor nor the process at exit."""
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)

    worker = threading.Thread(target=target, name="doctor-step", daemon=True)
    worker.start()
    worker.join(max(0.0, seconds))
    if errors:
        raise errors[0]
    if not results:
        raise _Overrun
    return results[0]


# The live calls, by the service this project runs; `seen` gets the start and each delta's time.
{%- if cookiecutter.framework == "fastapi" %}
# Only the async service ships with FastAPI: each call runs in an event loop of its own.
def _models(settings: Settings) -> tuple[list[str], str | None]:
    async def run() -> tuple[list[str], str | None]:
        async with create_async_client(settings) as client:
            raw = await client.models.with_raw_response.list()
            return [model.id for model in raw.parse().data], request_id_from_headers(raw.headers)

    return asyncio.run(run())


def _complete(settings: Settings, request: ChatRequest, call: CallInfo) -> ChatResult:
    async def run() -> ChatResult:
        async with create_async_client(settings) as client:
            return await AsyncChatService(client, settings).complete(request, call)

    return asyncio.run(run())


def _stream(settings: Settings, request: ChatRequest, call: CallInfo, seen: list[float]) -> ChatResult:
    async def run() -> ChatResult:
        async with create_async_client(settings) as client:
            service = AsyncChatService(client, settings)
            async with await service.open_stream(request, call) as stream:
                async for _ in stream:
                    _delta(seen, stream.result(), settings.timeout_s)
                return stream.result()

    return asyncio.run(run())
{%- else %}
def _models(settings: Settings) -> tuple[list[str], str | None]:
    raw = create_client(settings).models.with_raw_response.list()
    return [model.id for model in raw.parse().data], request_id_from_headers(raw.headers)


def _complete(settings: Settings, request: ChatRequest, call: CallInfo) -> ChatResult:
    return ChatService(create_client(settings), settings).complete(request, call)


def _stream(settings: Settings, request: ChatRequest, call: CallInfo, seen: list[float]) -> ChatResult:
    with ChatService(create_client(settings), settings).open_stream(request, call) as stream:
        for _ in stream:
            _delta(seen, stream.result(), settings.timeout_s)
        return stream.result()
{%- endif %}


def _delta(seen: list[float], so_far: ChatResult, seconds: float) -> None:
    seen.append(time.monotonic())
    if seen[-1] - seen[0] > seconds:  # a stream that trickles on past its time
        text = f"first token after {_ms(seen[1] - seen[0])}, but no end within {seconds:.3g} s"
        raise GatewayError(Category.STREAM_INTERRUPTED, text, so_far.upstream_request_id)


class _Doctor:
    def __init__(self) -> None:
        self.started, self.started_at = time.monotonic(), datetime.now(timezone.utc)
        self.rows: dict[str, Check] = {}
        self.problems: dict[str, str] = {}
        self.settings: Settings | None = None
        try:
            self.settings = load_settings()
        except ConfigError as exc:
            self.problems = exc.problems or {"settings": str(exc)}
        except (OSError, ValueError) as exc:  # an unreadable or undecodable .env
            self.problems = {".env": f"cannot be read: {type(exc).__name__}: {exc}"}
        self.key = self.settings.api_key.get_secret_value() if self.settings else ""
        self.timeout_s = self.settings.timeout_s if self.settings else 60.0
        self.deadline = self.started + TOTAL_SHARE * self.timeout_s
        self.model_ids: list[str] = []

    def run(self, check_id: str, needs: tuple[str, ...]) -> None:
        started = time.perf_counter()
        blocked = [r.blocked_by or n for n in needs if (r := self.rows[n]).status == "fail" or r.blocked_by]
        try:
            row = self._needs(blocked[0]) if blocked else getattr(self, f"check_{check_id}")()
        except Exception as exc:  # a bug here must still give a report, not a traceback
            hint = "This is a bug in the doctor; please report it with this output."
            row = Check("fail", f"the check itself failed: {type(exc).__name__}: {exc}", hint)
        if row.status != "skip":
            row.duration_ms = round((time.perf_counter() - started) * 1000, 1)
        row.id, row.title, row.detail = check_id, CHECKS[check_id][0], self.clean(row.detail)
        row.hint = self.clean(row.hint) if row.hint else None
        if row.error is not None:
            row.error.upstream_message = self.clean(row.error.upstream_message)
        self.rows[check_id] = row

    def _needs(self, check_id: str) -> Check:
        detail = f"needs the {CHECKS[check_id][0]} check, which failed"
        return Check("skip", detail, blocked_by=check_id)

    def clean(self, text: str) -> str:
        return redact(text, [self.key] if self.key else [])

    def report(self) -> Report:
        url = urlsplit(self.settings.base_url if self.settings else "")
        missing = self.problems.get(API_KEY_ENV) == "is not set"
        return Report(
            list(self.rows.values()),
            self.started_at,
            round((time.monotonic() - self.started) * 1000, 1),
            self.settings.model if self.settings else "unknown",
            url.netloc.rpartition("@")[2] or "unknown",
            url.scheme,
            self.timeout_s,
            mask(self.key) if self.key else "not set" if missing else "unknown",
        )

    @property
    def s(self) -> Settings:  # for the checks that need "auth", so the settings loaded
        if self.settings is None:
            raise RuntimeError("the settings did not load")
        return self.settings

    def check_settings(self) -> Check:
        if others := {k: v for k, v in self.problems.items() if k not in (API_KEY_ENV, URL_ENV)}:
            detail = "; ".join(f"{name} {reason}" for name, reason in others.items())
            return Check("fail", detail, f"Fix the variables named, {IN_ENV}.")
        if (s := self.settings) is None:
            return Check("pass", "the others are valid")
        return Check("pass", f"model {s.model}, timeout {s.timeout_s:g} s, retries {s.max_retries}")

    def check_key(self) -> Check:
        if problem := self.problems.get(API_KEY_ENV):
            hint = f"Set {API_KEY_ENV} to the key from the gateway's console, alone, {IN_ENV}."
            return Check("fail", f"{API_KEY_ENV} {problem}", hint)
        if self.settings is None:
            return self._needs("settings")
        source = "the environment" if API_KEY_ENV in os.environ else ".env"
        shown = f"{API_KEY_ENV} = {mask(self.key)}, from {source}"
        if KEY_SHAPE.fullmatch(self.key):
            return Check("pass", f"{shown} ({KEY_SHAPE_TEXT})")
        detail = f"{shown}: {len(self.key)} characters, not the usual {KEY_SHAPE_TEXT}"
        hint = "If the gateway issued it so, ignore this; else copy it again from its console."
        return Check("warn", detail, hint)

    def _git(self, *args: str, given: str = "") -> str | None:
        """git's output here, or None outside a work tree (or without git)."""
        try:  # git from PATH, as the user runs it; fixed subcommands, no shell
            done = subprocess.run(  # noqa: S603
                ["git", *args],  # noqa: S607
                input=given.encode(),
                capture_output=True,
                timeout=SHARES["git"] * self.timeout_s,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.decode(errors="replace") if done.returncode < 2 else None

    def check_env_file(self) -> Check:
        if (listed := self._git("ls-files", "-z", "-t", "--cached", "--others", "--exclude-standard")) is None:
            return Check("skip", "not inside a git work tree")
        entries = (entry.partition(" ") for entry in listed.split("\0"))
        env = [(tag, path) for tag, _, path in entries if Path(path).name.startswith(".env")]
        if tracked := [path for tag, path in env if tag != "?" and path != ".env.example"]:
            hint = f"Untrack it (git rm --cached <file>; keep .env* in .gitignore) and {ROTATE}"
            return Check("fail", f"git tracks {', '.join(tracked)}", hint)
        if ("?", ".env") in env:
            hint = "Add .env to .gitignore, so that 'git add .' cannot commit it."
            return Check("warn", ".env is not tracked, but git does not ignore it either", hint)
        return Check("pass", ".env is ignored by git" if Path(".env").exists() else "no .env here")

    def check_key_in_git(self) -> Check:
        # -o: each hit is "path NUL line NUL key"; the key is read from stdin, never an argument.
        if (found := self._git("grep", "-z", "-n", "-o", "-a", "-F", "-f", "-", given=self.key)) is None:
            return Check("skip", "not inside a git work tree (or git did not answer in time)")
        if hits := [":".join(hit.split("\0")[:2]) for hit in found.splitlines()]:
            detail = f"the key is in {len(hits)} tracked file(s): {', '.join(hits[:5])}"
            return Check("fail", detail, f"Remove it from those files and {ROTATE}")
        return Check("pass", "the key is in no file git tracks here")

    def check_base_url(self) -> Check:
        if problem := self.problems.get(URL_ENV):
            return Check("fail", f"{URL_ENV} {problem}", URL_HINT)
        if self.settings is None:
            return self._needs("settings")
        url, parts = self.settings.base_url, urlsplit(self.settings.base_url)
        clear = parts.scheme == "http" and not _loopback(parts.hostname)
        wrong = [
            (parts.username is not None, "holds credentials (user:password@)"),
            (bool(parts.query or parts.fragment), "has a query string or a fragment"),
            (parts.path.endswith(ENDPOINTS), "names an endpoint, not the API root"),
            (clear, "is plain http to another host: the key would cross the network in clear text"),
        ]
        if found := [text for bad, text in wrong if bad]:
            return Check("fail", f"{URL_ENV} {found[0]}", f"{URL_HINT} Use https://.")
        if parts.scheme == "http":
            hint = "Fine for testing; use https in production."
            return Check("warn", f"{url}: plain http to a loopback address (a local gateway)", hint)
        if not re.search(r"/v\d+$", parts.path):
            hint = "Check the path against the gateway's docs; GET /models below will tell."
            return Check("warn", f"{url}: the path is not an /api/v1-style root", hint)
        return Check("pass", url)

    def _live(self, share: str, work: Callable[[Settings], T]) -> T:
        """`work` with the doctor's settings: no retries, no fallbacks, streaming on, and this
        step's share of the time as the timeout; a failure is a `GatewayError`."""
        seconds = min(SHARES[share] * self.timeout_s, self.deadline - time.monotonic())
        if seconds <= 0 or self.settings is None:
            raise GatewayError(Category.TIMEOUT, "not run: the doctor's time is up")
        update = {"timeout_s": seconds, "max_retries": 0, "fallback_models": "", "streaming": "on"}
        settings = self.settings.model_copy(update=update)
        try:
            return _bounded(1.5 * seconds, lambda: work(settings))
        except _Overrun:
            raise GatewayError(Category.TIMEOUT, f"no answer within {seconds:.3g} s") from None
        except (*UPSTREAM_ERRORS, AttributeError) as exc:  # AttributeError: not a model list
            raise classify(exc) from None

    def _failed(self, error: GatewayError, call: CallInfo | None, first: bool = False) -> Check:
        detail = f"error[{error.category.value}] {error.upstream_message or error.message}"
        charge = charge_for(error, first) if call else ("no", "listing models generates nothing")
        request_id = call.request_id if call else None
        return Check("fail", detail, error.hint, error, request_id, error.upstream_request_id, charge)

    def check_auth(self) -> Check:
        try:
            self.model_ids, upstream_id = self._live("models", _models)
        except GatewayError as error:
            row = self._failed(error, None)
            if error.category in (Category.CONNECTION, Category.TIMEOUT) and self.settings:
                step, hint = _diagnose(self.settings.base_url, SHARES["step"] * self.timeout_s)
                row.detail, row.hint = f"{step} (GET /models: {row.detail})", hint or row.hint
            return row
        detail = f"GET /models: the key is accepted, {len(self.model_ids)} models"
        return Check("pass", detail, upstream_request_id=upstream_id)

    def check_model_listed(self) -> Check:
        model, fallbacks = self.s.model, self.s.fallback_model_list
        if model not in self.model_ids:
            close = ", ".join(difflib.get_close_matches(model, self.model_ids, n=3))
            detail = f"{model} is not among the {len(self.model_ids)} models GET /models lists"
            hint = "Set ALLTKN_MODEL to a listed model, or ask the key owner for access to it."
            error = GatewayError(Category.MODEL_NOT_FOUND, f"{model} is not in GET /models")
            closest = f"; closest: {close}" if close else ""
            return Check("fail", detail + closest, hint, error, charge=("no", "nothing was sent"))
        detail = f"{model} is one of the {len(self.model_ids)} models this key can use"
        if missing := [name for name in fallbacks if name not in self.model_ids]:
            detail += f"; but ALLTKN_FALLBACK_MODELS names unlisted {', '.join(missing)}"
            hint = "Fix ALLTKN_FALLBACK_MODELS now: a rollback to a model the key cannot use fails."
            return Check("warn", detail, hint)
        return Check("pass", detail + (f"; so are the fallbacks {', '.join(fallbacks)}" if fallbacks else ""))

    def _request(self) -> ChatRequest:
        return ChatRequest(prompt=PROMPT, max_tokens=min(MAX_TOKENS, self.s.max_output_tokens))

    def check_completion(self) -> Check:
        call = CallInfo(task="doctor")
        try:
            result = self._live("completion", lambda s: _complete(s, self._request(), call))
        except GatewayError as error:
            return self._failed(error, call)
        detail = f"{result.model} answered {_snippet(result.content)}{_tokens(result)}"
        upstream_id, charge = result.upstream_request_id, ("yes", "a few tokens")
        return Check("pass", detail, None, None, call.request_id, upstream_id, charge)

    def check_stream(self) -> Check:
        call, seen = CallInfo(task="doctor"), [time.monotonic()]
        try:
            result = self._live("stream", lambda s: _stream(s, self._request(), call, seen))
        except GatewayError as error:
            row = self._failed(error, call, first=len(seen) > 1)
            if self.s.streaming == "off":  # not streaming now: can it be switched on?
                row.status, row.detail = "warn", f"{row.detail} (ALLTKN_STREAMING=off)"
                row.hint = f"Fix this before setting ALLTKN_STREAMING=on again. {row.hint}"
            return row
        first = f"first token after {_ms(seen[1] - seen[0])}" if len(seen) > 1 else "no content"
        took = f"{len(seen) - 1} deltas, done in {_ms(time.monotonic() - seen[0])}"
        upstream_id, charge = result.upstream_request_id, ("yes", "a few tokens")
        detail = f"{first}, {took}{_tokens(result)}"
        return Check("pass", detail, None, None, call.request_id, upstream_id, charge)

    def check_openai_env(self) -> Check:
        if not (names := sorted(n for n in os.environ if n.upper().startswith("OPENAI_"))):
            return Check("pass", "no OPENAI_* variables set")
        hint = "Unset them unless another tool needs them: the SDK would use them by default."
        return Check("warn", f"set, and ignored by this project: {', '.join(names)}", hint)


def _loopback(host: str | None) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _diagnose(url: str, seconds: float) -> tuple[str, str | None]:
    """The first of DNS, TCP and TLS that fails on the way to the gateway (or to the proxy the
    SDK takes from *_PROXY, by host and port: its URL may hold credentials), and what to do."""
    parts, proxies = urlsplit(url), urllib.request.getproxies_environment()
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    where, tls = f"{host}:{port}", parts.scheme == "https"
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass_environment(host):
        proxied = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port, tls = proxied.hostname or "", proxied.port or 80, False
        where = f"the proxy {host}:{port}"
    try:
        lookup = _bounded(seconds, lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        family, _, _, _, address = lookup[0]
    except (_Overrun, OSError) as exc:
        hint = "Check the host name in ALLTKN_BASE_URL, and this host's DNS (/etc/resolv.conf)."
        return f"DNS: cannot resolve {host}: {exc or 'no answer in time'}", hint
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(seconds)
        try:
            sock.connect(address)
        except OSError as exc:
            hint = f"Check the host and port in {URL_ENV}, and this host's firewall and proxy."
            return f"TCP: cannot connect to {where}: {exc}", hint
        try:
            if tls:
                ssl.create_default_context().wrap_socket(sock, server_hostname=host).close()
        except ssl.SSLCertVerificationError as exc:
            hint = "Update the CA certificates, or point SSL_CERT_FILE at a bundle with the CA."
            return f"TLS: the certificate of {host} is not trusted: {exc.verify_message}", hint
        except OSError as exc:
            hint = f"Something there does not speak TLS: check the scheme and port of {URL_ENV}."
            return f"TLS: no handshake with {where}: {exc}", hint
    return f"{'DNS, TCP and TLS' if tls else 'DNS and TCP'} work, but {where} did not answer", None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _snippet(text: str, limit: int = 40) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _tokens(result: ChatResult) -> str:
    return f" ({result.usage.total_tokens} tokens)" if result.usage else ""


def run() -> Report:
    """Every check, against the gateway the environment and `.env` (in the current directory,
    as the service reads it) configure. The per-call log lines only at LOG_LEVEL=DEBUG."""
    doctor = _Doctor()
    debug = doctor.settings is not None and doctor.settings.log_level == "DEBUG"
    configure_logging("DEBUG" if debug else "ERROR", secrets=[doctor.key] if doctor.key else [])
    for check_id, (_, needs) in CHECKS.items():
        doctor.run(check_id, needs)
    return doctor.report()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the pre-launch checklist live against the configured gateway (one short completion "
        "and one short stream). Exit 0 if no check failed (warnings allowed), 1 otherwise; a "
        "failed run also writes support-report-<UTC time>.txt to the current directory."
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the results as JSON")
    output.add_argument("--support", action="store_true", help="print a report for a ticket")


def main(args: argparse.Namespace) -> int:
    """Run and print; a failed run writes the support report. Exit 0, 1 or 130."""
    try:
        report = run()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return output(report, "json" if args.json else "support" if args.support else "text")
