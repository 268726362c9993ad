"""Caller keys and limits in Flask: a before_request hook, an error handler, the limit headers.

When to use: your Flask service has routes that call the gateway, and only callers with a key
may use them, within their limits (caller_keys.py). The hook checks the key of every request
under /v1/ (401) before its body is read; a route admits its call (model and limits: 403, 429,
503) and settles it with the gateway's token count. A refusal is answered before any upstream
call with its status, `Retry-After` and `{"error": {"category", "message", "hint",
"request_id"}}`; an admitted answer carries the `x-ratelimit-*` headers.

Run: `python caller_keys.py create me --rpm 60 --daily-tokens 200000` (prints the key), then
`ALLTKN_LIMITS_REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -k gthread --threads 8
caller_keys_flask:app` and `curl localhost:8000/v1/chat -H "Authorization: Bearer $KEY"
-H 'Content-Type: application/json' -d '{"prompt": "Hi"}'`. Needs caller_keys.py and
alltkn_client.py next to it.
"""

from __future__ import annotations

from typing import Any

from alltkn_client import DEFAULT_MODEL, make_client
from caller_keys import Guard, Refused, request_id_from
from flask import Flask, Response, g, jsonify, request

guard = Guard.from_env()  # a missing callers file or Redis URL stops the start
client = make_client()
app = Flask(__name__)


@app.before_request
def authenticate() -> None:
    g.request_id = request_id_from(request.headers.get("X-Request-ID"))
    if request.path.startswith("/v1/"):  # the API; /healthz and the like stay open
        g.caller = guard.authenticate(request.headers.get("Authorization"))


@app.after_request
def limit_headers(response: Response) -> Response:
    if "admission" in g:
        response.headers.update(g.admission.headers)
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response


@app.errorhandler(Refused)
def refused(exc: Refused) -> tuple[Response, int, dict[str, str]]:
    return jsonify(exc.body(g.request_id)), exc.status, exc.headers


@app.post("/v1/chat")
def chat() -> dict[str, Any]:
    body = request.get_json(silent=True)
    body = body if isinstance(body, dict) else {}
    prompt, model = body.get("prompt"), body.get("model", DEFAULT_MODEL)
    max_tokens = body.get("max_tokens", 512)  # always sent: it bounds what a call may spend
    if not (isinstance(prompt, str) and prompt and isinstance(model, str) and model):
        raise Refused("invalid_request", "prompt: a non-empty string (model: a string)")
    if type(max_tokens) is not int or not 1 <= max_tokens <= 4096:
        raise Refused("invalid_request", "max_tokens: a whole number from 1 to 4096")
    g.admission = admission = guard.admit(g.caller, model, prompt, max_tokens)  # 403, 429, 503
    used = 0  # a call that fails before an answer uses nothing
    try:
        completion = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens
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
