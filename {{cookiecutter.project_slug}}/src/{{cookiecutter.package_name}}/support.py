"""The doctor's report: its rows, their text and JSON, and the support report a ticket needs.

The support report has the client, template, Python, openai and framework versions, the model,
the gateway's host (never the URL), the UTC time, and for each failed check the gateway's own
words (verbatim, often Chinese), its request id, the category and whether a charge is likely.
The key shows only as its last four characters, and every text is redacted once more here.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Literal

from . import TEMPLATE_VERSION, __version__
from .client import CLIENT_HEADERS, CLIENT_NAME
from .errors import Category, GatewayError
from .redaction import redact
from .settings import API_KEY_ENV

{% if cookiecutter.framework == "fastapi" -%}
FRAMEWORK_DISTRIBUTIONS: tuple[str, ...] = ("fastapi", "uvicorn")
{% elif cookiecutter.framework == "flask" -%}
FRAMEWORK_DISTRIBUTIONS: tuple[str, ...] = ("flask", "gunicorn")
{% else -%}
FRAMEWORK_DISTRIBUTIONS: tuple[str, ...] = ()
{% endif -%}
REPORT_PREFIX = "support-report-"
STATUSES = ("pass", "warn", "fail", "skip")
NOTHING_GENERATED = {Category.AUTH, Category.QUOTA, Category.PERMISSION, Category.CONNECTION}
NOTHING_GENERATED |= {Category.MODEL_NOT_FOUND, Category.BAD_BASE_URL, Category.RATE_LIMITED}
NOTHING_GENERATED |= {Category.INVALID_REQUEST}


@dataclass
class Check:
    status: Literal["pass", "warn", "fail", "skip"]
    detail: str
    hint: str | None = None
    error: GatewayError | None = None  # a gateway call, or the way to the gateway, failed
    request_id: str | None = None  # the X-Request-ID this check sent
    upstream_request_id: str | None = None
    charge: tuple[str, str] | None = None  # (no | unlikely | possible | yes, why)
    id: str = ""
    title: str = ""
    duration_ms: float | None = None
    blocked_by: str | None = None  # skipped because this check failed


@dataclass
class Report:
    checks: list[Check]
    started_at: datetime
    duration_ms: float
    model: str
    gateway_host: str  # host[:port] of the base URL, never its path or credentials
    gateway_scheme: str
    timeout_s: float
    key_shown: str

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.status == "fail"]

    def summary(self) -> str:
        n = {status: sum(c.status == status for c in self.checks) for status in STATUSES}
        s = "" if n["warn"] == 1 else "s"
        return f"{n['fail']} failed, {n['warn']} warning{s}, {n['pass']} passed, {n['skip']} skipped"


def charge_for(error: GatewayError, first_token_seen: bool = False) -> tuple[str, str]:
    """Whether a failed call is likely billed (one-api bills what it generated)."""
    if error.category in NOTHING_GENERATED:
        return "no", "the gateway refused the request, or never got it: it generated nothing"
    if error.category is Category.UPSTREAM_UNAVAILABLE:
        return "unlikely", "the gateway answered with an error instead of an answer"
    if first_token_seen:
        return "possible", "tokens were generated before the stream broke off"
    return "possible", "the gateway may have generated an answer that nobody read"


def versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    system = f"({platform.python_implementation()}) on {platform.system()} {platform.machine()}"
    framework = ", ".join(f"{name} {version(name)}" for name in FRAMEWORK_DISTRIBUTIONS)
    return {
        "client": f"{CLIENT_NAME} {__version__}",
        "template": TEMPLATE_VERSION,
        "python": f"{platform.python_version()} {system}",
        "openai": version("openai"),
        "framework": framework or "none (command-line script)",
    }


def _duration(ms: float) -> str:
    return "<1 ms" if ms < 1 else f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def render_rows(report: Report, *, hints: bool = True) -> list[str]:
    """STATUS, title, time, detail; the hint of a failure or warning below."""
    width, rows = max(len(check.title) for check in report.checks), []
    for c in report.checks:
        took = "" if c.duration_ms is None else _duration(c.duration_ms)
        rows.append(f"{c.status.upper():<4}  {c.title:<{width}}  {took:>7}  {c.detail}")
        if hints and c.hint and c.status in ("fail", "warn"):
            rows.append(f"{'':<4}  {'':<{width}}  {'':>7}  hint: {c.hint}")
    return rows


def render_text(report: Report) -> str:
    header = (
        f"{CLIENT_NAME} doctor: model {report.model} at {report.gateway_host}, ALLTKN_TIMEOUT_S="
        f"{report.timeout_s:g} (this run takes at most {2 * report.timeout_s:g} s)"
    )
    footer = f"{'FAILED' if report.failed else 'OK'}: {report.summary()} in "
    return redact("\n".join([header, *render_rows(report), footer + _duration(report.duration_ms)]))


def build_support_report(report: Report) -> str:
    """The report as text, ready to paste into a ticket; it never holds the key."""
    about = versions()
    facts = {
        "Time": report.started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "Client": f"{about['client']} (X-Client-Name: {CLIENT_HEADERS['X-Client-Name']})",
        "Template version": about["template"],
        "Python": about["python"],
        "openai": about["openai"],
        "Framework": about["framework"],
        "Model": report.model,
        "Gateway host": f"{report.gateway_host} ({report.gateway_scheme or '?'})",
        "Key": f"{API_KEY_ENV} = {report.key_shown} (last 4 characters only)",
        "Timeout": f"ALLTKN_TIMEOUT_S = {report.timeout_s:g} s",
        "Result": report.summary(),
    }
    lines = ["ALLTKN support report (generated by doctor; it holds no key)", ""]
    lines += [f"{label + ':':<22} {value}" for label, value in facts.items()]
    lines += ["", "Failed checks", "-------------"] if report.failed else ["", "Every check passed."]
    for c in report.failed:
        e, charge = c.error, f"{c.charge[0]}: {c.charge[1]}" if c.charge else "no"
        failure = {
            "Category": e.category.value if e else "none: checked on this host, nothing sent",
            "Error text": (e.upstream_message or "(none)") if e else None,
            "Gateway request id": (c.upstream_request_id or "(none)") if e else None,
            "Our request id": f"{c.request_id} (sent as X-Request-ID)" if c.request_id else None,
            "Charge likely": charge,
            "Hint": c.hint,
        }
        lines += [f"{c.title}: {c.detail}"]
        lines += [f"  {k + ':':<20} {v}" for k, v in failure.items() if v is not None] + [""]
    lines += ["", "All checks", "----------", *render_rows(report, hints=False), ""]
    return redact("\n".join(lines))


def report_json(report: Report, support_report: Path | None) -> str:
    """`doctor --json`: the same facts for machines."""
    checks = [
        {
            **{k: getattr(c, k) for k in ("id", "title", "status", "duration_ms", "detail", "hint")},
            "category": c.error.category.value if c.error else None,
            "error": c.error.upstream_message if c.error else None,
            "request_id": c.request_id,
            "upstream_request_id": c.upstream_request_id,
            "charge": c.charge[0] if c.charge else None,
            "charge_reason": c.charge[1] if c.charge else None,
        }
        for c in report.checks
    ]
    document = {
        "ok": not report.failed,
        "exit_code": 1 if report.failed else 0,
        "time": report.started_at.isoformat().replace("+00:00", "Z"),
        **{k: getattr(report, k) for k in ("duration_ms", "model", "gateway_host", "timeout_s")},
        "versions": versions(),
        "key": report.key_shown,
        "summary": {status: sum(c.status == status for c in report.checks) for status in STATUSES},
        "checks": checks,
        "support_report": str(support_report) if support_report else None,
    }
    return redact(json.dumps(document, ensure_ascii=False, indent=2))


def write_support_report(text: str, report: Report, directory: Path) -> Path:
    """`support-report-<UTC time>.txt` in `directory`, never overwriting; OSError if it fails."""
    stamp = report.started_at.strftime("%Y%m%dT%H%M%SZ")
    for suffix in ["", *(f"-{n}" for n in range(2, 100))]:
        path = directory / f"{REPORT_PREFIX}{stamp}{suffix}.txt"
        try:
            with path.open("x", encoding="utf-8") as file:
                file.write(text)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{directory / REPORT_PREFIX}{stamp}*.txt: too many reports")


def output(report: Report, mode: Literal["text", "json", "support"]) -> int:
    """Print the report; a failed run also writes the support report to the current directory."""
    text, saved = build_support_report(report), None
    if report.failed:
        try:
            saved = write_support_report(text, report, Path.cwd()).resolve()
        except OSError as exc:
            again = f"run '{CLIENT_NAME} doctor --support' and copy its output instead"
            print(f"doctor: could not write the support report ({exc}); {again}", file=sys.stderr)
    shown = {"json": lambda: report_json(report, saved), "support": lambda: text}
    printed = shown.get(mode, lambda: render_text(report))()
    try:
        print(printed)
    except UnicodeEncodeError:  # a terminal that cannot show the gateway's Chinese text
        encoding = sys.stdout.encoding or "ascii"
        print(printed.encode(encoding, "backslashreplace").decode(encoding))
    if saved is not None:
        where = sys.stdout if mode == "text" else sys.stderr
        print(f"Support report: {saved} (paste it into a ticket; it holds no key)", file=where)
    return 1 if report.failed else 0
