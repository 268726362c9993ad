"""Every kind of bad request body, against the real server process: the answer each one gets is
in one table, `BAD_BODIES`, which both web variants run, so FastAPI and Flask cannot disagree
on a status (a 500 included) without one of them failing it. No bad body reaches the gateway,
and none leaves a traceback in the server's log.

The order: {% if cookiecutter.caller_auth == "keys" %}the caller key (401), {% endif %}the headers (415 for a body not declared JSON, 413
for one declared too large), the body as it is read (413 past ALLTKN_MAX_BODY_BYTES), parsed
(400){% if cookiecutter.caller_auth == "keys" %}, the model it names (403; these two: test_caller_access.py){% endif %} and validated (422).
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from {{ cookiecutter.package_name }}.http_contract import MAX_JSON_DEPTH
from {{ cookiecutter.package_name }}.request import MAX_CONTENT_CHARS, MAX_MESSAGES

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway
from .live_server import Server, run_server

PATHS = ["/v1/chat", "/v1/chat/stream"{{ ', "/v1/jobs"' if cookiecutter.worker == "celery" else "" }}]
JSON = "application/json"
LIMIT = 1_048_576  # ALLTKN_MAX_BODY_BYTES's default, which the module's server runs with


@dataclass(frozen=True)
class Bad:
    """A body as sent, and what both variants answer: the status and words of the message."""

    body: bytes
    status: int
    says: str
    content_type: str | None = JSON
    chunked: bool = False  # sent without Content-Length


def dumped(body: object) -> bytes:
    return json.dumps(body).encode()


def nested(depth: int) -> bytes:
    """`{"prompt": [[...]]}`, nesting `depth` levels in all."""
    return b'{"prompt": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def messages(count: int) -> bytes:
    return dumped({"messages": [{"role": "user", "content": "hi"}] * count})


HI = b'{"prompt": "hi"}'
OVER_THE_LIMIT = dumped({"prompt": "x" * LIMIT})
BAD_BODIES = {
    # Not declared JSON: 415, whatever the body.
    "no-content-type": Bad(HI, 415, "no Content-Type", content_type=None),
    "no-content-type-empty": Bad(b"", 415, "no Content-Type", content_type=None),
    "text-plain": Bad(HI, 415, "Content-Type text/plain", content_type="text/plain"),
    "form-as-curl-d-sends-it": Bad(
        HI, 415, "application/x-www-form-urlencoded", "application/x-www-form-urlencoded"
    ),
    "json-in-another-type": Bad(HI, 415, "text/json", content_type="text/json"),
    # Over ALLTKN_MAX_BODY_BYTES: 413 (test_a_body_over_the_limit_is_refused_unread).
    "over-the-limit": Bad(OVER_THE_LIMIT, 413, f"over {LIMIT} bytes"),
    "over-the-limit-chunked": Bad(OVER_THE_LIMIT, 413, f"over {LIMIT} bytes", chunked=True),
    "100000-messages": Bad(messages(100_000), 413, "ALLTKN_MAX_BODY_BYTES"),
    # Not JSON, or JSON nesting deeper than MAX_JSON_DEPTH: 400.
    "empty": Bad(b"", 400, "the body is empty"),
    "empty-chunked": Bad(b"", 400, "the body is empty", chunked=True),
    "whitespace": Bad(b" \r\n", 400, "the body is empty"),
    "not-json": Bad(b"{not json", 400, "not valid JSON"),
    "truncated": Bad(b'{"prompt": "hel', 400, "not valid JSON"),
    "two-objects": Bad(HI + HI, 400, "not valid JSON"),
    "invalid-utf-8": Bad(b'{"prompt": "caf\xe9"}', 400, "not UTF-8"),
    "nested-5000-levels": Bad(b"[" * 5000 + b"]" * 5000, 400, f"deeper than {MAX_JSON_DEPTH}"),
    "nested-one-level-too-deep": Bad(nested(MAX_JSON_DEPTH + 1), 400, "deeper than"),
    **{
        f"random-bytes-{seed}": Bad(hashlib.shake_256(bytes([seed])).digest(200), 400, "is not")
        for seed in range(5)
    },
    # JSON that is not an object: 422.
    "null": Bad(b"null", 422, "the body is null"),
    "array": Bad(b'[{"prompt": "hi"}]', 422, "the body is an array"),
    "string": Bad(b'"hi"', 422, "the body is a string"),
    "number": Bad(b"42", 422, "the body is a number"),
    "boolean": Bad(b"true", 422, "the body is true or false"),
    # An object that breaks the schema: 422 naming the field.
    "nested-as-deep-as-allowed": Bad(nested(MAX_JSON_DEPTH), 422, "prompt:"),
    "neither-prompt-nor-messages": Bad(b"{}", 422, "not neither"),
    "model-only": Bad(b'{"model": "gpt-4o-mini"}', 422, "not neither"),
    "both": Bad(
        dumped({"prompt": "a", "messages": [{"role": "user", "content": "a"}]}), 422, "both"
    ),
    "blank-prompt": Bad(b'{"prompt": "   "}', 422, "blank"),
    "prompt-a-number": Bad(b'{"prompt": 42}', 422, "prompt:"),
    "prompt-over-the-characters-limit": Bad(
        dumped({"prompt": "x" * (MAX_CONTENT_CHARS + 1)}), 422, "prompt:"
    ),
    "messages-a-string": Bad(b'{"messages": "hi"}', 422, "messages:"),
    "no-messages": Bad(b'{"messages": []}', 422, "messages:"),
    "too-many-messages": Bad(messages(MAX_MESSAGES + 1), 422, "messages:"),
    "messages-over-the-characters-limit-together": Bad(
        dumped({"messages": [{"role": "user", "content": "x" * (MAX_CONTENT_CHARS // 2 + 1)}] * 2}),
        422,
        f"at most {MAX_CONTENT_CHARS}",
    ),
    "bad-role": Bad(dumped({"messages": [{"role": "robot", "content": "x"}]}), 422, "role"),
    "no-content": Bad(dumped({"messages": [{"role": "user"}]}), 422, "content"),
    "bad-model-name": Bad(b'{"prompt": "x", "model": "two words"}', 422, "model:"),
    "temperature-3": Bad(b'{"prompt": "x", "temperature": 3}', 422, "temperature:"),
    "temperature-negative": Bad(b'{"prompt": "x", "temperature": -1}', 422, "0-2"),
    "temperature-text": Bad(b'{"prompt": "x", "temperature": "hot"}', 422, "temperature:"),
    "max-tokens-0": Bad(b'{"prompt": "x", "max_tokens": 0}', 422, "max_tokens:"),
    "max-tokens-2.5": Bad(b'{"prompt": "x", "max_tokens": 2.5}', 422, "max_tokens:"),
    "max-tokens-text": Bad(b'{"prompt": "x", "max_tokens": "many"}', 422, "integer"),
    "unknown-field": Bad(b'{"prompt": "x", "top_k": 3}', 422, "top_k"),
}


@pytest.fixture(scope="module")
def server(gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(gateway, tmp_path_factory.mktemp("bad-bodies")) as running:
        yield running


def pieces(body: bytes) -> Iterator[bytes]:
    """`body` as an iterator, which the client sends chunked, without Content-Length."""
    for start in range(0, len(body), 65_536):
        yield body[start : start + 65_536]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", [pytest.param(case, id=name) for name, case in BAD_BODIES.items()])
def test_each_bad_body_gets_its_status_and_reaches_no_gateway(
    server: Server, gateway: FakeGateway, path: str, case: Bad
) -> None:
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    content = pieces(case.body) if case.chunked else case.body
    logged = len(server.output())

    response = server.request("POST", path, content=content, headers=headers)

    assert response.status_code == case.status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert list(response.json()) == ["error"]
    error = response.json()["error"]
    assert sorted(error) == ["category", "hint", "message", "request_id"]
    assert error["category"] == "invalid_request"
    assert case.says in error["message"]
    assert "\n" not in error["message"]
    assert error["hint"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert SENTINEL_KEY not in response.text
    assert gateway.requests == []
    assert "Traceback" not in server.output()[logged:]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.example+json",
    ],
)
def test_json_media_types_with_parameters_and_suffixes_are_taken(
    server: Server, gateway: FakeGateway, content_type: str
) -> None:
    response = server.request(
        "POST", "/v1/chat", content=HI, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    assert len(gateway.requests) == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused_unread(server: Server, chunked: bool) -> None:
    """The 413 comes while the client is still sending: a declared length over the limit is
    refused from the headers, a chunked body once the limit is passed."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest("POST", "/v1/chat")
        for name, value in {**server.headers, "Content-Type": JSON}.items():
            connection.putheader(name, value)
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            piece = b"x" * 65_536
            for _ in range(LIMIT // len(piece) + 1):  # past the limit, and never the last chunk
                connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        else:
            connection.putheader("Content-Length", str(100 * LIMIT))
            connection.endheaders(b'{"prompt": "')  # and nothing more
        answer = connection.getresponse()
        status, document = answer.status, json.loads(answer.read())
    finally:
        connection.close()
    assert status == 413
    assert "ALLTKN_MAX_BODY_BYTES" in document["error"]["message"]


def test_the_body_limit_is_a_setting(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    limit, headers = 4096, {"Content-Type": JSON}
    fits, over = dumped({"prompt": "x" * (limit - 20)}), dumped({"prompt": "x" * limit})
    directory = tmp_path_factory.mktemp("small-limit")
    with run_server(gateway, directory, ALLTKN_MAX_BODY_BYTES=str(limit)) as server:
        assert server.request("POST", "/v1/chat", content=fits, headers=headers).status_code == 200
        response = server.request("POST", "/v1/chat", content=over, headers=headers)
    assert response.status_code == 413
    assert f"over {limit} bytes" in response.json()["error"]["message"]
