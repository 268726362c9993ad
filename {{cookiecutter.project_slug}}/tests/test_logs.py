"""The logging helper writes JSON lines and never lets a key through."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from {{ cookiecutter.package_name }}.logs import configure_logging, log_call

from .conftest import SENTINEL_KEY

OTHER_KEY = "sk-" + "Zq9" * 16


@pytest.fixture(autouse=True)
def _restore_root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    saved = list(root.handlers)
    yield
    root.handlers[:] = saved


def _json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_call_log_is_one_json_line_with_its_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", secrets=[SENTINEL_KEY])
    log_call({"model": "m", "status": "ok", "duration_ms": 12.5, "request_id": "r"})

    (line,) = _json_lines(capsys)
    assert line["event"] == "upstream_call"
    assert (line["model"], line["status"], line["duration_ms"]) == ("m", "ok", 12.5)
    assert line["level"] == "INFO"


def test_keys_are_masked_in_messages_args_fields_and_tracebacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", secrets=[SENTINEL_KEY])
    logger = logging.getLogger("{{ cookiecutter.package_name }}.test")
    logger.warning("key in message %s and arg %s", SENTINEL_KEY, OTHER_KEY)
    log_call({"status": "error", "error": f"bad token {SENTINEL_KEY}"})
    try:
        raise RuntimeError(f"failed with {SENTINEL_KEY}")
    except RuntimeError:
        logger.exception("boom")

    lines = _json_lines(capsys)
    output = json.dumps(lines, ensure_ascii=False)
    assert len(lines) == 3
    assert SENTINEL_KEY not in output
    assert OTHER_KEY not in output
    assert SENTINEL_KEY[-4:] in output  # masked to its last four characters, still traceable
    assert "RuntimeError" in lines[2]["exc"]  # type: ignore[operator]
