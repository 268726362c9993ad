"""The queue's jobs in its Redis (ALLTKN_QUEUE_URL), one hash each: the request, who enqueued it,
its state (pending, done, failed) and then its result or error body. A job is finished once,
atomically: a message delivered again (a worker was lost mid-call) finds the result and is not
sent to the gateway again.

`JobStore.lost` finds the jobs whose message is gone: kombu's Redis transport moves a message
from the queue's list (BRPOP) to its `unacked` hash in two steps, and a worker killed between
them loses the message for good. The worker re-sends those (`worker.sweep`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .limiter import REDIS_ERRORS, REDIS_TIMEOUT_S
from .request import ChatRequest
from .settings import redis_url

PREFIX = "alltkn:queue"
QUEUE = "alltkn"  # the Celery queue: a Redis list of that name
PENDING = f"{PREFIX}:pending"  # job ids by the time their message was (last) sent
UNACKED = "unacked"  # kombu's hash of the messages delivered and not yet acknowledged
WORKER = f"{PREFIX}:worker:"  # + a running worker's name: its concurrency, expiring
RESULT_META = "celery-task-meta-"  # the Celery result backend's key prefix
JOB_TTL_S = 7 * 86_400  # how long a job and its result are kept
JOB_ID_CHARS = 32
DEFAULT_QUEUE_URL = "redis://127.0.0.1:6379/0"  # this host's Redis
# KEYS: the job, PENDING. ARGV: the new state, its field, its body, the job id.
FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], ARGV[2], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
"""


class QueueSettings(BaseSettings):
    """What the queue's commands need: no gateway key (`enqueue` and `collect` run without)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # The broker, the result backend and the jobs' hashes (a password in it is never logged).
    queue_url: SecretStr = Field(SecretStr(DEFAULT_QUEUE_URL), validation_alias="ALLTKN_QUEUE_URL")
    # The gateway's limits for the whole queue, every worker together (limiter.Pacer).
    rpm: int | None = Field(None, gt=0, validation_alias="ALLTKN_QUEUE_RPM")
    tpm: int | None = Field(None, gt=0, validation_alias="ALLTKN_QUEUE_TPM")
    # A message unacknowledged this long is delivered again (its worker is taken for lost): it
    # must be longer than the worst call, which `worker` checks at start.
    visibility_timeout_s: float = Field(
        3600.0, ge=5, le=7 * 86_400, validation_alias="ALLTKN_QUEUE_VISIBILITY_TIMEOUT_S"
    )
    # The longest Retry-After a job waits out; a longer one fails the job (rate_limited).
    retry_after_cap_s: float = Field(
        60.0, ge=0, le=3600, validation_alias="ALLTKN_QUEUE_RETRY_AFTER_CAP_S"
    )

    @field_validator("queue_url", mode="before")
    @classmethod
    def _check_url(cls, value: object) -> object:
        checked = redis_url(value)
        return SecretStr(DEFAULT_QUEUE_URL) if checked is None else checked

    @field_validator("rpm", "tpm", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


class QueueUnavailable(Exception):
    """The queue's Redis cannot be reached; the message is one line naming ALLTKN_QUEUE_URL."""

    def __init__(self, exc: BaseException) -> None:
        why = f"{type(exc).__name__}: {exc}"[:200]  # Redis's errors hold no password
        super().__init__(
            f"cannot reach the queue's Redis at ALLTKN_QUEUE_URL ({why}); start Redis or fix "
            "ALLTKN_QUEUE_URL"
        )


@dataclass(frozen=True)
class Job:
    id: str
    state: str  # pending, done or failed
    request: str  # the ChatRequest's JSON
    owner: str | None  # the caller that enqueued it (None: no caller keys)
    line_id: str | int | None  # the input line's id (enqueue), for collect's rows
    models: list[str] | None  # the models its caller may use (None: any)
    body: dict[str, Any] | None  # the result (done) or the error body (failed)


def result_of(job: Job) -> dict[str, Any]:
    """A done job's result as `collect` writes it (without the line's id) and `GET /v1/jobs`
    answers it."""
    body = job.body or {}
    fields = ("content", "model", "usage", "duration_ms")
    return {name: body.get(name) for name in fields}


def is_job_id(text: str) -> bool:
    return len(text) == JOB_ID_CHARS and all(c in "0123456789abcdef" for c in text)


class JobStore:
    def __init__(self, url: str) -> None:
        timeouts = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
        self.redis = redis.Redis.from_url(url, decode_responses=True, **timeouts)
        self._finish = self.redis.register_script(FINISH)

    @staticmethod
    def key(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    def check(self) -> None:
        """Raise `QueueUnavailable` unless the queue's Redis answers."""
        try:
            self.redis.ping()
        except REDIS_ERRORS as exc:
            raise QueueUnavailable(exc) from None

    def create(
        self,
        request: ChatRequest,
        owner: str | None = None,
        line_id: str | int | None = None,
        models: frozenset[str] | None = None,
    ) -> str:
        job_id = uuid.uuid4().hex
        fields: dict[Any, str] = {
            "state": "pending",
            "request": request.model_dump_json(exclude_none=True),
            "owner": json.dumps(owner),
            "line_id": json.dumps(line_id),
            "models": json.dumps(sorted(models) if models is not None else None),
        }
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key(job_id), mapping=fields)
            pipe.expire(self.key(job_id), JOB_TTL_S)
            pipe.zadd(PENDING, {job_id: time.time()})
            pipe.execute()
        return job_id

    def drop(self, job_id: str) -> None:
        """Forget a job whose message could not be sent."""
        with self.redis.pipeline() as pipe:
            pipe.delete(self.key(job_id))
            pipe.zrem(PENDING, job_id)
            pipe.execute()

    def get(self, job_id: str) -> Job | None:
        return self.get_many([job_id])[0]

    def get_many(self, job_ids: list[str]) -> list[Job | None]:
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.key(job_id))
            found: list[dict[str, str]] = pipe.execute()
        return [_job(job_id, fields) for job_id, fields in zip(job_ids, found, strict=True)]

    def finish(self, job_id: str, state: str, body: dict[str, Any]) -> bool:
        """Record the result (state "done") or the error body ("failed"), once: False if the
        job had already finished (or is gone)."""
        field = "result" if state == "done" else "error"
        argv = [state, field, json.dumps(body, ensure_ascii=False), job_id]
        return bool(self._finish([self.key(job_id), PENDING], argv))

    def result_lost(self, job_id: str) -> bool:
        """The job ran (the result backend knows it) but its hash is gone."""
        return bool(self.redis.exists(RESULT_META + job_id))

    def lost(self, older_than_s: float) -> list[str]:
        """Pending jobs sent more than `older_than_s` ago that have no message left: neither in
        the queue nor delivered to a worker."""
        stale = [
            str(job_id)
            for job_id in self.redis.zrangebyscore(PENDING, "-inf", time.time() - older_than_s)
        ]
        if not stale:
            return []
        carried = {_task_id(raw) for raw in self.redis.lrange(QUEUE, 0, -1)}
        carried |= {_task_id(raw, delivered=True) for raw in self.redis.hvals(UNACKED)}
        return [job_id for job_id in stale if job_id not in carried]

    def announce(self, name: str, concurrency: int, ttl_s: float) -> None:
        """The worker `name` runs (for `ttl_s`), taking `concurrency` jobs at once."""
        self.redis.set(WORKER + name, concurrency, px=int(ttl_s * 1000))

    def retire(self, name: str) -> None:
        self.redis.delete(WORKER + name)

    def workers(self) -> list[int]:
        """The concurrency of each worker running (announced within its ttl)."""
        names = list(self.redis.scan_iter(match=WORKER + "*", count=1000))
        return [int(value) for value in self.redis.mget(names) if value] if names else []

    def sent(self, job_id: str) -> None:
        """A job's message was sent again: it is not lost for another visibility timeout."""
        self.redis.zadd(PENDING, {job_id: time.time()}, xx=True)


def _job(job_id: str, fields: dict[str, str]) -> Job | None:
    if not fields.get("state") or "request" not in fields:
        return None
    body = fields.get("result") or fields.get("error")
    return Job(
        job_id,
        fields["state"],
        fields["request"],
        json.loads(fields.get("owner") or "null"),
        json.loads(fields.get("line_id") or "null"),
        json.loads(fields.get("models") or "null"),
        json.loads(body) if body else None,
    )


def _task_id(raw: str | bytes, *, delivered: bool = False) -> str | None:
    """The Celery task id (our job id) of a message in the queue's list or (`delivered`) in
    kombu's unacked hash, where it is `[message, exchange, routing key]`."""
    try:
        message = json.loads(raw)
        message = message[0] if delivered else message
        task_id = message["headers"]["id"]
    except (ValueError, LookupError, TypeError):
        return None
    return task_id if isinstance(task_id, str) else None
