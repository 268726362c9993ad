"""detect-secrets plugin: the AI gateway's API keys (`sk-` + 32 to 64 letters and digits) and
the caller keys of services made from this template (`ck_` + 40 to 64 URL-safe characters, made
by `keys create`).

detect-secrets loads this file by path: `.secrets.baseline` names it in `plugins_used`
(`"path": "file://tools/detect_secrets_gateway.py"`, relative to the repository root, where
`make secrets`, the pre-commit hook and CI run), so every check that reads the baseline uses it.
To try it on one file: `detect-secrets scan --plugin tools/detect_secrets_gateway.py FILE`.

It lives outside `src/` on purpose: it is development tooling, so it is not part of the
package, the wheel or the container image, and the service never imports detect-secrets.

Mark a deliberate test value with `# pragma: allowlist secret` on its line.
"""

from __future__ import annotations

import re

from detect_secrets.plugins.base import RegexBasedDetector

# `sk-` + 32 to 64 letters and digits, optionally `-<digits>`; not part of a longer token
# (`task-...`, `sk-proj-...` and keys of other formats are left to the other plugins).
GATEWAY_KEY_RE = re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9]{32,64}(?:-[0-9]+)?(?![A-Za-z0-9_-])")
CALLER_KEY_RE = re.compile(r"(?<![A-Za-z0-9_-])ck_[A-Za-z0-9_-]{40,64}(?![A-Za-z0-9_-])")
# What detect-secrets reports the finding as (named apart from `secret_type`, which its
# keyword plugin would otherwise take for a hard-coded secret).
KEY_LABEL = "AI Gateway Key"


class GatewayKeyDetector(RegexBasedDetector):
    """Scans for AI gateway API keys."""

    secret_type = KEY_LABEL
    denylist = (GATEWAY_KEY_RE, CALLER_KEY_RE)
