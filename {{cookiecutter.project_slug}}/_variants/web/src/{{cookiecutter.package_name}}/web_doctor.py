"""`doctor`'s checks of the web service's own settings (script bakes have no HTTP server).

Mixed into the doctor (`doctor._Doctor`) like the callers' checks: one row each, no secret.
"""

from __future__ import annotations

from .settings import Settings
from .support import Check

WEB_CHECKS = {  # id: (title, the checks it needs), as in doctor.CHECKS
    "allowed_hosts": ("allowed hosts", ("settings",)),
}
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
HOSTS_HINT = (
    "Fine on this machine; a deployment must set ALLTKN_ALLOWED_HOSTS to the host names its "
    "clients use, e.g. chat.example.com (docs/SECURITY.md): any other Host gets 400."
)


class WebChecks:
    """`check_<id>` for each of WEB_CHECKS, with the doctor's settings."""

    settings: Settings

    def check_allowed_hosts(self) -> Check:
        hosts = self.settings.allowed_host_set
        if hosts is None:
            detail = "ALLTKN_ALLOWED_HOSTS is *: any Host is answered (DNS rebinding can reach it)"
            return Check("warn", detail, "List the service's host names instead of *.")
        names = ", ".join(sorted(hosts))
        if hosts <= LOOPBACK_HOSTS:
            return Check("warn", f"{names}: loopback names only (the default)", HOSTS_HINT)
        return Check("pass", names)
