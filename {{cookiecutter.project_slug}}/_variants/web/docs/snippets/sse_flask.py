"""Stream a chat answer from Flask as server-sent events.

When to use: a Flask service relays the answer to a browser as it is generated. Serve it with
gunicorn's threaded workers (each open stream holds a thread; the sync worker's timeout would
cut long streams). A refused call (bad body, bad key, no balance, unknown model, ...) is
answered before the stream starts, with a proper status and `{"error": {"category", "message",
"hint", "request_id"}}`; a failure later arrives as `event: error`. The response carries the
anti-buffering headers; when the client hangs up, the next write fails (keep-alives bound the
delay), gunicorn closes the generator, and that closes the upstream stream.

Run: `gunicorn -k gthread --threads 32 -b 127.0.0.1:8000 sse_flask:app` and
`curl -N localhost:8000/v1/chat/stream -H 'Content-Type: application/json' -d '{"prompt": "Hi"}'`.
Needs alltkn_client.py, alltkn_errors.py and alltkn_sse.py next to it.
"""

from __future__ import annotations

from alltkn_client import DEFAULT_MODEL, make_client
from alltkn_errors import UPSTREAM_ERRORS, classify
from alltkn_sse import (
    MEDIA_TYPE,
    SEND_TIMEOUT_S,
    STREAM_HEADERS,
    Answer,
    bad_body,
    error_body,
    http_status,
    relay_sync,
    request_id_from,
    retry_headers,
)
from flask import Flask, Response, jsonify, request

app = Flask(__name__)
client = make_client()  # one per process, shared by every request thread


@app.post("/v1/chat/stream")
def chat_stream() -> Response:
    request_id = request_id_from(request.headers.get("X-Request-ID"))
    body = request.get_json(silent=True)
    prompt = body.get("prompt") if isinstance(body, dict) else None
    model = body.get("model", DEFAULT_MODEL) if isinstance(body, dict) else DEFAULT_MODEL
    if not isinstance(prompt, str) or not prompt.strip() or not isinstance(model, str):
        problem = (
            "the body is not valid JSON (send Content-Type: application/json)"
            if body is None
            else "prompt: must be a non-empty string (model, if given, a string)"
        )
        refused = jsonify(bad_body(problem, request_id))
        refused.status_code = 400 if body is None else 422
        refused.headers["X-Request-ID"] = request_id
        return refused
    try:
        # Opened before the response starts, so a refused call still gets a proper status.
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Request-ID": request_id},
        )
    except UPSTREAM_ERRORS as exc:
        category = classify(exc)
        failed = jsonify(error_body(category, request_id))
        failed.status_code = http_status(category)
        failed.headers.update({**retry_headers(exc), "X-Request-ID": request_id})
        return failed
    # Give up on a client that stops reading: the blocked write fails, gunicorn closes the
    # generator, and that closes the upstream stream.
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        sock.settimeout(SEND_TIMEOUT_S)
    events = relay_sync(stream, Answer(model, request_id))
    headers = {**STREAM_HEADERS, "X-Request-ID": request_id}
    return Response(events, mimetype=MEDIA_TYPE, headers=headers)
