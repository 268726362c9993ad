"""What every OpenAI-SDK client of this project is made with, pointed at the gateway.

`base_url` and `api_key` are always passed explicitly: left out, the SDK would silently read
`OPENAI_BASE_URL` / `OPENAI_API_KEY` and could send the request, or a different key, elsewhere.
The clients themselves are made next to the service that uses them (`chat_sync`, `chat_async`),
with a response hook applying `retry.veto`.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .settings import Settings

CLIENT_NAME = {{ cookiecutter.project_slug | tojson }}
# Lets the gateway's logs and support tell which service made a call.
CLIENT_HEADERS = {"X-Client-Name": f"{CLIENT_NAME}/{__version__}"}


def client_options(settings: Settings) -> dict[str, Any]:
    return {
        "base_url": settings.base_url,
        "api_key": settings.api_key.get_secret_value(),
        "timeout": settings.timeout_s,
        "max_retries": settings.max_retries,
        "default_headers": CLIENT_HEADERS,
    }
