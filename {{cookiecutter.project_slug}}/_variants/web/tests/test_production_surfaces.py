"""What a production server shows the world, against the real server process: no development
surface unless ALLTKN_DEV_UI=on, `nosniff` on every response, the demo page's CSP (hashes, no
frame), and only the Host names in ALLTKN_ALLOWED_HOSTS (DNS rebinding)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator

import pytest

from .fake_gateway import FakeGateway
from .live_server import Server, run_server

DEV_PATHS = ["/"{% if cookiecutter.framework == "fastapi" %}, "/docs", "/redoc", "/openapi.json"{% endif %}]


@pytest.fixture(scope="module")
def server(gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The defaults: no ALLTKN_DEV_UI, no ALLTKN_ALLOWED_HOSTS."""
    with run_server(gateway, tmp_path_factory.mktemp("production")) as running:
        yield running


@pytest.fixture(scope="module")
def dev_server(gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(gateway, tmp_path_factory.mktemp("dev"), ALLTKN_DEV_UI="on") as running:
        yield running


@pytest.mark.parametrize("path", DEV_PATHS)
def test_development_surfaces_answer_404_by_default(server: Server, path: str) -> None:
    response = server.request("GET", path)
    assert response.status_code == 404
    assert response.json()["error"]["category"] == "invalid_request"


@pytest.mark.parametrize("path", DEV_PATHS)
def test_development_surfaces_answer_with_alltkn_dev_ui_on(dev_server: Server, path: str) -> None:
    assert dev_server.request("GET", path).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/healthz", None),
        ("GET", "/metrics", None),
        ("POST", "/v1/chat", {"prompt": "hi"}),
        ("POST", "/v1/chat/stream", {"prompt": "hi"}),
        ("POST", "/v1/chat", {"prompt": 42}),
        ("GET", "/nowhere", None),
        ("GET", "/", None),
    ],
)
def test_every_response_carries_nosniff(
    server: Server, method: str, path: str, body: object
) -> None:
    response = server.request(method, path, json=body)
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_demo_page_allows_only_its_own_script_and_style_and_no_frame(
    dev_server: Server,
) -> None:
    response = dev_server.request("GET", "/")
    header = response.headers["content-security-policy"]
    policy = dict(part.strip().split(" ", 1) for part in header.split(";"))
    assert "unsafe-inline" not in header
    assert policy["frame-ancestors"] == "'none'"
    assert policy["default-src"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    for tag, directive in [("script", "script-src"), ("style", "style-src")]:
        (inline,) = re.findall(rf"<{tag}>(.*?)</{tag}>", response.text, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example"])
@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/stream"])
def test_another_host_is_refused_before_any_gateway_call(
    server: Server, gateway: FakeGateway, host: str, path: str
) -> None:
    response = server.post(path, {"prompt": "hi"}, headers={"Host": host})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["category"] == "host_not_allowed"
    assert "ALLTKN_ALLOWED_HOSTS" in error["message"]
    assert gateway.requests == []


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"])
def test_the_loopback_names_are_allowed_by_default(server: Server, host: str) -> None:
    assert server.post("/v1/chat", {"prompt": "hi"}, headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_probes_and_scrapes_answer_any_host(server: Server, path: str) -> None:
    """The kubelet probes by pod IP, Prometheus scrapes by it."""
    assert server.request("GET", path, headers={"Host": "10.1.2.3:8000"}).status_code == 200


def test_allowed_hosts_is_a_setting(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("hosts")
    with run_server(gateway, directory, ALLTKN_ALLOWED_HOSTS="chat.example.com") as server:
        named = server.post("/v1/chat", {"prompt": "hi"}, headers={"Host": "chat.example.com"})
        loopback = server.post("/v1/chat", {"prompt": "hi"})
    assert named.status_code == 200
    assert loopback.status_code == 400
