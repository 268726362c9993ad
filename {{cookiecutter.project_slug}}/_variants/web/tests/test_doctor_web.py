"""`doctor` in a web bake: the Host names the service answers to (ALLTKN_ALLOWED_HOSTS), a row
that warns while they are the loopback default a deployment must change (docs/SECURITY.md)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

{% if cookiecutter.worker == "celery" -%}
from .redis_server import redis_server  # noqa: F401 - doctor_env points the queue at it
{% endif -%}
from .test_doctor import (
    checks_of,
    doctor_env,  # noqa: F401
    doctor_json,
    run_doctor,
)


def test_the_loopback_default_warns_that_a_deployment_must_set_it(
    doctor_env: Callable[..., None],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    doctor_env(ALLTKN_ALLOWED_HOSTS=None)
    code, out, _ = run_doctor(capsys)

    assert code == 0, out  # a warning: fine on a developer's machine
    row = re.search(r"^WARN  allowed hosts .*$", out, re.M)
    assert row, out
    assert "127.0.0.1, ::1, localhost: loopback names only" in row[0]
    assert "a deployment must set ALLTKN_ALLOWED_HOSTS" in out


@pytest.mark.parametrize(
    ("value", "status", "detail"),
    [
        pytest.param(
            "chat.example.com, API.example.com",
            *("pass", "api.example.com, chat.example.com"),
            id="set",
        ),
        pytest.param("localhost,::1", "warn", "loopback names only", id="loopback-subset"),
        pytest.param("*", "warn", "any Host is answered", id="any"),
    ],
)
def test_allowed_hosts_row(
    doctor_env: Callable[..., None],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    value: str,
    status: str,
    detail: str,
) -> None:
    doctor_env(ALLTKN_ALLOWED_HOSTS=value)
    row = checks_of(doctor_json(capsys))["allowed_hosts"]

    assert row["status"] == status
    assert detail in row["detail"]
