"""`POST /v1/jobs` and `GET /v1/jobs/{job_id}`: a chat request queued for the `worker`
processes, admitted as `POST /v1/chat` is (`api.Admitted`), and its state (`jobs_http.py`)."""

from __future__ import annotations

from typing import Annotated, Any, cast

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from . import jobs_http
{%- if cookiecutter.caller_auth == "keys" %}
from .api import Admitted, Caller, JSONBodyRoute, Limiter
from .errors import GatewayError
{%- else %}
from .api import Admitted, JSONBodyRoute
{%- endif %}
from .jobs import JobStore

router = APIRouter(route_class=JSONBodyRoute)


def install(app: FastAPI) -> None:
    """Serve the routes, on the queue of ALLTKN_QUEUE_URL (reached at the first job)."""
    app.state.jobs = jobs_http.open_store()
    app.include_router(router)


async def get_store(request: Request) -> JobStore:
    return cast(JobStore, request.app.state.jobs)


Store = Annotated[JobStore, Depends(get_store)]


@router.post(jobs_http.JOBS_PATH, status_code=202)
{%- if cookiecutter.caller_auth == "keys" %}
async def submit(admission: Admitted, store: Store, limiter: Limiter) -> JSONResponse:
    try:  # Redis's calls block: in the thread pool
        job_id = await anyio.to_thread.run_sync(jobs_http.submit, store, admission)
    except GatewayError:
        await limiter.settle(admission.reservation, 0)
        raise
    await limiter.settle(admission.reservation, jobs_http.counted(admission))
    return JSONResponse(*jobs_http.accepted(job_id))


# A plain `def`: Redis's calls run in the thread pool, off the event loop.
@router.get(jobs_http.JOBS_PATH + "/{job_id}")
def job(job_id: str, who: Caller, store: Store) -> dict[str, Any]:
    return jobs_http.state(store, job_id, owner=who[0])
{%- else %}
async def submit(admission: Admitted, store: Store) -> JSONResponse:
    # Redis's calls block: in the thread pool.
    job_id = await anyio.to_thread.run_sync(jobs_http.submit, store, admission)
    return JSONResponse(*jobs_http.accepted(job_id))


# A plain `def`: Redis's calls run in the thread pool, off the event loop.
@router.get(jobs_http.JOBS_PATH + "/{job_id}")
def job(job_id: str, store: Store) -> dict[str, Any]:
    return jobs_http.state(store, job_id, owner=None)
{%- endif %}
