"""`doctor`: the pre-launch checklist, live against the gateway, within 2 x ALLTKN_TIMEOUT_S."""

from __future__ import annotations

import argparse
{%- if cookiecutter.framework == "fastapi" %}
import asyncio
{%- endif %}
import difflib
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import {% if cookiecutter.framework == "fastapi" %}Awaitable, {% endif %}Callable
from concurrent import futures
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

{% if cookiecutter.caller_auth == "keys" -%}
from .callers_doctor import CALLER_CHECKS, CallerChecks
{% endif -%}
from .chat import UPSTREAM_ERRORS, CallInfo, ChatResult
{%- if cookiecutter.framework == "fastapi" %}
from .chat_async import AsyncChatService, create_async_client
{%- else %}
from .chat_sync import ChatService, create_client
{%- endif %}
from .errors import Category, GatewayError, classify
from .logs import configure_logging
from .redaction import mask, redact
from .request import ChatRequest
from .settings import (
    DEFAULT_BASE_URL,
    KEY_ENV_VAR,
    ConfigError,
    Settings,
    base_url_problem,
    is_loopback_http,
    load_settings,
)
from .support import Check, Report, failed
{%- if cookiecutter.framework != "script" %}
from .web_doctor import WEB_CHECKS, WebChecks
{%- endif %}
{%- if cookiecutter.worker == "celery" %}
from .worker_doctor import WORKER_CHECKS, WorkerChecks
{%- endif %}

T = TypeVar("T")
# Shares of ALLTKN_TIMEOUT_S: each step's own limit, and the whole run's.
SHARES = {"git": 0.2, "models": 0.3, "step": 0.15, "completion": 0.5, "stream": 0.6, "all": 1.9}
KEY_SHAPE, KEY_SHAPE_TEXT = re.compile(r"sk-[A-Za-z0-9]{48}"), "sk- + 48 letters and digits"
PROMPT, MAX_TOKENS = "Count from 1 to 5, digits only, separated by spaces.", 16
URL_HINT = f"Set ALLTKN_BASE_URL to the gateway's https:// /api/v1 root, e.g. {DEFAULT_BASE_URL}."
# The documented key of the bundled fake gateway (tests/fake_gateway.py, `make try`): no secret.
FAKE_GATEWAY_KEY = "fake-key-for-the-fake-gateway"
ROTATE = "rotate the key: anything once committed stays in the history of every clone."
STEP_HINTS = {
    "DNS": "Check the host name in ALLTKN_BASE_URL, and this host's DNS (/etc/resolv.conf).",
    "TCP": "Check the host and port in ALLTKN_BASE_URL, and this host's firewall and proxy.",
    "TLS": "Check the scheme and port of ALLTKN_BASE_URL, and the CA certificates (SSL_CERT_FILE).",
}
CHECKS = {  # id: (title, the checks it needs), in the order they run
    "settings": ("settings", ()), "key": ("API key", ("settings",)),
    "env_file": (".env not in git", ()), "key_in_git": ("key not in git", ("key",)),
{%- if cookiecutter.caller_auth == "keys" %}
    **CALLER_CHECKS,  # the callers file and where their limits are counted
{%- endif %}
{%- if cookiecutter.framework != "script" %}
    **WEB_CHECKS,  # the Host names the service answers to
{%- endif %}
{%- if cookiecutter.worker == "celery" %}
    **WORKER_CHECKS,  # the queue's Redis, the visibility timeout
{%- endif %}
    "base_url": ("base URL", ("settings",)), "auth": ("auth (GET /models)", ("key", "base_url")),
    "model_listed": ("model listed", ("auth",)), "completion": ("completion", ("auth",)),
    "stream": ("stream", ("completion",)), "openai_env": ("OPENAI_* ignored", ()),
}  # fmt: skip


def _bounded(seconds: float, work: Callable[[], T]) -> T:
    """`work()` in a daemon thread, abandoned after `seconds`: nothing can hang the doctor."""
    future: futures.Future[T] = futures.Future()

    def target() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # handed to the caller's thread
            future.set_exception(exc)

    threading.Thread(target=target, daemon=True).start()
    return future.result(timeout=seconds)


# The live calls use the project's chat service (FastAPI: the async one, each in its own loop).
{%- if cookiecutter.framework == "fastapi" %}
Work = Callable[[AsyncChatService], Awaitable[T]]


async def _call(settings: Settings, work: Work[T]) -> T:
    async with create_async_client(settings) as client:
        return await work(AsyncChatService(client, settings))


async def _read(chat: AsyncChatService, r: ChatRequest, c: CallInfo, ts: list[float]) -> ChatResult:
    async with await chat.open_stream(r, c) as stream:
        async for _ in stream:
            ts.append(time.monotonic())
        return stream.result()
{%- else %}
Work = Callable[[ChatService], T]


def _call(settings: Settings, work: Work[T]) -> T:
    return work(ChatService(create_client(settings), settings))


def _read(chat: ChatService, r: ChatRequest, c: CallInfo, ts: list[float]) -> ChatResult:
    with chat.open_stream(r, c) as stream:
        for _ in stream:
            ts.append(time.monotonic())
        return stream.result()
{%- endif %}


{% set mixins = (["CallerChecks"] if cookiecutter.caller_auth == "keys" else []) + (["WebChecks"] if cookiecutter.framework != "script" else []) + (["WorkerChecks"] if cookiecutter.worker == "celery" else []) %}class _Doctor{% if mixins %}({{ mixins | join(", ") }}){% endif %}:
    def __init__(self) -> None:
        self.started, self.started_at = time.monotonic(), datetime.now(timezone.utc)
        try:
            self.settings, self.problem = load_settings(), ""
        except (ConfigError, OSError, ValueError) as exc:  # OSError, ValueError: a bad .env
            bad_env = f".env cannot be read: {type(exc).__name__}: {exc}"
            self.problem = str(exc) if isinstance(exc, ConfigError) else bad_env
            self.settings = Settings.model_construct(model="unknown", base_url="//unknown")
        self.key = "" if self.problem else self.settings.api_key.get_secret_value()
        self.timeout_s, self.model_ids = self.settings.timeout_s, list[str]()
        self.deadline = self.started + SHARES["all"] * self.timeout_s
        level = "DEBUG" if self.settings.log_level == "DEBUG" else "ERROR"  # the call logs: DEBUG
        configure_logging(level, secrets=[self.key])

    def report(self) -> Report:
        """Each check in order, or a skip naming the failed check it needs; timed and redacted."""
        rows: dict[str, Check] = {}
        cause: dict[str, str] = {}  # a skipped check: the failed check it waits for
        for check_id, (title, needs) in CHECKS.items():
            started = time.perf_counter()
            if bad := [n for n in needs if rows[n].status == "fail" or n in cause]:
                cause[check_id] = cause.get(bad[0], bad[0])
                row = Check("skip", f"needs the {rows[cause[check_id]].title} check, which failed")
            else:
                try:
                    row = getattr(self, f"check_{check_id}")()
                except Exception as exc:  # a bug here must still give a report, not a traceback
                    hint = "This is a bug in the doctor; please report it with this output."
                    row = Check("fail", f"the check failed: {type(exc).__name__}: {exc}", hint)
            if row.status != "skip":
                row.duration_ms = round((time.perf_counter() - started) * 1000, 1)
            row.id, row.title, row.detail = check_id, title, redact(row.detail, [self.key])
            row.hint, row.error = (redact(t, [self.key]) if t else t for t in (row.hint, row.error))
            rows[check_id] = row
        url, unset = urlsplit(self.settings.base_url), f"{KEY_ENV_VAR} is not set" in self.problem
        key = mask(self.key) if self.key else "not set" if unset else "unknown"
        took = round((time.monotonic() - self.started) * 1000, 1)
        shown = (self.settings.model, url.netloc.rpartition("@")[2], url.scheme, self.timeout_s)
        return Report(list(rows.values()), self.started_at, took, *shown, key)

    def check_settings(self) -> Check:
        if self.problem:  # ConfigError's one line names each variable to fix
            return Check("fail", self.problem, "The service would refuse to start with it too.")
        return Check("pass", f"model {self.settings.model}, timeout {self.timeout_s:g} s")

    def check_key(self) -> Check:
        source = "the environment" if KEY_ENV_VAR in os.environ else ".env"
        shown = f"{KEY_ENV_VAR} = {mask(self.key)}, from {source}"
        if KEY_SHAPE.fullmatch(self.key):
            return Check("pass", f"{shown} ({KEY_SHAPE_TEXT})")
        detail = f"{shown}: {len(self.key)} characters, not the usual {KEY_SHAPE_TEXT}"
        return Check("warn", detail, "If the gateway issued it so, fine; else copy it again.")

    def _git(self, *args: str, stdin: str = "") -> str | None:
        timeout, given = SHARES["git"] * self.timeout_s, stdin.encode()
        try:  # git from PATH, as the user runs it; None outside a work tree
            done = subprocess.run(["git", *args], input=given, capture_output=True, timeout=timeout)  # noqa: S603, S607
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.decode(errors="replace") if done.returncode < 2 else None

    def check_env_file(self) -> Check:
        # -t: "H path" for a tracked file, "? path" for one neither tracked nor ignored.
        if (listed := self._git("ls-files", "-zt", "-co", "--exclude-standard")) is None:
            return Check("skip", "not inside a git work tree")
        env = [(e[0], e[2:]) for e in listed.split("\0") if Path(e[2:]).name.startswith(".env")]
        if tracked := [path for tag, path in env if tag != "?" and path != ".env.example"]:
            hint = f"Untrack it (git rm --cached <file>; keep .env* in .gitignore) and {ROTATE}"
            return Check("fail", f"git tracks {', '.join(tracked)}", hint)
        if ("?", ".env") in env:
            hint = "Add .env to .gitignore, so that 'git add .' cannot commit it."
            return Check("warn", ".env is not tracked, but git does not ignore it either", hint)
        return Check("pass", ".env is ignored by git" if Path(".env").exists() else "no .env here")

    def check_key_in_git(self) -> Check:
        if self.key == FAKE_GATEWAY_KEY:
            return Check("pass", "the fake gateway's documented key, not a secret: not looked for")
        # Each hit is "path NUL line NUL key"; the key goes to git on stdin, never as an argument.
        if (found := self._git("grep", "-znoaF", "-f", "-", stdin=self.key)) is None:
            return Check("skip", "not inside a git work tree (or git did not answer in time)")
        if hits := [":".join(hit.split("\0")[:2]) for hit in found.splitlines()]:
            detail = f"the key is in tracked files, at {len(hits)} place(s): {', '.join(hits[:5])}"
            return Check("fail", detail, f"Remove it from those files and {ROTATE}")
        return Check("pass", "the key is in no file git tracks here")

    def check_base_url(self) -> Check:
        """The settings refuse a bad base URL (one rule: `settings.base_url_problem`)."""
        url = self.settings.base_url
        if problem := base_url_problem(url):
            return Check("fail", f"ALLTKN_BASE_URL {problem}", URL_HINT)
        if is_loopback_http(url):
            hint = "Fine for testing; use https in production."
            return Check("warn", f"{url}: plain http to a loopback address (a local gateway)", hint)
        return Check("pass", url)

    def _live(self, share: str, work: Work[T]) -> T:
        """`work(service)`, without retries or fallbacks, in its share of the time, or raises."""
        seconds = max(0.01, min(SHARES[share] * self.timeout_s, self.deadline - time.monotonic()))
        update = {"timeout_s": seconds, "max_retries": 0, "fallback_models": "", "streaming": "on"}
        settings = self.settings.model_copy(update=update)
        limit = max(0.01, min(1.5 * seconds, self.deadline - time.monotonic()))  # SDK: per read
        try:
            return _bounded(limit, lambda: {% if cookiecutter.framework == "fastapi" %}asyncio.run(_call(settings, work)){% else %}_call(settings, work){% endif %})
        except futures.TimeoutError:
            raise GatewayError(Category.TIMEOUT, f"no answer within {limit:.3g} s") from None
        except (*UPSTREAM_ERRORS, AttributeError) as exc:  # AttributeError: not a model list
            raise classify(exc) from None

    def check_auth(self) -> Check:
        try:
            page = self._live("models", lambda service: service.client.models.list())
        except GatewayError as error:
            row = failed(error, None)  # no request id: a listing, which generates nothing
            if error.category in (Category.CONNECTION, Category.TIMEOUT):
                step, hint = _diagnose(self.settings.base_url, SHARES["step"] * self.timeout_s)
                row.detail, row.hint = f"{step} (GET /models: {row.detail})", hint or row.hint
            return row
        self.model_ids = [model.id for model in page.data]
        return Check("pass", f"GET /models: the key is accepted, {len(self.model_ids)} models")

    def check_model_listed(self) -> Check:
        model, listed = self.settings.model, f"{len(self.model_ids)} models GET /models lists"
        if model not in self.model_ids:
            close = ", ".join(difflib.get_close_matches(model, self.model_ids, n=3)) or "none"
            hint = "Set ALLTKN_MODEL to a listed model, or ask the key owner for access to it."
            detail = f"{model} is not among the {listed}; closest: {close}"
            unsent = ("no", "nothing was sent")
            return Check("fail", detail, hint, "model_not_found", None, None, None, *unsent)
        fallbacks = self.settings.fallback_model_list
        if missing := ", ".join(name for name in fallbacks if name not in self.model_ids):
            detail = f"{model} is listed, but ALLTKN_FALLBACK_MODELS names unlisted {missing}"
            hint = "Fix ALLTKN_FALLBACK_MODELS now: a rollback to a model the key cannot use fails."
            return Check("warn", detail, hint)
        also = " and the fallbacks" if fallbacks else ""
        return Check("pass", f"{model}{also} among the {listed}")

    def check_completion(self, share: str = "completion") -> Check:
        """A completion, or a stream (`seen` gets the time of each delta)."""
        c, seen = CallInfo(task="doctor"), [time.monotonic()] if share == "stream" else []
        r = ChatRequest(prompt=PROMPT, max_tokens=min(MAX_TOKENS, self.settings.max_output_tokens))
        try:
            result = self._live(share, lambda s: _read(s, r, c, seen) if seen else s.complete(r, c))
        except GatewayError as error:
            return failed(error, c.request_id, first_token_seen=len(seen) > 1)
        detail = f"{result.model} answered {' '.join(result.content.split())[:40]!r}"
        if seen:  # a stream: the time to its first token (TTFT), or an empty answer
            ms = [f"{(t - seen[0]) * 1000:.0f} ms" for t in (*seen[1:2], time.monotonic())]
            first = f"first token after {ms[0]}, {len(seen) - 1} deltas" if seen[1:] else ""
            detail = f"{first or 'no content'}, done in {ms[-1]}"
        detail += f" ({result.usage.total_tokens} tokens)" if result.usage else ""
        ids, charge = (c.request_id, result.upstream_request_id), ("yes", "a few tokens")
        return Check("pass", detail, None, None, None, *ids, *charge)

    def check_stream(self) -> Check:
        row = self.check_completion("stream")
        if row.status == "fail" and self.settings.streaming == "off":  # can it be switched on?
            row.status, row.detail = "warn", f"{row.detail} (ALLTKN_STREAMING=off)"
            row.hint = f"Fix this before setting ALLTKN_STREAMING=on again. {row.hint}"
        return row

    def check_openai_env(self) -> Check:
        if not (names := sorted(n for n in os.environ if n.upper().startswith("OPENAI_"))):
            return Check("pass", "no OPENAI_* variables set")
        hint = "Unset them unless another tool needs them: the SDK would use them by default."
        return Check("warn", f"set, and ignored by this project: {', '.join(names)}", hint)


def _diagnose(url: str, seconds: float) -> tuple[str, str | None]:
    """The first of DNS, TCP and TLS that fails on the way to the gateway (or its proxy)."""
    parts, proxies, step = urlsplit(url), urllib.request.getproxies_environment(), "DNS"
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    where, tls, proxy = f"{host}:{port}", parts.scheme == "https", proxies.get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):  # by host and port: it may hold a password
        proxied = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port, tls = proxied.hostname or "", proxied.port or 80, False
        where = f"the proxy {host}:{port}"
    try:
        lookup = _bounded(seconds, lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        with socket.socket(lookup[0][0], socket.SOCK_STREAM) as sock:
            step = "TCP"
            sock.settimeout(seconds)
            sock.connect(lookup[0][4])
            step = "TLS"
            if tls:
                ssl.create_default_context().wrap_socket(sock, server_hostname=host).close()
    except (futures.TimeoutError, OSError) as exc:
        reason = getattr(exc, "verify_message", None) or str(exc) or "no answer in time"
        return f"{step}: {where}: {reason}", STEP_HINTS[step]
    return f"{'DNS, TCP and TLS' if tls else 'DNS and TCP'} work, but {where} did not answer", None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Exit 0 if no check failed; else 1, and save a report in support-reports/."
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the results as JSON")
    output.add_argument("--support", action="store_true", help="print a report for a ticket")


def main(args: argparse.Namespace) -> int:
    """Run every check (settings from the environment and `.env`, like the service); print."""
    return _Doctor().report().output("json" if args.json else "support" if args.support else "text")
