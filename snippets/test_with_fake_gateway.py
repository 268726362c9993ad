"""A pytest fixture that runs a fake OpenAI-compatible gateway on loopback.

When to use: you want tests of your ALLTKN integration that run offline, in milliseconds, and
through the real openai SDK and a real socket (respx cannot intercept openai 3.x, which talks
through httpx2). The fake is the project's `tests/fake_gateway.py` (stdlib only, one file):
copy it next to your tests. It answers like a one-api / new-api gateway, success, streams and
every error, chosen by the request's model (`fake-error-401`, `fake-error-quota`,
`fake-error-503-model`, `fake-stream-cut`, ...), and records every request it gets. The key is
made at run time, so nothing key-shaped is ever committed.

Run: `pytest test_with_fake_gateway.py` (fake_gateway.py and alltkn_client.py next to it, or
on the path).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import openai
import pytest
from alltkn_client import CLIENT_HEADERS, KEY_ENV_VAR, make_client

from fake_gateway import FakeGateway

TEST_KEY = "sk-" + secrets.token_hex(24)


@pytest.fixture
def fake_gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGateway]:
    """The fake on 127.0.0.1 and an ephemeral port, with the client's settings pointed at it."""
    with FakeGateway(api_key=TEST_KEY) as gateway:
        monkeypatch.setenv(KEY_ENV_VAR, TEST_KEY)
        monkeypatch.setenv("ALLTKN_BASE_URL", gateway.base_url)
        monkeypatch.setenv("ALLTKN_MAX_RETRIES", "0")
        yield gateway


def test_a_completion_goes_through_the_gateway(fake_gateway: FakeGateway) -> None:
    with make_client() as client:
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
        )

    assert completion.choices[0].message.content == "Hello from the fake gateway."
    (sent,) = fake_gateway.requests_for("gpt-4o-mini")
    assert sent.headers["x-client-name"] == CLIENT_HEADERS["X-Client-Name"]


def test_no_balance_is_a_403_with_the_gateway_code(fake_gateway: FakeGateway) -> None:
    with make_client() as client, pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(
            model="fake-error-quota", messages=[{"role": "user", "content": "Hello"}]
        )

    assert caught.value.code == "insufficient_user_quota"
