"""`POST /v1/jobs` and `GET /v1/jobs/<job_id>`, as a Blueprint: a chat request queued for the
`worker` processes, admitted as `POST /v1/chat` is (`api.admit`), and its state
(`jobs_http.py`)."""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, Flask, current_app{{ ", g, request" if cookiecutter.caller_auth == "keys" else "" }}

from . import api, jobs_http
{%- if cookiecutter.caller_auth == "keys" %}
from .admission import Gate
from .errors import GatewayError
{%- endif %}
from .http_contract import Reply
from .jobs import JobStore

bp = Blueprint("jobs", __name__)


def install(app: Flask) -> None:
    """Serve the routes, on the queue of ALLTKN_QUEUE_URL (reached at the first job)."""
    app.extensions["jobs"] = jobs_http.open_store()
    app.register_blueprint(bp)


def store() -> JobStore:
    return cast(JobStore, current_app.extensions["jobs"])


@bp.post(jobs_http.JOBS_PATH)
def submit() -> Reply:
    admission = api.admit()
{%- if cookiecutter.caller_auth == "keys" %}
    try:
        job_id = jobs_http.submit(store(), admission)
    except GatewayError:
        api.limiter().settle(admission.reservation, 0)
        raise
    api.limiter().settle(admission.reservation, jobs_http.counted(admission))
    return jobs_http.accepted(job_id)
{%- else %}
    return jobs_http.accepted(jobs_http.submit(store(), admission))
{%- endif %}


@bp.get(jobs_http.JOBS_PATH + "/<job_id>")
def job(job_id: str) -> dict[str, Any]:
{%- if cookiecutter.caller_auth == "keys" %}
    gate = cast(Gate, current_app.extensions["gate"])
    g.caller = owner = gate.authenticate(request.headers.get("Authorization"))[0]
    return jobs_http.state(store(), job_id, owner)
{%- else %}
    return jobs_http.state(store(), job_id, owner=None)
{%- endif %}
