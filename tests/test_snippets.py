"""The copy-paste snippets: every one runs against the fake gateway, and agrees with the core.

The single source is the project template's `docs/snippets/` (rendered by cookiecutter with the
project's answers); the template's `snippets/` is that directory rendered with the default
answers, kept identical by `test_template_snippets_are_the_rendered_defaults` and refreshed
with `python tests/test_snippets.py --sync`.

The snippets are standalone (a team copies them into a codebase without the generated package),
so they are checked against the generated project's core at test time rather than generated
from it: the clients against `chat_sync.create_client` / `chat_async.create_async_client`, the
retry vetoes against `retry.veto`, error categories against the chat services for every
fake-gateway scenario, the terminal stream against the CLI's `ask`, redaction against
`redaction.redact` (all in a script bake, which has both the sync and the async core), and the
SSE bytes and error answers against the generated FastAPI and Flask services serving the same
stream (their entry points: `<package>.app:app` under uvicorn, gunicorn with `gunicorn.conf.py`;
baked with `caller_auth=none` and run with every model allowed, as open as the SSE snippets),
and the caller-keys snippet against a `caller_auth=keys` bake's callers file and error words.
Each snippet runs from a bake that ships it: the script bake ships the client, error, terminal,
logging and fixture snippets; the web bakes ship those and the SSE, nginx and caller-key ones.
Servers are real processes on loopback, Redis a real `redis-server`; the fake gateway is the
project's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx2
import pytest
from conftest import TEMPLATE_DIR, bake_cli, load_module, load_scanner, out_dir

PACKAGE = "alltkn_service"
SNIPPETS = Path("docs", "snippets")
TEMPLATE_SNIPPETS = TEMPLATE_DIR / "snippets"
# Made at run time: nothing key-shaped is ever written into a file.
KEY = "sk-" + secrets.token_hex(24)
KEEPALIVE_S = 0.3
SNIPPET_MODULES = ("alltkn_client", "alltkn_errors", "alltkn_sse", "redacting_logs")
# What only the web bakes ship (the web layer's docs/snippets/): a script serves no stream and
# has no callers. Every bake ships the others.
WEB_ONLY = {
    "alltkn_sse.py",
    "sse_fastapi.py",
    "sse_flask.py",
    "nginx_sse.conf",
    "caller_keys.py",
    "caller_keys_fastapi.py",
    "caller_keys_flask.py",
}


# --- baking and the code under test -------------------------------------------------------------


def bake(tmp_path: Path, framework: str, **answers: str) -> Path:
    done = bake_cli(tmp_path, framework=framework, **answers)
    assert done.returncode == 0, done.stderr
    return out_dir(tmp_path) / "alltkn-service"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script bake: the sync core (`chat_sync`) and the async one (`chat_async`) together,
    the CLI, and the snippets every bake ships."""
    return bake(tmp_path_factory.mktemp("script"), "script")


# The services the SSE snippets are compared with: open, like the snippets (no caller keys).
# The FastAPI bake is also where the web-only snippets run from.
@pytest.fixture(scope="module")
def fastapi_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("fastapi"), "fastapi", caller_auth="none")


@pytest.fixture(scope="module")
def flask_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("flask"), "flask", caller_auth="none")


@pytest.fixture(scope="module")
def fake_gateway_module(project: Path) -> ModuleType:
    return load_module(project / "tests" / "fake_gateway.py", "snippets_fake_gateway")


@pytest.fixture(scope="module")
def gateway(fake_gateway_module: ModuleType) -> Iterator[Any]:
    with fake_gateway_module.FakeGateway(api_key=KEY, hang_seconds=3.0) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_gateway(request: pytest.FixtureRequest) -> None:
    if "gateway" in request.fixturenames:
        request.getfixturevalue("gateway").reset()


@pytest.fixture(scope="module")
def modules(project: Path, fastapi_project: Path) -> Iterator[dict[str, ModuleType]]:
    """The baked core (`core.chat_sync`, ...) and the snippets, imported in this process: each
    from the script bake when it ships it, else from the FastAPI bake."""
    paths = [str(project / "src"), str(project / SNIPPETS), str(fastapi_project / SNIPPETS)]
    sys.path[:0] = paths
    try:
        names = ["settings", "request", "errors", "retry", "redaction", "chat_sync", "chat_async"]
        loaded = {f"core.{n}": importlib.import_module(f"{PACKAGE}.{n}") for n in names}
        loaded |= {name: importlib.import_module(name) for name in SNIPPET_MODULES}
        yield loaded
    finally:
        for path in paths:
            sys.path.remove(path)
        for name in list(sys.modules):
            if name.split(".")[0] in (PACKAGE, *SNIPPET_MODULES):
                del sys.modules[name]


def gateway_env(gateway: Any, **overrides: str) -> dict[str, str]:
    """The variables both the project and the snippets read, pointed at the fake."""
    return {
        "ALLTKN_API_KEY": KEY,
        "ALLTKN_BASE_URL": gateway.base_url,
        "ALLTKN_MODEL": "gpt-4o-mini",
        "ALLTKN_TIMEOUT_S": "5",
        "ALLTKN_MAX_RETRIES": "0",
        "ALLTKN_SSE_KEEPALIVE_S": str(KEEPALIVE_S),
        # Decoys: neither the project nor a snippet may fall back to the SDK's own variables.
        "OPENAI_API_KEY": "decoy-openai-key-value",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/never-used",
        **overrides,
    }


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """Set the environment for in-process checks (cwd without a .env)."""
    monkeypatch.chdir(tmp_path)
    for name in ("ALLTKN_TIMEOUT_S", "ALLTKN_MAX_RETRIES", "ALLTKN_BASE_URL"):
        monkeypatch.delenv(name, raising=False)

    def apply(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return apply


def process_env(gateway: Any, pythonpath: list[Path], **overrides: str) -> dict[str, str]:
    return {
        **os.environ,
        **gateway_env(gateway, **overrides),
        "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath),
        "PYTHONUNBUFFERED": "1",
    }


def run_python(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,  # not the runner's own: `ask` reads piped input
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- 1. the template's copy is the rendered source ----------------------------------------------


# What tools leave next to the snippets when a test runs them (mypy, Python).
TOOL_CACHES = ("__pycache__", ".mypy_cache")


def snippet_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not set(TOOL_CACHES) & set(p.parts)
    }


def test_template_snippets_are_the_rendered_defaults(fastapi_project: Path) -> None:
    rendered = snippet_files(fastapi_project / SNIPPETS)  # the default framework's: all of them
    assert rendered, "the project template has no docs/snippets"
    stale = sorted(
        name
        for name in rendered.keys() | snippet_files(TEMPLATE_SNIPPETS).keys()
        if rendered.get(name) != snippet_files(TEMPLATE_SNIPPETS).get(name)
    )
    assert stale == [], f"snippets/ is stale: run `python tests/test_snippets.py --sync` ({stale})"


def test_each_bake_ships_the_snippets_it_runs(project: Path, fastapi_project: Path) -> None:
    """The script bake ships no SSE, nginx or caller-key snippet, and its index and docs name
    none; the web bakes ship every snippet. The snippets both ship are the same files."""
    script, web = snippet_files(project / SNIPPETS), snippet_files(fastapi_project / SNIPPETS)
    assert set(script) == set(web) - WEB_ONLY
    assert set(web) >= WEB_ONLY
    assert {name: web[name] for name in script if name != "README.md"} == {
        name: content for name, content in script.items() if name != "README.md"
    }
    script_docs = [project / "README.md", *(project / "docs").rglob("*.md")]
    for path in script_docs:
        text = path.read_text(encoding="utf-8")
        named = [n for n in (*WEB_ONLY, "nginx", "/v1/chat/stream") if n in text]
        assert named == [], f"{path.relative_to(project)} names {named}"


@pytest.mark.parametrize("bake_name", ["script", "fastapi"])
def test_every_snippet_says_when_to_use_it(request: pytest.FixtureRequest, bake_name: str) -> None:
    baked = request.getfixturevalue("project" if bake_name == "script" else "fastapi_project")
    index = (baked / SNIPPETS / "README.md").read_text(encoding="utf-8")
    for name, content in snippet_files(baked / SNIPPETS).items():
        if name == "README.md":  # the index: it lists every file it ships, and no other
            continue
        assert b"When to use: " in content[:1500], name
        assert f"({name})" in index, name
    assert set(re.findall(r"\]\(([\w.]+)\)", index)) == set(snippet_files(baked / SNIPPETS)) - {
        "README.md"
    }


# --- 2. the client ------------------------------------------------------------------------------


def client_settings(client: Any) -> dict[str, Any]:
    return {
        "base_url": str(client.base_url),
        "api_key": client.api_key,
        "timeout": client.timeout,
        "max_retries": client.max_retries,
        # Header values the SDK leaves out are `Omit` sentinels, which compare by identity.
        "headers": {k: v for k, v in client.default_headers.items() if isinstance(v, str)},
        # The transport: aiohttp for the async client, httpx2's for the sync one.
        "http_client": type(client._client).__name__,
    }


@pytest.mark.parametrize(
    "variables",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "ALLTKN_BASE_URL": "http://127.0.0.1:8900/api/v1/",
                "ALLTKN_TIMEOUT_S": "7.5",
                "ALLTKN_MAX_RETRIES": "3",
            },
            id="custom",
        ),
    ],
)
def test_the_client_snippet_builds_the_projects_client(
    modules: dict[str, ModuleType], env: Callable[..., None], variables: dict[str, str]
) -> None:
    env(
        ALLTKN_API_KEY=KEY,
        OPENAI_API_KEY="decoy-openai-key-value",
        OPENAI_BASE_URL="http://127.0.0.1:9/never-used",
        **variables,
    )
    snippet = modules["alltkn_client"]
    settings = modules["core.settings"].load_settings()

    assert client_settings(snippet.make_client()) == client_settings(
        modules["core.chat_sync"].create_client(settings)
    )
    assert client_settings(snippet.make_async_client()) == client_settings(
        modules["core.chat_async"].create_async_client(settings)
    )
    assert snippet.make_client().api_key == KEY


@pytest.mark.parametrize(
    ("model", "max_retries"),
    [
        pytest.param("fake-error-503-model", "1", id="no-channel-503-not-retried"),
        pytest.param("fake-error-500", "1", id="server-error-retried"),
        pytest.param("fake-error-401", "1", id="auth-not-retried"),
        pytest.param("fake-error-429", "1", id="retry-after-above-cap-not-retried"),
        pytest.param("fake-429-once", "1", id="retry-after-within-cap-retried"),
        pytest.param("fake-error-502", "1", id="proxy-html-502-retried"),
    ],
)
def test_the_client_snippet_retries_like_the_project(
    modules: dict[str, ModuleType],
    env: Callable[..., None],
    gateway: Any,
    model: str,
    max_retries: str,
) -> None:
    """Retry budget and the response hook's vetoes, observed at the gateway."""
    env(**gateway_env(gateway, ALLTKN_MAX_RETRIES=max_retries))
    settings = modules["core.settings"].load_settings()
    clients = {
        "project": modules["core.chat_sync"].create_client(settings),
        "snippet": modules["alltkn_client"].make_client(),
    }
    seen: dict[str, tuple[int, set[str]]] = {}
    for name, client in clients.items():
        gateway.reset()
        with contextlib.suppress(Exception), client:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        requests = gateway.requests_for(model)
        seen[name] = (len(requests), {r.headers.get("x-client-name", "") for r in requests})

    assert seen["snippet"] == seen["project"]


def _error(code: str, message: str = "x") -> bytes:
    return json.dumps({"error": {"message": message, "type": "x", "code": code}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        pytest.param(408, b"", {}, id="408"),
        pytest.param(409, _error("conflict"), {}, id="409"),
        pytest.param(429, _error("rate_limit_exceeded"), {}, id="429-no-retry-after"),
        pytest.param(429, _error("rate_limit_exceeded"), {"Retry-After": "2"}, id="429-within-cap"),
        pytest.param(429, _error("rate_limit_exceeded"), {"Retry-After": "60"}, id="429-above-cap"),
        pytest.param(429, b"", {"retry-after-ms": "9000"}, id="429-ms-above-cap"),
        pytest.param(429, b"", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, id="429-date"),
        pytest.param(429, _error("insufficient_quota"), {}, id="429-openai-no-balance"),
        pytest.param(500, _error("server_error"), {}, id="500"),
        pytest.param(502, b"<html>Bad Gateway</html>", {}, id="502-html"),
        pytest.param(503, _error("model_not_found", "无可用渠道"), {}, id="503-no-channel"),
        pytest.param(503, _error("insufficient_user_quota"), {}, id="503-no-balance"),
    ],
)
def test_the_client_snippet_vetoes_the_retries_the_project_vetoes(
    modules: dict[str, ModuleType],
    env: Callable[..., None],
    gateway: Any,
    status: int,
    body: bytes,
    headers: dict[str, str],
) -> None:
    """The snippet's response hook against `retry.veto`, one answer at a time (every status
    here is one the SDK would retry: the only answers the project's hooks pass to `veto`)."""
    env(**gateway_env(gateway, ALLTKN_RETRY_AFTER_CAP_S="5"))
    settings = modules["core.settings"].load_settings()
    retry, snippet = modules["core.retry"], modules["alltkn_client"]
    assert retry.sdk_would_retry(status)
    hooks = {
        "project": lambda response: retry.veto(response, settings.retry_after_cap_s),
        "snippet": snippet._veto_pointless_retry(snippet.client_options()["retry_after_cap_s"]),
    }
    vetoed = {}
    for name, hook in hooks.items():
        response = httpx2.Response(status, content=body, headers=headers)  # body read
        hook(response)
        vetoed[name] = response.headers.get("x-should-retry")
    assert vetoed["snippet"] == vetoed["project"]


def test_the_async_client_snippet_skips_retrying_no_channel(
    modules: dict[str, ModuleType], env: Callable[..., None], gateway: Any
) -> None:
    env(**gateway_env(gateway, ALLTKN_MAX_RETRIES="2"))
    settings = modules["core.settings"].load_settings()

    async def requests_made(client: Any) -> int:
        gateway.reset()
        with contextlib.suppress(Exception):
            async with client:
                await client.chat.completions.create(
                    model="fake-error-503-model", messages=[{"role": "user", "content": "x"}]
                )
        return len(gateway.requests_for("fake-error-503-model"))

    project = asyncio.run(requests_made(modules["core.chat_async"].create_async_client(settings)))
    snippet = asyncio.run(requests_made(modules["alltkn_client"].make_async_client()))
    assert snippet == project


BAD_SETTINGS = [
    pytest.param("ALLTKN_TIMEOUT_S", "abc", id="timeout-not-a-number"),
    pytest.param("ALLTKN_TIMEOUT_S", "0", id="timeout-zero"),
    pytest.param("ALLTKN_TIMEOUT_S", "nan", id="timeout-nan"),
    pytest.param("ALLTKN_MAX_RETRIES", "x", id="retries-not-a-number"),
    pytest.param("ALLTKN_MAX_RETRIES", "-1", id="retries-negative"),
    pytest.param("ALLTKN_MAX_RETRIES", "1.5", id="retries-fraction"),
    pytest.param("ALLTKN_RETRY_AFTER_CAP_S", "abc", id="retry-after-cap-not-a-number"),
    pytest.param("ALLTKN_RETRY_AFTER_CAP_S", "1e9", id="retry-after-cap-too-long"),
    pytest.param("ALLTKN_BASE_URL", "api.alltkn.com/api/v1", id="base-url-no-scheme"),
    pytest.param("ALLTKN_API_KEY", "", id="key-missing"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_SETTINGS)
def test_a_bad_setting_stops_the_client_naming_the_variable(
    modules: dict[str, ModuleType],
    env: Callable[..., None],
    gateway: Any,
    variable: str,
    value: str,
) -> None:
    """Checked once, when the client is made: not as a ValueError deep in a request, nor (for
    the Retry-After cap) dressed up as a gateway failure."""
    env(**gateway_env(gateway, **{variable: value}))
    snippet = modules["alltkn_client"]
    for make in (snippet.make_client, snippet.make_async_client):
        with pytest.raises(snippet.SettingsError) as caught:
            make()
        assert str(caught.value).startswith(f"{variable} "), caught.value
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["alltkn_client.py"], id="client"),
        pytest.param(["alltkn_errors.py", "Hi", "fake-error-500"], id="errors"),
        pytest.param(["stream_terminal.py", "Hi"], id="terminal"),
    ],
)
@pytest.mark.parametrize(("variable", "value"), BAD_SETTINGS[::3] + BAD_SETTINGS[-1:])
def test_a_snippet_run_with_a_bad_setting_says_which_in_one_line(
    project: Path, gateway: Any, command: list[str], variable: str, value: str
) -> None:
    env = process_env(gateway, [project / "src"], **{variable: value})
    done = run_python(command, project / SNIPPETS, env)

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error[config]: {variable} "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert gateway.requests_for("fake-error-500") == []  # refused before any request


@pytest.mark.parametrize("variable", ["ALLTKN_SSE_KEEPALIVE_S", "ALLTKN_SSE_SEND_TIMEOUT_S"])
def test_the_sse_snippet_names_a_bad_interval(
    fastapi_project: Path, gateway: Any, variable: str
) -> None:
    env = process_env(gateway, [], **{variable: "soon"})
    code = "import alltkn_sse"
    done = run_python(["-c", code], fastapi_project / SNIPPETS, env)

    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"alltkn_client.SettingsError: {variable} must be a number"), last


# --- 3. error categories ------------------------------------------------------------------------

SCENARIOS = [
    "fake-error-401",
    "fake-error-quota",
    "fake-error-402",
    "fake-error-403",
    "fake-error-404-model",
    "fake-error-503-model",
    "fake-error-400",
    "fake-error-429",
    "fake-error-500",
    "fake-error-502",
    "fake-html-200",
    "fake-timeout",
    "fake-drop",
    "wrong-key",
    "wrong-base-path",
    "unreachable",
]


def scenario_env(gateway: Any, scenario: str) -> dict[str, str]:
    overrides = {"ALLTKN_TIMEOUT_S": "1"}
    if scenario == "wrong-key":
        overrides["ALLTKN_API_KEY"] = "sk-" + secrets.token_hex(24)
    elif scenario == "wrong-base-path":
        overrides["ALLTKN_BASE_URL"] = gateway.base_url.removesuffix("/api/v1") + "/v1"
    elif scenario == "unreachable":
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        overrides["ALLTKN_BASE_URL"] = f"http://127.0.0.1:{port}/api/v1"
    return gateway_env(gateway, **overrides)


def model_for(scenario: str) -> str:
    return scenario if scenario.startswith("fake-") else "gpt-4o-mini"


def test_the_snippet_knows_every_category_with_the_projects_words(
    modules: dict[str, ModuleType],
) -> None:
    errors = modules["core.errors"]
    core = {
        category.value: (errors.GatewayError(category).message, errors.GatewayError(category).hint)
        for category in errors.Category
    }
    snippet = modules["alltkn_errors"].CATEGORIES
    assert snippet == core


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_error_snippet_classifies_like_the_project(
    modules: dict[str, ModuleType], env: Callable[..., None], gateway: Any, scenario: str
) -> None:
    env(**scenario_env(gateway, scenario))
    settings = modules["core.settings"].load_settings()
    chat_sync = modules["core.chat_sync"]
    service = chat_sync.ChatService(chat_sync.create_client(settings), settings)
    request = modules["core.request"].ChatRequest(prompt="x", model=model_for(scenario))
    snippet = modules["alltkn_errors"]

    with pytest.raises(modules["core.errors"].GatewayError) as expected:
        service.complete(request)
    with pytest.raises(snippet.UPSTREAM_ERRORS) as caught:
        snippet.ask(modules["alltkn_client"].make_client(), "x", model_for(scenario))

    assert snippet.classify(caught.value) == expected.value.category.value
    has_id = snippet.upstream_request_id(caught.value) is not None
    assert has_id == (expected.value.upstream_request_id is not None)


@pytest.mark.parametrize("scenario", ["fake-timeout", "fake-drop", "unreachable"])
def test_the_error_snippet_classifies_async_transport_failures_like_the_project(
    modules: dict[str, ModuleType], env: Callable[..., None], gateway: Any, scenario: str
) -> None:
    # The async client's aiohttp transport reports a refused or dropped connection as a
    # connect timeout: both classifiers must see through it alike.
    env(**{**scenario_env(gateway, scenario), "ALLTKN_MAX_RETRIES": "0"})
    settings = modules["core.settings"].load_settings()
    snippet = modules["alltkn_errors"]
    messages = [{"role": "user", "content": "x"}]

    chat_async = modules["core.chat_async"]
    request = modules["core.request"].ChatRequest(prompt="x", model=model_for(scenario))

    async def project_category() -> str:
        client = chat_async.create_async_client(settings)
        async with client:
            service = chat_async.AsyncChatService(client, settings)
            with pytest.raises(modules["core.errors"].GatewayError) as caught:
                await service.complete(request)
        return str(caught.value.category.value)

    async def snippet_category() -> str:
        async with modules["alltkn_client"].make_async_client() as client:
            with pytest.raises(snippet.UPSTREAM_ERRORS) as caught:
                await client.chat.completions.create(model=model_for(scenario), messages=messages)
        return str(snippet.classify(caught.value))

    expected = "timeout" if scenario == "fake-timeout" else "connection"
    assert asyncio.run(project_category()) == expected
    assert asyncio.run(snippet_category()) == expected


def test_the_error_snippet_runs_as_shown(project: Path, gateway: Any) -> None:
    env = process_env(gateway, [])
    ok = run_python(["alltkn_errors.py", "Hello"], project / SNIPPETS, env)
    failed = run_python(["alltkn_errors.py", "Hello", "fake-error-quota"], project / SNIPPETS, env)

    assert (ok.returncode, ok.stdout) == (0, "Hello from the fake gateway.\n")
    assert failed.returncode == 1
    assert failed.stderr.startswith("error[quota]: ")
    assert "用户额度不足" in failed.stderr  # the gateway's own words, for the logs
    assert KEY not in failed.stdout + failed.stderr


# --- 4. streaming to a terminal -----------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["gpt-4o-mini", "fake-stream-cut", "fake-stream-error", "fake-stream-no-finish"]
)
def test_the_terminal_snippet_streams_like_the_cli(project: Path, gateway: Any, model: str) -> None:
    env = process_env(gateway, [project / "src"])
    snippet = run_python(["stream_terminal.py", "Hello", model], project / SNIPPETS, env)
    cli = run_python(["-m", PACKAGE, "ask", "Hello", "--model", model], project, env)

    category = re.compile(r"error\[(\w+)\]")
    assert snippet.returncode == cli.returncode, snippet.stderr + cli.stderr
    assert category.findall(snippet.stderr) == category.findall(cli.stderr)
    if model == "gpt-4o-mini":
        assert snippet.stdout == "Hello from the fake gateway.\n"
    assert "Traceback" not in snippet.stderr


def test_ctrl_c_closes_the_terminal_stream(project: Path, gateway: Any) -> None:
    process = subprocess.Popen(
        [sys.executable, "stream_terminal.py", "Hello", "fake-slow"],
        cwd=project / SNIPPETS,
        env=process_env(gateway, []),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    first = process.stdout.read(4)  # "tok0": printed before the gateway finished
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)

    assert first == b"tok0"
    assert process.returncode == 130
    assert b"Traceback" not in stderr
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=3)


# --- 5. SSE from FastAPI and Flask --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serve(command: list[str], port: int, cwd: Path, env: dict[str, str]) -> Iterator[str]:
    """A server process on loopback; yields its URL once it accepts connections."""
    log = cwd / f"server-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command} exited:\n{log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{command} did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
    output = log.read_bytes()
    log.unlink()
    assert KEY.encode() not in output
    assert b"Traceback" not in output, output.decode(errors="replace")


def uvicorn(app: str, port: int) -> list[str]:
    host = ["--host", "127.0.0.1", "--port", str(port)]
    return [sys.executable, "-m", "uvicorn", app, "--loop", "asyncio", *host]  # as documented


def gunicorn_snippet(port: int) -> list[str]:
    # As documented in sse_flask.py.
    bind = f"127.0.0.1:{port}"
    return [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "32", "-b", bind]


@pytest.fixture(scope="module")
def started(gateway: Any) -> Iterator[Callable[[str, Path], dict[str, str]]]:
    """Starts a framework's pair of servers on first use and keeps them for the module: the
    tests of one framework may reach a worker in any order, the servers start once (and a pair
    that failed to start is not tried again for every test)."""
    pairs: dict[str, dict[str, str]] = {}
    failures: dict[str, str] = {}
    with contextlib.ExitStack() as stack:

        def pair(framework: str, baked: Path) -> dict[str, str]:
            if framework in failures:
                pytest.fail(failures[framework], pytrace=False)
            if framework not in pairs:
                try:
                    pairs[framework] = stack.enter_context(server_pair(baked, gateway, framework))
                except pytest.fail.Exception as exc:
                    failures[framework] = f"the {framework} servers did not start: {exc}"
                    raise
            return pairs[framework]

        yield pair


@pytest.fixture(params=["fastapi", "flask"])
def servers(
    request: pytest.FixtureRequest, started: Callable[[str, Path], dict[str, str]]
) -> dict[str, str]:
    """The snippet's server and the generated service, same framework, same gateway."""
    return started(request.param, request.getfixturevalue(f"{request.param}_project"))


@contextlib.contextmanager
def server_pair(baked: Path, gateway: Any, framework: str) -> Iterator[dict[str, str]]:
    snippet_port, project_port = free_port(), free_port()
    if framework == "fastapi":
        snippet_command = uvicorn("sse_fastapi:app", snippet_port)
        project_command = uvicorn(f"{PACKAGE}.app:app", project_port)
    else:
        snippet_command = [*gunicorn_snippet(snippet_port), "sse_flask:app"]
        bind = f"127.0.0.1:{project_port}"
        project_command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
        project_command += ["--bind", bind, "--workers", "1", f"{PACKAGE}.app:app"]
    with (
        serve(
            snippet_command, snippet_port, baked / SNIPPETS, process_env(gateway, [])
        ) as snippet_url,
        serve(
            project_command,
            project_port,
            baked,
            # Every model, as the snippets (they have no allowlist: caller_keys.py has one).
            process_env(gateway, [baked / "src"], ALLTKN_ALLOWED_MODELS="*"),
        ) as project_url,
    ):
        yield {"framework": framework, "snippet": snippet_url, "project": project_url}


def post_stream(url: str, model: str, request_id: str) -> tuple[int, dict[str, str], bytes]:
    import httpx2

    with httpx2.stream(
        "POST",
        url + "/v1/chat/stream",
        json={"prompt": "Hello", "model": model},
        headers={"X-Request-ID": request_id},
        timeout=10,
    ) as response:
        body = response.read()
    return response.status_code, dict(response.headers), body


STREAM_SCENARIOS = [
    "gpt-4o-mini",
    "fake-stream-cut",
    "fake-stream-error",
    "fake-stream-no-finish",
    "fake-error-quota",
    "fake-error-401",
    "fake-error-503-model",
    "fake-error-429",
    "fake-error-400",
]
SNIPPET_SIDES = ("snippet", "project")
COMPARED_HEADERS = ("cache-control", "x-accel-buffering", "retry-after", "x-request-id")


@pytest.mark.parametrize("model", STREAM_SCENARIOS)
def test_the_sse_snippets_answer_byte_for_byte_like_the_service(
    servers: dict[str, str], model: str
) -> None:
    import json

    request_id = f"snippet-check-{model}"
    answers = {name: post_stream(servers[name], model, request_id) for name in SNIPPET_SIDES}
    (status, headers, body), (p_status, p_headers, p_body) = answers.values()

    assert status == p_status, (
        f"snippet: {status} {body[:300]!r}, service: {p_status} {p_body[:300]!r}"
    )
    assert headers["content-type"].split(";")[0] == p_headers["content-type"].split(";")[0]
    for name in COMPARED_HEADERS:
        assert headers.get(name) == p_headers.get(name), name
    if status == 200:
        assert body.replace(b": keep-alive\n\n", b"") == p_body.replace(b": keep-alive\n\n", b"")
    else:  # the JSON encoders of the frameworks differ; the documents must not
        assert json.loads(body) == json.loads(p_body)


BAD_BODIES = [
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b'{"model": "gpt-4o-mini"}', id="no-prompt"),
    pytest.param(b'{"prompt": ""}', id="empty-prompt"),
    pytest.param(b'{"prompt": 123456789}', id="prompt-not-text"),
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_the_sse_snippets_refuse_a_bad_body_like_the_service(
    servers: dict[str, str], body: bytes
) -> None:
    """The promised `{"error": {category, message, hint, request_id}}`, the service's status,
    the input never echoed (FastAPI's default 422 would echo it)."""
    import json

    answers = {}
    for name in SNIPPET_SIDES:
        response = httpx2.post(
            servers[name] + "/v1/chat/stream",
            content=body,
            headers={"Content-Type": "application/json", "X-Request-ID": f"bad-body-{name}"},
            timeout=10,
        )
        answers[name] = response
        document = json.loads(response.content)
        assert list(document) == ["error"], document
        error = document["error"]
        assert sorted(error) == ["category", "hint", "message", "request_id"], error
        assert error["category"] == "invalid_request"
        assert error["request_id"] == response.headers["x-request-id"] == f"bad-body-{name}"
        assert error["message"]
        assert "prompt" in error["hint"]
        assert b"123456789" not in response.content
    assert answers["snippet"].status_code == answers["project"].status_code


def test_the_sse_snippets_deliver_incrementally_and_keep_alive(
    servers: dict[str, str], gateway: Any
) -> None:
    import httpx2

    lines: list[str] = []
    with httpx2.stream(
        "POST", servers["snippet"] + "/v1/chat/stream", json={"prompt": "x", "model": "fake-slow"}
    ) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("data: "):
                break
        completed_before_first_delta = gateway.completed_streams
    assert lines[-1] == 'data: {"delta":"tok0 "}'
    # The gateway was still generating its 2 s answer (a bound on the time would fail on a
    # loaded machine; this does not, and fails the same on a buffering relay).
    assert completed_before_first_delta == 0

    lines = []
    with httpx2.stream(
        "POST",
        servers["snippet"] + "/v1/chat/stream",
        json={"prompt": "x", "model": "fake-slow-start"},  # silent for 1 s
    ) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("data: "):
                break
    assert lines.count(": keep-alive") >= 2


def test_a_client_hanging_up_aborts_the_upstream_stream(
    servers: dict[str, str], gateway: Any
) -> None:
    import httpx2

    with httpx2.stream(
        "POST", servers["snippet"] + "/v1/chat/stream", json={"prompt": "x", "model": "fake-slow"}
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break
    # The gateway notices within one 0.2 s delta interval once the relay closed its stream.
    assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=3)
    assert gateway.completed_streams == 0


# --- 6. nginx -----------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)


def nginx_location(project: Path, port: int) -> str:
    text = (project / SNIPPETS / "nginx_sse.conf").read_text(encoding="utf-8")
    assert "proxy_pass http://127.0.0.1:8000;" in text
    return text.replace("127.0.0.1:8000", f"127.0.0.1:{port}")


def nginx_conf(prefix: Path, listen: int, location: str) -> Path:
    for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / temp).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{listen};
{location}
    }}
}}
""",
        encoding="utf-8",
    )
    return conf


def test_the_nginx_read_timeout_outlasts_the_keep_alive_interval(
    fastapi_project: Path, modules: dict[str, ModuleType]
) -> None:
    text = (fastapi_project / SNIPPETS / "nginx_sse.conf").read_text(encoding="utf-8")
    keepalive = modules["core.settings"].Settings.model_fields["sse_keepalive_s"].default
    match = re.search(r"^\s*proxy_read_timeout (\d+)s;", text, re.MULTILINE)
    assert match is not None
    assert int(match.group(1)) >= 2 * keepalive
    assert re.search(r"^\s*proxy_buffering off;", text, re.MULTILINE)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian package nginx)")
def test_sse_streams_through_the_nginx_snippet(
    fastapi_project: Path, gateway: Any, tmp_path: Path
) -> None:
    import httpx2

    assert NGINX is not None
    project = fastapi_project  # a bake that ships the nginx and SSE snippets
    app_port, proxy_port = free_port(), free_port()
    conf = nginx_conf(tmp_path, proxy_port, nginx_location(project, app_port))
    checked = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr

    snippet = uvicorn("sse_fastapi:app", app_port)
    with (
        serve(snippet, app_port, project / SNIPPETS, process_env(gateway, [])),
        serve(
            [NGINX, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
            proxy_port,
            tmp_path,
            dict(os.environ),
        ) as proxy,
    ):
        with httpx2.stream(
            "POST", proxy + "/v1/chat/stream", json={"prompt": "x", "model": "fake-slow"}
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    break
            completed_before_first_delta = gateway.completed_streams
        # Not buffered: the first delta came through while the gateway was still generating...
        assert completed_before_first_delta == 0
        # ...and the hang-up travelled through nginx to the gateway.
        assert gateway.wait_for(lambda: gateway.aborted_streams == 1, timeout=3)


# --- 7. logging ---------------------------------------------------------------------------------


def test_the_logging_snippet_redacts_like_the_project(modules: dict[str, ModuleType]) -> None:
    live_key = "sk-" + secrets.token_hex(24)
    other = "sk-" + secrets.token_urlsafe(30)
    texts = [
        f"calling with {live_key}",
        f"Authorization: Bearer {live_key}",
        f"leaked {other} and {live_key[:-1]}",
        f"short sk-{secrets.token_hex(4)} stays",
        f'{{"api_key": "{other}"}}',
        "nothing secret here",
    ]
    snippet = modules["redacting_logs"].RedactingFilter([live_key])
    redact = modules["core.redaction"].redact

    assert [snippet.redact(text) for text in texts] == [redact(text, [live_key]) for text in texts]


def test_the_logging_snippet_runs_as_shown(project: Path) -> None:
    done = run_python(
        ["redacting_logs.py"], project / SNIPPETS, {**os.environ, "ALLTKN_API_KEY": KEY}
    )

    assert done.returncode == 0, done.stderr
    assert KEY not in done.stderr
    assert done.stderr.count("****" + KEY[-4:]) == 2  # the error text and the exception
    assert '"event": "upstream_call"' in done.stderr


# --- 8. the pytest fixture ----------------------------------------------------------------------


def test_the_fixture_snippet_passes_with_the_projects_fake(project: Path) -> None:
    done = run_python(
        [
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(SNIPPETS / "test_with_fake_gateway.py"),
        ],
        project,
        {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(project / "tests"), str(project / SNIPPETS)]),
        },
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


# --- 9. code blocks in the READMEs and docs -----------------------------------------------------

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
MARKERS = ("run", "typecheck")


class UnmarkedBlock(Exception):
    pass


def python_blocks(markdown: str, source: str) -> list[tuple[str, str]]:
    """(marker, code) for every python block; a python block without a marker is an error, so
    none can slip through unchecked. Mark blocks ```python run or ```python typecheck."""
    blocks = []
    for match in FENCE.finditer(markdown):
        words = match.group(1).split()
        if not words or words[0] not in ("python", "py"):
            continue
        marker = words[1] if len(words) > 1 else ""
        if marker not in MARKERS:
            line = markdown[: match.start()].count("\n") + 1
            raise UnmarkedBlock(f"{source}:{line}: mark the python block 'run' or 'typecheck'")
        blocks.append((marker, match.group(2)))
    return blocks


def test_an_unmarked_python_block_is_refused() -> None:
    with pytest.raises(UnmarkedBlock, match=r"README\.md:3"):
        python_blocks("# x\n\n```python\nprint(1)\n```\n", "README.md")
    assert python_blocks("```python run\nprint(1)\n```\n", "x") == [("run", "print(1)\n")]


def documents(projects: list[Path]) -> list[tuple[str, Path, Path]]:
    """(name, markdown file, the bake whose snippets it uses): the template's docs, and each
    bake's README and docs; their blocks run, or are type-checked, in the snippets' directory."""
    found = [("template README.md", TEMPLATE_DIR / "README.md", projects[-1])]
    for path in sorted(TEMPLATE_DIR.glob("docs/*.md")):
        found.append((f"template docs/{path.name}", path, projects[-1]))
    for project in projects:
        for path in sorted([project / "README.md", *(project / "docs").rglob("*.md")]):
            name = f"{project.parent.name} {path.relative_to(project).as_posix()}"
            found.append((name, path, project))
    return found


def doc_blocks(projects: list[Path], marker: str) -> list[tuple[str, str, Path]]:
    """(where, code, bake) of every python block of the docs marked `marker`, each once."""
    blocks: dict[str, tuple[str, str, Path]] = {}
    for name, path, project in documents(projects):
        for number, (mark, code) in enumerate(python_blocks(path.read_text("utf-8"), name)):
            if mark == marker:
                blocks.setdefault(code, (f"{name} block {number}", code, project))
    return list(blocks.values())


def test_every_python_block_in_the_docs_runs_against_the_fake(
    project: Path, fastapi_project: Path, gateway: Any, tmp_path: Path
) -> None:
    """`run` blocks, in the snippets' directory of the bake whose docs hold them; the
    `typecheck` ones go through mypy with the snippets (below)."""
    blocks = doc_blocks([project, fastapi_project], "run")
    assert blocks
    for number, (where, code, baked) in enumerate(blocks):
        script = tmp_path / f"block_{number}.py"
        script.write_text(code, encoding="utf-8")
        cwd = baked / SNIPPETS
        done = run_python([str(script)], cwd, process_env(gateway, [cwd]))
        assert done.returncode == 0, f"{where}:\n{code}\n{done.stderr}"


# --- 10. caller keys and limits ----------------------------------------------------------------


class RedisServer:
    """Debian's `redis-server` on a free loopback port, nothing saved; `stop()`, then `start()`
    again on the same port, is an outage."""

    def __init__(self, directory: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port = free_port()
        self.command = [executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        self.command += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.flush():
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"redis-server did not start: {self.command}")
            time.sleep(0.02)

    def flush(self) -> bool:
        """Empty every counter; False while the server does not answer."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), 0.5) as probe,
        ):
            probe.sendall(b"FLUSHALL\r\n")
            return probe.recv(16).startswith(b"+OK")
        return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


CALLER_KEYS_MODULES = ("caller_keys", "caller_keys_fastapi", "caller_keys_flask")
Answer = tuple[int, dict[str, str], dict[str, Any]]  # status, headers (lower case), JSON body


@pytest.fixture(params=["fastapi", "flask"])
def guarded(
    request: pytest.FixtureRequest,
    fastapi_project: Path,
    gateway: Any,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Callable[..., Answer], dict[str, str]]]:
    """The snippet's app of one framework (in this process, its test client), with fresh Redis
    counters and callers: `alice` (3 requests and 2000 tokens a minute), `narrow` (one model,
    no limits), `budget` (one call's tokens a day). Yields (post, keys by caller)."""
    assert redis_server.flush()
    monkeypatch.syspath_prepend(str(fastapi_project / SNIPPETS))  # a bake that ships them
    for name, value in gateway_env(gateway).items():
        monkeypatch.setenv(name, value)
    callers_file = tmp_path / "callers.json"
    monkeypatch.setenv("ALLTKN_CALLERS_FILE", str(callers_file))
    monkeypatch.setenv("ALLTKN_LIMITS_REDIS_URL", redis_server.url)
    monkeypatch.delenv("ALLTKN_ALLOWED_MODELS", raising=False)
    for name in CALLER_KEYS_MODULES:
        sys.modules.pop(name, None)
    snippet = importlib.import_module("caller_keys")
    keys = {
        "alice": snippet.create(callers_file, "alice", rpm=3, tpm=2000),
        "narrow": snippet.create(callers_file, "narrow", models=["gpt-4o-mini"]),
        "budget": snippet.create(callers_file, "budget", daily_tokens=CALL_TOKENS),
    }
    app = importlib.import_module(f"caller_keys_{request.param}").app
    if request.param == "fastapi":
        from fastapi.testclient import TestClient

        client = TestClient(app)

        def post(headers: dict[str, str], **body: Any) -> Answer:
            answer = client.post("/v1/chat", json={"prompt": "Hello", **body}, headers=headers)
            return answer.status_code, dict(answer.headers), answer.json()

    else:
        flask_client = app.test_client()

        def post(headers: dict[str, str], **body: Any) -> Answer:
            answer = flask_client.post(
                "/v1/chat", json={"prompt": "Hello", **body}, headers=headers
            )
            lowered = {name.lower(): value for name, value in answer.headers.items()}
            return answer.status_code, lowered, answer.get_json()

    yield post, keys
    for name in CALLER_KEYS_MODULES:
        sys.modules.pop(name, None)


CALL_TOKENS = (len(b"Hello") + 2) // 3 + 4 + 512  # reserved: the prompt's estimate + max_tokens


def refusal(answer: Answer, status: int, category: str) -> dict[str, str]:
    """Asserts the project's error answer; returns its headers."""
    code, headers, body = answer
    assert (code, body["error"]["category"]) == (status, category), body
    assert sorted(body["error"]) == ["category", "hint", "message", "request_id"]
    assert body["error"]["request_id"] == headers["x-request-id"]
    return headers


def clear_of_a_minute_boundary() -> None:
    """The per-minute windows are UTC minutes: start a sequence that must stay in one early."""
    if (left := 60 - time.time() % 60) < 5:
        time.sleep(left + 0.05)


def test_the_caller_keys_snippet_guards_the_app(
    guarded: tuple[Callable[..., Answer], dict[str, str]],
    gateway: Any,
    redis_server: RedisServer,
) -> None:
    post, keys = guarded
    bearer = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
    unknown = "ck_" + secrets.token_urlsafe(32)  # well-formed, in no callers file
    for headers in ({}, {"Authorization": f"Bearer {unknown}"}, {"Authorization": keys["alice"]}):
        refused = refusal(post(headers), 401, "caller_auth")
        assert refused["www-authenticate"] == "Bearer"
    assert gateway.requests == []

    clear_of_a_minute_boundary()
    status, headers, body = post({**bearer["alice"], "X-Request-ID": "caller-keys-1"})
    assert status == 200, body
    assert (body["content"], body["caller"]) == ("Hello from the fake gateway.", "alice")
    assert headers["x-request-id"] == "caller-keys-1"
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-limit-tokens"] == "2000"
    assert headers["x-ratelimit-remaining-tokens"] == str(2000 - CALL_TOKENS)  # reserved
    used = body["usage"]["total_tokens"]
    status, headers, _ = post(bearer["alice"])
    assert status == 200
    # The first call was settled with the gateway's count instead of its reservation.
    assert headers["x-ratelimit-remaining-tokens"] == str(2000 - used - CALL_TOKENS)
    assert post(bearer["alice"])[0] == 200
    rate_limited = refusal(post(bearer["alice"]), 429, "caller_rate_limited")
    assert 1 <= int(rate_limited["retry-after"]) <= 60
    assert rate_limited["x-ratelimit-remaining-requests"] == "0"
    assert len(gateway.requests) == 3

    refusal(post(bearer["narrow"], model="gpt-4o"), 403, "model_not_allowed")
    refusal(post(bearer["budget"], max_tokens=513), 422, "invalid_request")  # could never fit
    assert post(bearer["budget"])[0] == 200
    exhausted = refusal(post(bearer["budget"]), 429, "caller_budget_exhausted")
    assert 1 <= int(exhausted["retry-after"]) <= 86_400
    assert len(gateway.requests) == 4

    redis_server.stop()
    try:
        refusal(post(bearer["narrow"]), 503, "limiter_unavailable")  # fails closed
        assert len(gateway.requests) == 4
    finally:
        redis_server.start()
    assert post(bearer["narrow"])[0] == 200


def test_the_caller_keys_snippet_shares_the_projects_callers_file_and_errors(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A key made by the project's `keys create` works with the snippet and one made by the
    snippet with the project; the snippet's statuses and hints are the project's."""
    keys_project = bake(tmp_path_factory.mktemp("keys"), "fastapi", caller_auth="keys")
    snippet = load_module(keys_project / SNIPPETS / "caller_keys.py", "snippets_caller_keys")
    callers_file = tmp_path / "callers.json"
    env = {
        **os.environ,
        "ALLTKN_API_KEY": KEY,
        "ALLTKN_CALLERS_FILE": str(callers_file),
        "PYTHONPATH": str(keys_project / "src"),
    }
    create = ["-m", PACKAGE, "keys", "create", "made-by-project", "--models", "gpt-4o-mini"]
    made = run_python([*create, "--rpm", "5", "--daily-tokens", "900"], keys_project, env)
    assert made.returncode == 0, made.stderr
    snippet_key = snippet.create(callers_file, "made-by-snippet", rpm=7, tpm=800)
    code = (
        "import json, sys; from pathlib import Path\n"
        f"from {PACKAGE} import callers, errors, http_contract\n"
        "read = callers.read(Path(sys.argv[1]))\n"
        "words = {c.value: [http_contract._STATUSES.get(c), errors.GatewayError(c).hint]\n"
        "         for c in errors.Category}\n"
        "print(json.dumps({'callers': {n: c.model_dump() for n, c in read.items()}, "
        "'errors': words}))\n"
    )
    project = run_python(["-c", code, str(callers_file)], keys_project, env)
    assert project.returncode == 0, project.stderr
    seen = json.loads(project.stdout)

    callers = snippet.Callers(callers_file)
    mine = callers.authenticate(f"Bearer {made.stdout.strip()}")
    assert (mine.name, mine.models, mine.rpm, mine.tpm, mine.daily_tokens) == (
        "made-by-project",
        ("gpt-4o-mini",),
        5,
        None,
        900,
    )
    assert callers.authenticate(f"Bearer {snippet_key}").name == "made-by-snippet"
    theirs = seen["callers"]["made-by-snippet"]
    assert (theirs["rpm"], theirs["tpm"], theirs["key_prefix"]) == (7, 800, snippet_key[:8])
    for category, (status, hint) in snippet.ERRORS.items():
        project_status, project_hint = seen["errors"][category]
        assert hint == project_hint, category
        # The project answers a body it refuses with 422 (its table says 400 for a bad body).
        assert status == (422 if category == "invalid_request" else project_status), category


# --- 11. secrets and types ----------------------------------------------------------------------


def detect_secrets_findings(project: Path, directory: Path) -> list[str]:
    """The project's own check (`make secrets`: detect-secrets with `.secrets.baseline`, its
    plugins, the gateway-key one among them, and its filters) over the files of `directory`."""
    files = [str(directory / name) for name in snippet_files(directory)]
    command = ["-m", "detect_secrets.pre_commit_hook", "--baseline", ".secrets.baseline", *files]
    done = run_python(command, project, dict(os.environ))
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert KEY not in done.stdout + done.stderr
    located = re.findall(r"^Location:\s+(.+):\d+$", done.stdout, re.MULTILINE)
    return sorted({Path(path).relative_to(directory).as_posix() for path in located})


def template_scanner_findings(project: Path, directory: Path) -> list[str]:
    """The template's generation-time scanner (projects ship none)."""
    scanner = load_scanner()
    return sorted({f.path for f in scanner.scan_files(directory, scanner.iter_files(directory))})


@pytest.mark.parametrize(
    "findings",
    [
        pytest.param(detect_secrets_findings, id="project-detect-secrets"),
        pytest.param(template_scanner_findings, id="template-scanner"),
    ],
)
def test_no_snippet_holds_a_secret(
    project: Path,
    fastapi_project: Path,
    tmp_path: Path,
    findings: Callable[[Path, Path], list[str]],
) -> None:
    for target in (project / SNIPPETS, fastapi_project / SNIPPETS, TEMPLATE_SNIPPETS):
        assert findings(project, target) == []

    # The same scan does catch a key pasted into a snippet.
    leaked = tmp_path / "snippets"
    shutil.copytree(project / SNIPPETS, leaked)
    with (leaked / "alltkn_client.py").open("a", encoding="utf-8") as out:
        out.write(f'FALLBACK_KEY = "{KEY}"\n')
    assert findings(project, leaked) == ["alltkn_client.py"]


def test_the_snippets_and_the_typecheck_blocks_pass_mypy_strict(
    project: Path, fastapi_project: Path, tmp_path: Path
) -> None:
    """One mypy run (it is the slow part) over every snippet, in the FastAPI bake (which ships
    them all; the script bake's are the same files), and every `typecheck` block of both."""
    blocks = doc_blocks([project, fastapi_project], "typecheck")
    assert blocks
    project = fastapi_project
    files = {}
    for number, (where, code, _) in enumerate(blocks):
        files[f"typecheck_block_{number}.py"] = where
        (tmp_path / f"typecheck_block_{number}.py").write_text(code, encoding="utf-8")
    done = run_python(
        [
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            str(SNIPPETS),
            *map(str, tmp_path.glob("*.py")),
        ],
        project,
        {
            **os.environ,
            "MYPYPATH": os.pathsep.join([str(project / "tests"), str(project / SNIPPETS)]),
        },
        timeout=180,
    )
    report = done.stdout
    for name, where in files.items():  # say which document a block is from
        report = report.replace(str(tmp_path / name), where)
    assert done.returncode == 0, report


# --- refreshing snippets/ -----------------------------------------------------------------------


def sync(tmp_path: Path) -> None:
    """Render docs/snippets with the default answers into the template's snippets/."""
    rendered = bake(tmp_path, "fastapi") / SNIPPETS
    shutil.rmtree(TEMPLATE_SNIPPETS, ignore_errors=True)
    shutil.copytree(rendered, TEMPLATE_SNIPPETS, ignore=shutil.ignore_patterns(*TOOL_CACHES))
    print(f"wrote {TEMPLATE_SNIPPETS}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--sync"]:
        sys.exit("usage: python tests/test_snippets.py --sync")
    import tempfile

    sys.path.insert(0, str(TEMPLATE_DIR))
    with tempfile.TemporaryDirectory() as scratch:
        sync(Path(scratch))
