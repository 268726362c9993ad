"""The doctor's report as text or JSON, and the support report for a ticket (never a key)."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Literal

from . import CLIENT_HEADERS, CLIENT_NAME, TEMPLATE_VERSION, __version__
from .errors import Category, GatewayError
from .redaction import redact
from .settings import KEY_ENV_VAR

FRAMEWORKS: tuple[str, ...] = {% if cookiecutter.framework == "fastapi" %}("fastapi", "uvicorn"){% elif cookiecutter.framework == "flask" %}("flask", "gunicorn"){% else %}(){% endif %}
REPORTS_DIR, REPORT_PREFIX, KEEP_REPORTS = Path("support-reports"), "support-report-", 5
STATUSES = ("pass", "warn", "fail", "skip")


@dataclass
class Check:  # one row; its fields are those of `doctor --json`
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


def failed(error: GatewayError, request_id: str | None, first_token_seen: bool = False) -> Check:
    """The row of a failed call (`request_id` None: GET /models); one-api bills what it made."""
    category, ids = error.category, (request_id, error.upstream_request_id)
    charge = ("no", "the gateway refused the request, or never got it: it generated nothing")
    if request_id is None:
        charge = ("no", "listing the models generates nothing")
    elif category is Category.UPSTREAM_UNAVAILABLE:
        charge = ("unlikely", "the gateway answered with an error instead of an answer")
    elif category in (Category.TIMEOUT, Category.STREAM_INTERRUPTED) and first_token_seen:
        charge = ("possible", "tokens were generated before the stream broke off")
    elif category in (Category.TIMEOUT, Category.STREAM_INTERRUPTED):
        charge = ("possible", "the gateway may have generated an answer that nobody read")
    detail = f"error[{category.value}] {error.upstream_message or error.message}"
    return Check("fail", detail, error.hint, category.value, error.upstream_message, *ids, *charge)


def _version(name: str) -> str:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version(name)
    return "not installed"


def _took(ms: float) -> str:
    return "<1 ms" if ms < 1 else f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


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
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}

    def summary(self) -> str:
        n = self.counts()
        warn = f"{n['warn']} warning{'' if n['warn'] == 1 else 's'}"
        return f"{n['fail']} failed, {warn}, {n['pass']} passed, {n['skip']} skipped"

    def versions(self) -> dict[str, str]:
        system = f"({platform.python_implementation()}) on {platform.system()} {platform.machine()}"
        framework = ", ".join(f"{name} {_version(name)}" for name in FRAMEWORKS)
        return {
            "client": f"{CLIENT_NAME} {__version__}",
            "template": TEMPLATE_VERSION,
            "python": f"{platform.python_version()} {system}",
            "openai": _version("openai"),
            "framework": framework or "none (command-line script)",
        }

    def rows(self, hints: bool = True) -> list[str]:
        """STATUS, title, time, detail; below a failure or a warning, its hint."""
        width, rows = max(len(check.title) for check in self.checks), []
        for c in self.checks:
            took = "" if c.duration_ms is None else _took(c.duration_ms)
            rows.append(f"{c.status.upper():<4}  {c.title:<{width}}  {took:>7}  {c.detail}")
            if hints and c.hint and c.status in ("fail", "warn"):
                rows.append(f"{'':<{width + 15}}  hint: {c.hint}")
        return rows

    def text(self) -> str:
        head = f"{CLIENT_NAME} doctor: model {self.model} at {self.gateway_host}, ALLTKN_TIMEOUT_S="
        head += f"{self.timeout_s:g} (this run takes at most {2 * self.timeout_s:g} s)"
        foot = f"{'FAILED' if self.counts()['fail'] else 'OK'}: {self.summary()} in "
        return "\n".join([head, *self.rows(), foot + _took(self.duration_ms)])

    def ticket(self) -> str:
        """The support report: text ready to paste into a ticket."""
        about, failures = self.versions(), [c for c in self.checks if c.status == "fail"]
        masked = self.key not in ("not set", "unknown")
        key = f"{self.key} (last 4 characters only)" if masked else self.key
        facts = {
            "Time": f"{self.started_at:%Y-%m-%d %H:%M:%S UTC}",
            "Client": f"{about['client']} (X-Client-Name: {CLIENT_HEADERS['X-Client-Name']})",
            "Template version": about["template"],
            **{name: about[name.lower()] for name in ("Python", "openai", "Framework")},
            "Model": self.model,
            "Gateway host": f"{self.gateway_host} ({self.gateway_scheme or '?'})",
            "Key": f"{KEY_ENV_VAR} = {key}",
            "Timeout": f"ALLTKN_TIMEOUT_S = {self.timeout_s:g} s",
            "Result": self.summary(),
        }
        lines = ["ALLTKN support report (generated by doctor; it holds no key)", ""]
        lines += [*(f"{label + ':':<22} {value}" for label, value in facts.items()), ""]
        lines += ["Failed checks", "-------------"] if failures else ["Every check passed.", ""]
        for c in failures:
            sent = c.category is not None  # the gateway's words and id, also when it gave none
            shown = {
                "Category": c.category or "none: checked on this host, nothing sent",
                "Error text": (c.error or "(none)") if sent else None,
                "Gateway request id": (c.upstream_request_id or "(none)") if sent else None,
                "Our request id": c.request_id and f"{c.request_id} (sent as X-Request-ID)",
                "Charge likely": f"{c.charge}: {c.charge_reason}" if c.charge else "no",
                "Hint": c.hint,
            }
            lines += [f"{c.title}: {c.detail}"]
            lines += [*(f"  {k + ':':<20} {v}" for k, v in shown.items() if v), ""]
        return "\n".join([*lines, "All checks", "----------", *self.rows(hints=False), ""])

    def json(self, saved: Path | None) -> str:
        """`doctor --json`: the same facts for machines."""
        failures, facts = self.counts()["fail"], ("model", "gateway_host", "timeout_s", "key")
        document = {
            "ok": not failures,
            "exit_code": 1 if failures else 0,
            "time": self.started_at.isoformat().replace("+00:00", "Z"),
            "duration_ms": self.duration_ms,
            "versions": self.versions(),
            **{name: getattr(self, name) for name in facts},
            "summary": self.counts(),
            "checks": [{"id": c.id, "title": c.title, **asdict(c)} for c in self.checks],
            "support_report": str(saved) if saved else None,
        }
        return json.dumps(document, ensure_ascii=False, indent=2)

    def save(self, text: str) -> Path | None:
        """`support-reports/support-report-<UTC time>.txt`, never overwriting another, keeping the
        newest KEEP_REPORTS; None if it fails."""
        stamp = f"{REPORT_PREFIX}{self.started_at:%Y%m%dT%H%M%SZ}"
        try:
            REPORTS_DIR.mkdir(exist_ok=True)
            for n in range(1, 100):
                path = REPORTS_DIR / f"{stamp}{f'-{n}' * (n > 1)}.txt"
                with contextlib.suppress(FileExistsError), path.open("x", encoding="utf-8") as file:
                    file.write(text)
                    break
            else:
                raise FileExistsError("99 support reports made in the same second")
        except OSError as exc:
            fix = f"run '{CLIENT_NAME} doctor --support' and copy its output instead"
            print(f"doctor: could not write the support report ({exc}); {fix}", file=sys.stderr)
            return None
        with contextlib.suppress(OSError):  # the oldest beyond KEEP_REPORTS go
            saved = REPORTS_DIR.glob(f"{REPORT_PREFIX}*.txt")
            for old in sorted(saved, key=lambda p: (p.stat().st_mtime_ns, p.name))[:-KEEP_REPORTS]:
                old.unlink()
        return path.resolve()

    def output(self, mode: Literal["text", "json", "support"]) -> int:
        """Print the report; a failed run also saves the support report. Exit 1 if one failed."""
        text, failed = redact(self.ticket()), self.counts()["fail"] > 0
        saved = self.save(text) if failed else None
        printed = text if mode == "support" else self.json(saved) if mode == "json" else self.text()
        encoding = sys.stdout.encoding or "utf-8"  # a terminal may not show the gateway's Chinese
        print(redact(printed).encode(encoding, "backslashreplace").decode(encoding))
        if saved is not None:
            where = sys.stdout if mode == "text" else sys.stderr
            print(f"Support report: {saved} (paste it into a ticket; it holds no key)", file=where)
        return 1 if failed else 0
