"""Shared fixtures: a fake gateway on loopback and an environment that points at it.

Every test runs with a unique sentinel key, built at run time, so any test can assert that the
key never appears where it must not (responses, logs, output).

`driver` runs a test once for each chat service this project ships (`chat_sync`,
`chat_async`), behind one blocking interface (`Chat`), so the sync and async cases are the same
test function.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import secrets
import signal
import string
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

import pytest

from {{ cookiecutter.package_name }}.chat import CallInfo, ChatResult
from {{ cookiecutter.package_name }}.errors import GatewayError
from {{ cookiecutter.package_name }}.request import ChatRequest
from {{ cookiecutter.package_name }}.settings import ENV_NAMES, KEY_ENV_VAR, Settings, load_settings

from .fake_gateway import FakeGateway

# A shell starts a background job (`make test &`) with SIGINT ignored, and an ignored signal stays
# ignored in every child: the Ctrl-C tests' processes would never see theirs. Python's own handler
# here is reset to the default in each child at exec.
signal.signal(signal.SIGINT, signal.default_int_handler)

SENTINEL_KEY = "sk-" + "".join(
    secrets.choice(string.ascii_letters + string.digits) for _ in range(48)
)
HELLO = "say hello please"  # 3 words: prompt_tokens == 3 at the fake gateway
ANSWER = "Hello from the fake gateway."

_PACKAGE = "{{ cookiecutter.package_name }}"
# The drivers this bake ships: FastAPI only the async one, Flask only the sync one, script both.
DRIVERS = [
    name for name in ("sync", "async") if importlib.util.find_spec(f"{_PACKAGE}.chat_{name}")
]
T = TypeVar("T")


@pytest.fixture(scope="session")
def gateway() -> Iterator[FakeGateway]:
    with FakeGateway(api_key=SENTINEL_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_gateway(gateway: FakeGateway) -> None:
    gateway.reset()


@pytest.fixture
def gateway_env(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The service's settings pointed at the fake gateway, isolated from any local .env and
    from the service's variables in the environment the tests run in (a rollback switch left
    set in a shell must not change what the tests see, nor an OTLP endpoint receive them)."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    env = {
        KEY_ENV_VAR: SENTINEL_KEY,
        "ALLTKN_BASE_URL": gateway.base_url,
        "ALLTKN_MODEL": "gpt-4o-mini",
        "ALLTKN_TIMEOUT_S": "2",
        "ALLTKN_MAX_RETRIES": "0",
        "LOG_LEVEL": "INFO",
        # Decoys: the project must never fall back to the SDK's own variables.
        "OPENAI_API_KEY": "decoy-openai-key-value",  # pragma: allowlist secret
        "OPENAI_BASE_URL": "http://127.0.0.1:9/never-used",
    }
    for name in [*ENV_NAMES.values(), *(name for name in os.environ if name.startswith("OTEL_"))]:
        if name not in env:
            monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def upstream_calls(caplog: pytest.LogCaptureFixture) -> Callable[[], list[dict[str, Any]]]:
    """Reads the `upstream_call` log entries emitted so far in the test, as dicts."""
    caplog.set_level(logging.INFO)

    def read() -> list[dict[str, Any]]:
        return [record.call for record in caplog.records if hasattr(record, "call")]

    return read


def ask(prompt: str = HELLO, **fields: Any) -> ChatRequest:
    return ChatRequest(prompt=prompt, **fields)


def failure(
    chat: Chat, model: str, *, stream: bool, received: list[str] | None = None
) -> GatewayError:
    """The `GatewayError` a call of `model` ends with (a test failure if it ends without)."""
    request = ask(model=model)

    def run() -> ChatResult:
        return chat.stream(request, received=received) if stream else chat.complete(request)

    with pytest.raises(GatewayError) as caught:
        run()
    return caught.value


class Chat(Protocol):
    """A chat service driven from blocking test code."""

    settings: Settings
    sdk_name: str

    def complete(self, request: ChatRequest, call: CallInfo | None = None) -> ChatResult: ...

    def stream(
        self,
        request: ChatRequest,
        call: CallInfo | None = None,
        *,
        received: list[str] | None = None,
        stop_after: int | None = None,
    ) -> ChatResult:
        """Open a stream and read it, appending each delta to `received`: to the end, or
        leaving (closing it) after `stop_after` deltas."""
        ...

    def close(self) -> None: ...


class _SyncChat:
    sdk_name = "OpenAI/Python"

    def __init__(self, settings: Settings) -> None:
        module = importlib.import_module(f"{_PACKAGE}.chat_sync")
        self.settings = settings
        self._client = module.create_client(settings)
        self._service = module.ChatService(self._client, settings)

    def complete(self, request: ChatRequest, call: CallInfo | None = None) -> ChatResult:
        result: ChatResult = self._service.complete(request, call)
        return result

    def stream(
        self,
        request: ChatRequest,
        call: CallInfo | None = None,
        *,
        received: list[str] | None = None,
        stop_after: int | None = None,
    ) -> ChatResult:
        received = [] if received is None else received
        with self._service.open_stream(request, call) as stream:
            for delta in stream:
                received.append(delta)
                if stop_after is not None and len(received) >= stop_after:
                    break
        result: ChatResult = stream.result()
        return result

    def close(self) -> None:
        self._client.close()


class _AsyncChat:
    """The async service on an event loop of its own, kept for the life of the client (its
    connections belong to that loop)."""

    sdk_name = "AsyncOpenAI/Python"

    def __init__(self, settings: Settings) -> None:
        self._module = importlib.import_module(f"{_PACKAGE}.chat_async")
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._client = self._run(self._create())
        self._service = self._module.AsyncChatService(self._client, settings)

    async def _create(self) -> Any:
        return self._module.create_async_client(self.settings)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    def complete(self, request: ChatRequest, call: CallInfo | None = None) -> ChatResult:
        result: ChatResult = self._run(self._service.complete(request, call))
        return result

    def stream(
        self,
        request: ChatRequest,
        call: CallInfo | None = None,
        *,
        received: list[str] | None = None,
        stop_after: int | None = None,
    ) -> ChatResult:
        received = [] if received is None else received
        return self._run(self._stream(request, call, received, stop_after))

    async def _stream(
        self,
        request: ChatRequest,
        call: CallInfo | None,
        received: list[str],
        stop_after: int | None,
    ) -> ChatResult:
        async with await self._service.open_stream(request, call) as stream:
            async for delta in stream:
                received.append(delta)
                if stop_after is not None and len(received) >= stop_after:
                    break
        result: ChatResult = stream.result()
        return result

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this chat's loop (async-only tests)."""
        return self._run(coroutine)

    @property
    def service(self) -> Any:
        return self._service

    def close(self) -> None:
        self._run(self._client.close())
        self._run(self._loop.shutdown_asyncgens())
        self._loop.close()


class Driver:
    """One of the project's chat services; `chat(...)` is the service for the settings from the
    environment and `overrides`.

    Clients are kept for the session, one per driver and settings: making one costs tens of
    milliseconds of CPU (its TLS context), more than most tests here take. `fresh=True` makes
    a client for this test alone, with no connection open yet.
    """

    def __init__(self, name: str, pool: dict[tuple[str, ...], Chat]) -> None:
        self.name = name
        self._pool = pool
        self._fresh: list[Chat] = []

    def chat(self, *, fresh: bool = False, **overrides: Any) -> Chat:
        settings = load_settings().model_copy(update=overrides)
        key = (self.name, settings.api_key.get_secret_value(), repr(settings))
        if not fresh and key in self._pool:
            return self._pool[key]
        chat: Chat = _SyncChat(settings) if self.name == "sync" else _AsyncChat(settings)
        if fresh:
            self._fresh.append(chat)
        else:
            self._pool[key] = chat
        return chat

    def close(self) -> None:
        for chat in self._fresh:
            chat.close()


@pytest.fixture(scope="session")
def _chat_pool() -> Iterator[dict[tuple[str, ...], Chat]]:
    pool: dict[tuple[str, ...], Chat] = {}
    yield pool
    for chat in pool.values():
        chat.close()


@pytest.fixture(params=DRIVERS)
def driver(
    request: pytest.FixtureRequest,
    gateway_env: dict[str, str],
    _chat_pool: dict[tuple[str, ...], Chat],
) -> Iterator[Driver]:
    opened = Driver(request.param, _chat_pool)
    yield opened
    opened.close()


@pytest.fixture
def async_driver(
    gateway_env: dict[str, str], _chat_pool: dict[tuple[str, ...], Chat]
) -> Iterator[Driver]:
    """The async service alone, for what only it has (task cancellation)."""
    if "async" not in DRIVERS:
        pytest.skip("this bake ships no async chat service")
    opened = Driver("async", _chat_pool)
    yield opened
    opened.close()
