"""What `POST /v1/jobs` and `GET /v1/jobs/{id}` do, for both web frameworks (the routes:
`jobs_api.py`). A job is a chat request admitted as `POST /v1/chat` admits one
({% if cookiecutter.caller_auth == "keys" %}caller key, model, output cap, the caller's limits{% else %}model, output cap{% endif %}), queued for the `worker` processes
(`worker.enqueue`) and answered 202 with its id; `GET` answers its state: pending, done with
the result `collect` writes, or failed with the error body.
{%- if cookiecutter.caller_auth == "keys" %}

A caller sees only its own jobs: another caller's job id is 404, as an unknown one is, so ids
cannot be probed. A job counts all it reserved (its prompt and max_tokens) against its
caller's limits when it is queued: the worker's call is not settled with the caller's limiter.
{%- else %}

Every job belongs to one anonymous owner (caller_auth=none), those `enqueue` queued included.
{%- endif %}

The service starts without the queue's Redis; a job queued or looked up while it cannot be
reached gets 503 `queue_unavailable`.
"""

from __future__ import annotations

import logging
from typing import Any

from . import worker
from .admission import Admission
from .errors import Category, GatewayError
from .jobs import JobStore, QueueUnavailable, is_job_id, result_of
from .limiter import REDIS_ERRORS

logger = logging.getLogger(__name__)
JOBS_PATH = "/v1/jobs"


def open_store() -> JobStore:
    """The job store and the Celery app on ALLTKN_QUEUE_URL (a malformed one stops the start
    with one line); nothing connects before the first job."""
    queue = worker.load_queue_settings_or_exit()
    worker.configure(queue)
    return JobStore(queue.queue_url.get_secret_value())


def submit(store: JobStore, admission: Admission) -> str:
    """Queue the admitted request: its job id, or 503 `queue_unavailable`."""
    try:
{%- if cookiecutter.caller_auth == "keys" %}
        return worker.enqueue(store, admission.request, admission.caller, models=admission.models)
{%- else %}
        return worker.enqueue(store, admission.request)
{%- endif %}
    except QueueUnavailable as exc:
        raise unavailable(exc) from None
{%- if cookiecutter.caller_auth == "keys" %}


def counted(admission: Admission) -> int:
    """The tokens a queued job settles its caller's reservation with: all it reserved."""
    return admission.reservation.tokens if admission.reservation else 0
{%- endif %}


def accepted(job_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """202 with the job's id, and where to ask for its state."""
    return {"job_id": job_id}, 202, {"Location": f"{JOBS_PATH}/{job_id}"}


def state(store: JobStore, job_id: str, owner: str | None) -> dict[str, Any]:
    """The job's state, or 404 `job_not_found` for an unknown id or another owner's job."""
    try:
        job = store.get(job_id) if is_job_id(job_id) else None
    except REDIS_ERRORS as exc:
        raise unavailable(QueueUnavailable(exc)) from None
    if job is None or job.owner != owner:
        raise GatewayError(Category.JOB_NOT_FOUND)
    if job.state == "done":
        return {"status": "done", "result": result_of(job)}
    if job.state == "failed":
        return {"status": "failed", **(job.body or {})}  # {"error": {...}}
    return {"status": "pending"}


def unavailable(exc: QueueUnavailable) -> GatewayError:
    """503 `queue_unavailable`; why goes to the log (it names the queue's host), not the client."""
    logger.warning("job refused: %s", exc)
    return GatewayError(Category.QUEUE_UNAVAILABLE, str(exc))
