"""The doctor's report: its rows, as text or JSON, and the support report for a ticket.

The support report holds versions, model, gateway host (never the URL), UTC time and, per failed
check, the gateway's own words, its request id, the category and whether a charge is likely.
No key: rows are redacted with the live key as they are made, every text again on the way out.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
Needs = tuple[str, ...]
NOTHING_GENERATED = {Category.AUTH, Category.QUOTA, Category.PERMISSION, Category.CONNECTION}
NOTHING_GENERATED |= {Category.MODEL_NOT_FOUND, Category.BAD_BASE_URL, Category.RATE_LIMITED}
NOTHING_GENERATED |= {Category.INVALID_REQUEST}
FAILURE_LABELS = {
    "category": "Category",
    "error": "Error text",
    "upstream_request_id": "Gateway request id",
    "request_id": "Our request id",
    "charge": "Charge likely",
    "hint": "Hint",
}


@dataclass
class Check:
    """One row; the fields are those of `doctor --json`, but `blocked_by`."""

    status: Literal["pass", "warn", "fail", "skip"]
    detail: str
    hint: str | None = None
    category: str | None = None  # set when a gateway call, or the way to it, failed
    error: str | None = None  # the gateway's (or the transport's) own words
    request_id: str | None = None  # the X-Request-ID this check sent
    upstream_request_id: str | None = None
    charge: str | None = None  # no | unlikely | possible | yes
    charge_reason: str | None = None
    id: str = ""
    title: str = ""
    duration_ms: float | None = None
    blocked_by: str | None = None  # skipped because this check failed


def failed(error: GatewayError, request_id: str | None, first_token_seen: bool = False) -> Check:
    """The row of a failed gateway call (`request_id` None: GET /models), and whether it is
    likely billed: one-api bills what it generated."""
    charge = ("no", "the gateway refused the request, or never got it: it generated nothing")
    if request_id is None:
        charge = ("no", "listing the models generates nothing")
    elif error.category is Category.UPSTREAM_UNAVAILABLE:
        charge = ("unlikely", "the gateway answered with an error instead of an answer")
    elif error.category not in NOTHING_GENERATED:
        charge = ("possible", "tokens were generated before the stream broke off")
        if not first_token_seen:
            charge = ("possible", "the gateway may have generated an answer that nobody read")
    said = error.upstream_message or error.message
    detail, upstream_id = f"error[{error.category.value}] {said}", error.upstream_request_id
    category, text = error.category.value, error.upstream_message
    return Check("fail", detail, error.hint, category, text, request_id, upstream_id, *charge)


def run_checks(checks: dict[str, tuple[str, Needs, Callable[[], Check]]], key: str) -> list[Check]:
    """Each check in order (id: title, the checks it needs, the check), or a skip naming the
    failed check it needs; timed, and redacted with the live key."""
    rows: dict[str, Check] = {}
    for check_id, (title, needs, check) in checks.items():
        started, failed = time.perf_counter(), [rows[n] for n in needs if _blocks(rows[n])]
        if failed:
            cause = failed[0].blocked_by or failed[0].id
            skip = f"needs the {rows[cause].title} check, which failed"
            row = Check("skip", skip, blocked_by=cause)
        else:
            try:
                row = check()
            except Exception as exc:  # a bug here must still give a report, not a traceback
                hint = "This is a bug in the doctor; please report it with this output."
                row = Check("fail", f"the check failed: {type(exc).__name__}: {exc}", hint)
            if row.status != "skip":
                row.duration_ms = round((time.perf_counter() - started) * 1000, 1)
        row.id, row.title, row.detail = check_id, title, redact(row.detail, [key])
        row.hint = redact(row.hint, [key]) if row.hint else None
        row.error = redact(row.error, [key]) if row.error else row.error
        rows[check_id] = row
    return list(rows.values())


def _blocks(row: Check) -> bool:
    return row.status == "fail" or row.blocked_by is not None


@dataclass
class Report:
    checks: list[Check]
    started_at: datetime
    duration_ms: float
    model: str
    gateway_host: str  # host[:port] of the base URL, never its path or credentials
    gateway_scheme: str
    timeout_s: float
    key: str  # the key masked to its last four characters, "not set" or "unknown"

    def counts(self) -> dict[str, int]:
        return {status: sum(c.status == status for c in self.checks) for status in STATUSES}

    def summary(self) -> str:
        n = self.counts()
        w = "warning" if n["warn"] == 1 else "warnings"
        return f"{n['fail']} failed, {n['warn']} {w}, {n['pass']} passed, {n['skip']} skipped"


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


def _took(ms: float) -> str:
    return "<1 ms" if ms < 1 else f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def render_rows(report: Report, *, hints: bool = True) -> list[str]:
    """STATUS, title, time, detail; below a failure or a warning, its hint."""
    width, rows = max(len(check.title) for check in report.checks), []
    for c in report.checks:
        took = "" if c.duration_ms is None else _took(c.duration_ms)
        rows.append(f"{c.status.upper():<4}  {c.title:<{width}}  {took:>7}  {c.detail}")
        if hints and c.hint and c.status in ("fail", "warn"):
            rows.append(f"{'':<{width + 15}}  hint: {c.hint}")
    return rows


def render_text(report: Report) -> str:
    header = f"{CLIENT_NAME} doctor: model {report.model} at {report.gateway_host}, "
    header += f"ALLTKN_TIMEOUT_S={report.timeout_s:g} (this run takes at most "
    header += f"{2 * report.timeout_s:g} s)"
    verdict = "FAILED" if report.counts()["fail"] else "OK"
    footer = f"{verdict}: {report.summary()} in {_took(report.duration_ms)}"
    return redact("\n".join([header, *render_rows(report), footer]))


def build_support_report(report: Report) -> str:
    """The report as text, ready to paste into a ticket."""
    about, failures = versions(), [c for c in report.checks if c.status == "fail"]
    facts = {
        "Time": report.started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "Client": f"{about['client']} (X-Client-Name: {CLIENT_HEADERS['X-Client-Name']})",
        "Template version": about["template"],
        **{name: about[name.lower()] for name in ("Python", "openai", "Framework")},
        "Model": report.model,
        "Gateway host": f"{report.gateway_host} ({report.gateway_scheme or '?'})",
        "Key": f"{API_KEY_ENV} = {report.key} (last 4 characters only)",
        "Timeout": f"ALLTKN_TIMEOUT_S = {report.timeout_s:g} s",
        "Result": report.summary(),
    }
    lines = ["ALLTKN support report (generated by doctor; it holds no key)", ""]
    lines += [f"{label + ':':<22} {value}" for label, value in facts.items()]
    lines += ["", "Failed checks", "-------------"] if failures else ["", "Every check passed."]
    for c in failures:
        values = asdict(c) | {"category": c.category or "none: checked on this host, nothing sent"}
        values["charge"] = f"{c.charge}: {c.charge_reason}" if c.charge else "no"
        if c.category:  # the gateway's words and id, also when it gave none
            values["error"] = c.error or "(none)"
            values["upstream_request_id"] = c.upstream_request_id or "(none)"
        if c.request_id:
            values["request_id"] = f"{c.request_id} (sent as X-Request-ID)"
        lines += [f"{c.title}: {c.detail}"]
        shown = [(label, values[name]) for name, label in FAILURE_LABELS.items() if values[name]]
        lines += [f"  {label + ':':<20} {value}" for label, value in shown] + [""]
    lines += [""] * (not failures) + ["All checks", "----------", *render_rows(report, hints=False)]
    lines += [""]
    return redact("\n".join(lines))


def _fields(check: Check) -> dict[str, object]:
    return {name: value for name, value in asdict(check).items() if name != "blocked_by"}


def report_json(report: Report, support_report: Path | None) -> str:
    """`doctor --json`: the same facts for machines."""
    document = {
        "ok": not report.counts()["fail"],
        "exit_code": 1 if report.counts()["fail"] else 0,
        "time": report.started_at.isoformat().replace("+00:00", "Z"),
        "duration_ms": report.duration_ms,
        "versions": versions(),
        **{name: getattr(report, name) for name in ("model", "gateway_host", "timeout_s", "key")},
        "summary": report.counts(),
        "checks": [{"id": c.id, "title": c.title, **_fields(c)} for c in report.checks],
        "support_report": str(support_report) if support_report else None,
    }
    return redact(json.dumps(document, ensure_ascii=False, indent=2))


def write_support_report(text: str, report: Report, directory: Path) -> Path:
    """`support-report-<UTC time>.txt` in `directory`, never overwriting; OSError if it fails."""
    stamp = report.started_at.strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 100):
        path = directory / f"{REPORT_PREFIX}{stamp}{'' if n == 1 else f'-{n}'}.txt"
        with contextlib.suppress(FileExistsError), path.open("x", encoding="utf-8") as file:
            file.write(text)
            return path
    raise FileExistsError(f"{directory / REPORT_PREFIX}{stamp}*.txt: too many reports")


def output(report: Report, mode: Literal["text", "json", "support"]) -> int:
    """Print the report; a failed run also writes the support report to the current directory.
    The exit status: 1 if a check failed, else 0."""
    text, saved, failed = build_support_report(report), None, report.counts()["fail"] > 0
    if failed:
        try:
            saved = write_support_report(text, report, Path.cwd()).resolve()
        except OSError as exc:
            again = f"run '{CLIENT_NAME} doctor --support' and copy its output instead"
            print(f"doctor: could not write the support report ({exc}); {again}", file=sys.stderr)
    printed = text if mode == "support" else render_text(report)
    printed = report_json(report, saved) if mode == "json" else printed
    try:
        print(printed)
    except UnicodeEncodeError:  # a terminal that cannot show the gateway's Chinese text
        encoding = sys.stdout.encoding or "ascii"
        print(printed.encode(encoding, "backslashreplace").decode(encoding))
    if saved is not None:
        where = sys.stdout if mode == "text" else sys.stderr
        print(f"Support report: {saved} (paste it into a ticket; it holds no key)", file=where)
    return 1 if failed else 0
