"""Caller keys and limits in FastAPI: a dependency, an exception handler, the limit headers.

When to use: your FastAPI service has routes that call the gateway, and only callers with a
key may use them, within their limits (caller_keys.py). `caller` (the key: 401) and `admitted`
(model and limits: 403, 429, 503) are plain `def` dependencies, so FastAPI runs them, and their
Redis round trip, in its thread pool; a route settles the call with the gateway's token count.
A refusal is answered before any upstream call with its status, `Retry-After` and
`{"error": {"category", "message", "hint", "request_id"}}`; an admitted answer carries the
`x-ratelimit-*` headers. For a stream, settle in the response's background task with the
usage chunk's count (`stream_options={"include_usage": True}`).

Run: `python caller_keys.py create me --rpm 60 --daily-tokens 200000` (prints the key), then
`ALLTKN_LIMITS_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn caller_keys_fastapi:app` and
`curl localhost:8000/v1/chat -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json'
-d '{"prompt": "Hi"}'`. Needs caller_keys.py and alltkn_client.py next to it.
"""

from __future__ import annotations

from typing import Annotated, Any

from alltkn_client import DEFAULT_MODEL, make_client
from caller_keys import Admission, Caller, Guard, Refused, request_id_from
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

guard = Guard.from_env()  # a missing callers file or Redis URL stops the start
client = make_client()
app = FastAPI()


class ChatBody(BaseModel):
    prompt: str = Field(min_length=1, max_length=200_000)
    model: str = Field(DEFAULT_MODEL, min_length=1, max_length=200)
    max_tokens: int = Field(512, ge=1, le=4096)  # always sent: it bounds what a call may spend


@app.exception_handler(Refused)
async def refused(request: Request, exc: Refused) -> JSONResponse:
    request_id = request_id_from(request.headers.get("X-Request-ID"))
    headers = {**exc.headers, "X-Request-ID": request_id}
    return JSONResponse(exc.body(request_id), exc.status, headers)


def caller(request: Request) -> Caller:
    """The caller (401), checked before the body is."""
    return guard.authenticate(request.headers.get("Authorization"))


def admitted(
    body: ChatBody, who: Annotated[Caller, Depends(caller)], request: Request, response: Response
) -> Admission:
    admission = guard.admit(who, body.model, body.prompt, body.max_tokens)  # 403, 429, 503
    response.headers.update(admission.headers)
    response.headers["X-Request-ID"] = request_id_from(request.headers.get("X-Request-ID"))
    return admission


@app.post("/v1/chat")
def chat(body: ChatBody, admission: Annotated[Admission, Depends(admitted)]) -> dict[str, Any]:
    used = 0  # a call that fails before an answer uses nothing
    try:
        completion = client.chat.completions.create(
            model=body.model,
            messages=[{"role": "user", "content": body.prompt}],
            max_tokens=body.max_tokens,
        )
        used = completion.usage.total_tokens if completion.usage else admission.tokens
    finally:
        guard.settle(admission, used)
    return {
        "content": completion.choices[0].message.content,
        "model": completion.model,
        "caller": admission.caller.name,
        "usage": completion.usage.model_dump() if completion.usage else None,
    }
