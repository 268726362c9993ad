"""`{{ cookiecutter.package_name }} batch` against the fake gateway: through the CLI's `main` in the
test process (fast), and as `python -m` where a signal, a kill or a terminal is the point."""

from __future__ import annotations

import json
import logging
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from {{ cookiecutter.package_name }} import cli, retry
from {{ cookiecutter.package_name }}.settings import KEY_ENV_VAR

from .conftest import SENTINEL_KEY
from .fake_gateway import FakeGateway

pytestmark = pytest.mark.usefixtures("gateway_env")

COMMAND = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "batch"]
ANSWER = "Hello from the fake gateway."


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


Batch = Callable[..., Done]


@pytest.fixture
def batch(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Batch]:
    """Runs `batch ARGS` as the command line does, in this process. Backoff pauses are cut short
    (the attempts are still made and counted); logging is restored afterwards."""
    monkeypatch.setattr(retry, "backoff_s", lambda attempt: 0.01)
    root = logging.getLogger()
    saved = list(root.handlers), root.level

    def run(*args: str | Path) -> Done:
        try:
            code = cli.main(["batch", *map(str, args)])
        except SystemExit as exit_:  # bad usage: argparse exits
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return Done(code, out, err)

    yield run
    root.handlers[:], root.level = saved


def start_batch(*args: str | Path, stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, *map(str, args)], stdout=subprocess.PIPE, stderr=stderr, text=True
    )


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def prompts(count: int) -> list[str]:
    return [json.dumps({"id": f"p{n}", "prompt": f"question {n}"}) for n in range(count)]


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def rows_by_id(path: Path) -> dict[Any, dict[str, Any]]:
    """Rows that carry an id, checking that no id is there twice."""
    ids = [row["id"] for row in rows(path) if row["id"] is not None]
    assert len(ids) == len(set(ids)), f"duplicate ids in the output: {ids}"
    return {row["id"]: row for row in rows(path) if row["id"] is not None}


def complete_rows(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def paced_gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGateway]:
    """A gateway that takes `first_token_delay` per answer, so a batch can be caught mid-way."""
    with FakeGateway(api_key=SENTINEL_KEY, first_token_delay=0.2) as fake:
        monkeypatch.setenv("ALLTKN_BASE_URL", fake.base_url)
        yield fake


def test_mixed_input(gateway: FakeGateway, batch: Batch, tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps({"id": "a", "prompt": "first"}),
            json.dumps(
                {
                    "id": 2,
                    "messages": [{"role": "user", "content": "second"}],
                    "model": "gpt-4o",
                    "user": "u1",
                    "task": "t1",
                }
            ),
            '{"id": "broken", "prompt": ',
            json.dumps({"prompt": "nobody's"}),
            json.dumps({"id": "a", "prompt": "again"}),
            json.dumps({"id": "empty", "prompt": "   "}),
            "",
            json.dumps({"id": "limited", "prompt": "busy", "model": "fake-429-once"}),
            json.dumps({"id": "gone", "prompt": "x", "model": "fake-error-503-model"}),
            json.dumps({"id": "cut", "prompt": "x", "model": "fake-drop"}),
            json.dumps({"id": "last", "prompt": "bye"}),
        ],
    )
    output = tmp_path / "out.jsonl"

    done = batch(source, output, "--concurrency", "3")

    assert done.returncode == 1, done.stderr  # some rows failed
    found = rows_by_id(output)
    for row_id, model in (("a", "gpt-4o-mini"), (2, "gpt-4o"), ("limited", "fake-429-once")):
        assert found[row_id]["content"] == ANSWER
        assert found[row_id]["model"] == model
        assert found[row_id]["usage"]["completion_tokens"] == 6
        assert found[row_id]["duration_ms"] > 0
    assert found["last"]["content"] == ANSWER
    assert found["gone"]["error"]["category"] == "model_not_found"
    assert found["cut"]["error"]["category"] == "connection"
    bad = {row["line"]: row for row in rows(output) if "line" in row}
    assert sorted(bad) == [3, 4, 5, 6]
    assert all(row["error"]["category"] == "invalid_input" for row in bad.values())
    assert [bad[3]["id"], bad[4]["id"], bad[5]["id"], bad[6]["id"]] == [None, None, None, "empty"]
    assert "not valid JSON" in bad[3]["error"]["message"]
    assert 'duplicate id "a" (first on line 1)' in bad[5]["error"]["message"]
    assert "line 6: " in bad[6]["error"]["message"]
    assert "'prompt' is blank" in bad[6]["error"]["message"]
    assert len(rows(output)) == 10  # every non-blank line, exactly once

    # Retries: 429 waits and succeeds, a cut connection is retried a bounded number of times,
    # a permanent failure is never retried.
    assert len(gateway.requests_for("fake-429-once")) == 2
    assert len(gateway.requests_for("fake-drop")) == 4
    assert len(gateway.requests_for("fake-error-503-model")) == 1

    assert "line 3: not valid JSON" in done.stderr
    assert 'line 4: no "id"' in done.stderr
    assert '"user": "u1"' in done.stderr
    assert '"task": "t1"' in done.stderr
    summary = done.stdout
    assert "batch: 4 done, 6 failed (connection 1, invalid_input 4, model_not_found 1)" in summary
    # The upstream calls, from the instruments: 429 then an answer, 4 dropped connections...
    calls = "calls: 10 upstream, 6 failed (connection 4, model_not_found 1, rate_limited 1)"
    assert f"{calls}, 4 retries, 0 fallbacks" in summary
    assert "tokens: gpt-4o-mini 2 input + 12 output; other 2 input + 12 output" in summary
    assert "duration: p50 " in summary
    assert "Traceback" not in done.stderr
    assert SENTINEL_KEY not in done.stdout + done.stderr + output.read_text()

    # Resuming a finished batch sends nothing and duplicates nothing, error rows included.
    gateway.reset()
    before = output.read_text()
    again = batch(source, output, "--resume")
    assert output.read_text() == before
    assert gateway.requests == []
    assert "batch: 0 done, 0 failed, 10 skipped" in again.stdout


def test_request_fields_of_a_line_reach_the_gateway(
    gateway: FakeGateway, batch: Batch, tmp_path: Path
) -> None:
    """Every `request.Parameters` field is a batch field; the output cap is sent by default."""
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps({"id": 1, "prompt": "tuned", "temperature": 0.3, "max_tokens": 50}),
            json.dumps({"id": 2, "prompt": "plain", "label": "mine", "model": "gpt-4o-mini"}),
            json.dumps({"id": 3, "prompt": "hot", "temperature": 5}),
            json.dumps({"id": 4, "prompt": "long", "max_tokens": 5000}),
            json.dumps({"id": 5, "messages": [{"role": "robot", "content": "hi"}]}),
        ],
    )
    output = tmp_path / "out.jsonl"

    done = batch(source, output, "--model", "gpt-4o")

    assert done.returncode == 1, done.stderr
    sent = {request.body["messages"][0]["content"]: request.body for request in gateway.requests}
    assert sorted(sent) == ["plain", "tuned"]
    assert sent["tuned"]["temperature"] == 0.3
    assert sent["tuned"]["max_tokens"] == 50
    assert sent["tuned"]["model"] == "gpt-4o"  # --model, for rows that name none
    assert sent["plain"]["max_tokens"] == 4096  # ALLTKN_MAX_OUTPUT_TOKENS, the default cap
    assert "temperature" not in sent["plain"]
    assert "label" not in sent["plain"]
    assert sent["plain"]["model"] == "gpt-4o-mini"
    assert 'batch: ignoring "label"' in done.stderr
    found = rows_by_id(output)
    assert found[1]["content"] == found[2]["content"] == ANSWER
    hot = found[3]["error"]
    assert hot["category"] == "invalid_input"
    assert hot["message"].startswith('line 3: "temperature"')  # the field, and what it takes
    assert "0-2" in hot["message"]
    assert found[4]["error"]["category"] == "invalid_request"
    assert "ALLTKN_MAX_OUTPUT_TOKENS" in found[4]["error"]["message"]
    assert found[5]["error"]["category"] == "invalid_input"
    assert '"messages.0.role"' in found[5]["error"]["message"]
    assert "\n" not in found[3]["error"]["message"] + found[5]["error"]["message"]


def test_rollback_switches_apply_to_batches(
    gateway: FakeGateway, batch: Batch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ALLTKN_FALLBACK_MODELS and ALLTKN_MAX_INPUT_CHARS (docs/RUNBOOK.md) during a batch."""
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    monkeypatch.setenv("ALLTKN_MAX_INPUT_CHARS", "50")
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps({"id": "gone", "prompt": "x", "model": "fake-error-503-model"}),
            json.dumps({"id": "long", "prompt": "x" * 51}),
            json.dumps({"id": "fine", "prompt": "hello"}),
        ],
    )
    output = tmp_path / "out.jsonl"

    done = batch(source, output)

    assert done.returncode == 1, done.stderr
    found = rows_by_id(output)
    assert found["gone"]["content"] == ANSWER
    assert found["gone"]["model"] == "gpt-4o"  # the model actually used
    assert found["long"]["error"]["category"] == "invalid_request"
    assert "the limit is 50 characters" in found["long"]["error"]["message"]
    assert found["fine"]["model"] == "gpt-4o-mini"
    assert len(gateway.requests_for("fake-error-503-model")) == 1
    assert all("x" * 51 not in json.dumps(r.body) for r in gateway.requests)


def test_a_rejected_key_stops_the_batch_and_writes_nothing(
    gateway: FakeGateway, batch: Batch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, "sk-" + "w" * 40)
    output = tmp_path / "out.jsonl"

    done = batch(write_lines(tmp_path / "in.jsonl", prompts(30)), output, "--concurrency", "2")

    assert done.returncode == 1
    assert "error[auth]: " in done.stderr
    assert "rerun with --resume" in done.stdout
    assert output.read_text() == ""  # nothing to skip when the run is resumed with a good key
    assert len(gateway.requests) <= 2


@pytest.mark.parametrize(
    ("case", "names"),
    [
        pytest.param("missing-input", "INPUT", id="missing-input"),
        pytest.param("output-dir-missing", "OUTPUT", id="output-in-missing-dir"),
        pytest.param("output-is-dir", "OUTPUT", id="output-is-a-directory"),
        pytest.param("output-is-input", "OUTPUT is the INPUT file", id="output-is-input"),
        pytest.param("output-has-rows", "--resume", id="output-exists"),
        pytest.param("corrupt-output", "line 1 is not a result row", id="resume-corrupt-output"),
        pytest.param("concurrency-0", "--concurrency", id="concurrency-0"),
        pytest.param("concurrency-text", "--concurrency", id="concurrency-text"),
        pytest.param("metrics-dir-missing", "--metrics-file", id="metrics-file-in-missing-dir"),
        pytest.param("metrics-is-dir", "--metrics-file", id="metrics-file-is-a-directory"),
    ],
)
def test_bad_paths_and_options_are_one_line_exit_2(
    gateway: FakeGateway, batch: Batch, tmp_path: Path, case: str, names: str
) -> None:
    source = write_lines(tmp_path / "in.jsonl", prompts(2))
    output = tmp_path / "out.jsonl"
    args: list[str | Path] = [source, output]
    if case == "missing-input":
        args[0] = tmp_path / "nope.jsonl"
    elif case == "output-dir-missing":
        args[1] = tmp_path / "no" / "such" / "dir.jsonl"
    elif case == "output-is-dir":
        args[1] = tmp_path
    elif case == "output-is-input":
        args[1] = source
    elif case == "output-has-rows":
        write_lines(output, [json.dumps({"id": "p0", "content": "x"})])
    elif case == "corrupt-output":
        write_lines(output, ["not json"])
        args.append("--resume")
    elif case.startswith("metrics"):
        where = tmp_path if case == "metrics-is-dir" else tmp_path / "no" / "metrics.json"
        args += ["--metrics-file", where]
    else:
        args += ["--concurrency", "0" if case == "concurrency-0" else "lots"]

    done = batch(*args)

    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert names in done.stderr
    assert "Traceback" not in done.stderr
    assert gateway.requests == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_output_that_fills_up_stops_the_batch(batch: Batch, tmp_path: Path) -> None:
    done = batch(write_lines(tmp_path / "in.jsonl", prompts(5)), "/dev/full")

    assert done.returncode == 1
    assert "error: cannot write OUTPUT /dev/full (No space left on device)" in done.stderr
    assert "rerun with --resume" in done.stderr
    assert "batch: 0 done" in done.stdout
    assert "Traceback" not in done.stderr


def test_resume_after_sigkill_writes_every_id_exactly_once(
    paced_gateway: FakeGateway, batch: Batch, tmp_path: Path
) -> None:
    source = write_lines(tmp_path / "in.jsonl", prompts(40))
    output = tmp_path / "out.jsonl"
    process = start_batch(source, output, "--concurrency", "4")
    wait_until(lambda: complete_rows(output) >= 6)
    assert process.poll() is None, "the batch finished before it could be killed"
    process.kill()
    process.communicate(timeout=10)
    killed_with = complete_rows(output)
    with output.open("a", encoding="utf-8") as half_written:  # a crash in the middle of a write
        half_written.write('{"id": "p39", "content": "Hel')

    done = batch(source, output, "--resume", "--concurrency", "8")

    assert done.returncode == 0, done.stderr
    assert "removed a partial last row" in done.stderr
    assert f"{40 - killed_with} done" in done.stdout
    assert f"{killed_with} skipped" in done.stdout
    found = rows_by_id(output)
    assert sorted(found) == sorted(f"p{n}" for n in range(40))
    assert all(row["content"] == ANSWER for row in found.values())


def test_sigint_finishes_the_rows_in_flight_and_exits_130(
    paced_gateway: FakeGateway, batch: Batch, tmp_path: Path
) -> None:
    source = write_lines(tmp_path / "in.jsonl", prompts(40))
    output = tmp_path / "out.jsonl"
    process = start_batch(source, output, "--concurrency", "4")
    wait_until(lambda: complete_rows(output) >= 4)

    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=20)

    assert process.returncode == 130, stderr
    written = rows_by_id(output)
    assert 4 <= len(written) < 40
    # Every request that was sent finished and was written; nothing new was started.
    assert len(paced_gateway.requests) == len(written)
    assert f"batch: {len(written)} done, 0 failed" in stdout
    assert "interrupted" in stdout
    assert "Traceback" not in stderr

    resumed = batch(source, output, "--resume", "--concurrency", "16")

    assert resumed.returncode == 0, resumed.stderr
    assert sorted(rows_by_id(output)) == sorted(f"p{n}" for n in range(40))


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(
    batch: Batch, tmp_path: Path
) -> None:
    done = batch(write_lines(tmp_path / "in.jsonl", prompts(3)), tmp_path / "out.jsonl")

    assert done.returncode == 0, done.stderr
    assert "batch: 3 rows in INPUT, 0 already in OUTPUT" in done.stderr
    assert "\r" not in done.stderr
    assert "\x1b[" not in done.stderr + done.stdout
    assert "batch: 3 done, 0 failed" in done.stdout


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", [*prompts(3), "{broken"])
    controller, terminal = pty.openpty()
    process = start_batch(source, tmp_path / "out.jsonl", stderr=terminal)
    os.close(terminal)
    screen = b""
    while chunk := _read(controller):
        screen += chunk
    stdout, _ = process.communicate(timeout=30)
    os.close(controller)

    shown = screen.decode(errors="replace")
    assert process.returncode == 1, shown[-2000:]
    assert "\x1b[" in shown
    assert "4/4" in shown
    assert "1 failed" in shown
    assert "ETA" in shown
    assert "line 4: not valid JSON" in shown
    assert '"event": "upstream_call"' in shown  # log lines scroll above the bar
    assert "batch: 3 done, 1 failed" in stdout, shown[-2000:]  # the terminal tells why not


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal closed: the batch has exited
        return b""


def test_the_call_summary_is_written_as_json(
    gateway: FakeGateway, batch: Batch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLTKN_FALLBACK_MODELS", "gpt-4o")
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            *prompts(3),
            json.dumps({"id": "moved", "prompt": "x", "model": "fake-error-503-model"}),
            json.dumps({"id": "denied", "prompt": "x", "model": "fake-error-403"}),
        ],
    )
    metrics_file = tmp_path / "metrics.json"

    done = batch(source, tmp_path / "out.jsonl", "--metrics-file", metrics_file)

    assert done.returncode == 1, done.stderr  # the denied row failed
    written = json.loads(metrics_file.read_text())
    durations = written.pop("duration_s")
    assert written == {
        "calls": 6,  # 3 answers, the 503 and its fallback's answer, the 403
        "errors": {"model_not_found": 1, "permission": 1},
        "retries": 0,
        "fallbacks": 1,
        "tokens": {"gpt-4o": {"input": 1, "output": 6}, "gpt-4o-mini": {"input": 6, "output": 18}},
    }
    assert 0 < durations["p50"] <= durations["p95"] < 5
    assert f"p50 {durations['p50']} s, p95 {durations['p95']} s" in done.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".metrics")] == []
