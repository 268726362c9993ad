"""`GET /metrics` of real server processes against the fake gateway: what a scrape parsed with
prometheus_client's parser counts after answers, gateway errors, a stream cut, a client that
hangs up and requests the service refuses; the same with 1 and 4 workers, after workers die,
with the metrics token; and the merging of dead workers' files (`metrics_dir.py`) as plain
functions, interrupted at each step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from {{ cookiecutter.package_name }} import metrics_dir, prometheus

from .fake_gateway import FakeGateway
from .live_server import PROJECT_ROOT, Server, parse_events, run_server, server_env

# Signals, and dead workers' files are merged only on POSIX systems.
pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX only")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PROMPT = "how many tokens is this"
TOKEN = "metrics-token-" + "t" * 30  # pragma: allowlist secret
ALLOWED = "gpt-4o-mini,fake-error-401,fake-error-429,fake-error-500,fake-error-400,"
ALLOWED += "fake-stream-cut,fake-slow"
DURATION = "gen_ai_client_operation_duration_seconds"
TOKENS = "gen_ai_client_token_usage"
FIRST_CHUNK = "gen_ai_client_operation_time_to_first_chunk_seconds"
# Every upstream call the traffic makes: (gen_ai_request_model, error_type) -> calls.
CALLS = {
    ("gpt-4o-mini", ""): 3,
    ("fake-error-401", "auth"): 1,
    ("fake-error-429", "rate_limited"): 1,
    ("fake-error-500", "upstream_unavailable"): 1,
    ("fake-error-400", "invalid_request"): 1,  # the gateway's: not a refusal
    ("fake-stream-cut", "stream_interrupted"): 1,
    ("fake-slow", "client_disconnect"): 1,
}
# What the service refuses itself: (error_type{% if cookiecutter.caller_auth == "keys" %}, alltkn_caller{% endif %}) -> requests.
REFUSED = {
{%- if cookiecutter.caller_auth == "keys" %}
    ("invalid_request", "tests"): 3,
    ("model_not_allowed", "tests"): 1,
    ("caller_auth", ""): 1,
{%- else %}
    ("invalid_request",): 3,
    ("model_not_allowed",): 1,
{%- endif %}
}


def post(server: Server, path: str, body: Any, **headers: str) -> httpx2.Response:
    """A request on a new connection, so that the workers share the traffic."""
    return httpx2.post(server.url + path, json=body, headers={**server.headers, **headers})


def stream(server: Server, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with httpx2.stream(
        "POST", server.url + "/v1/chat/stream", json=body, headers=server.headers
    ) as response:
        assert response.status_code == 200
        return parse_events(response.read().decode())


def drive(server: Server) -> dict[str, int]:
    """The traffic the scrapes are checked against; the tokens the answers reported."""
    tokens = {"input": 0, "output": 0}

    def used(usage: dict[str, int]) -> None:
        tokens["input"] += usage["prompt_tokens"]
        tokens["output"] += usage["completion_tokens"]

    for _ in range(2):
        answer = post(server, "/v1/chat", {"prompt": PROMPT})
        assert answer.status_code == 200
        used(answer.json()["usage"])
    used(stream(server, {"prompt": PROMPT})[-1][1]["usage"])
    for model, status in ("fake-error-401", 502), ("fake-error-429", 429), ("fake-error-400", 400):
        assert post(server, "/v1/chat", {"prompt": PROMPT, "model": model}).status_code == status
    failed = post(server, "/v1/chat/stream", {"prompt": PROMPT, "model": "fake-error-500"})
    assert failed.status_code == 502
    assert stream(server, {"prompt": PROMPT, "model": "fake-stream-cut"})[-1][0] == "error"
    with httpx2.stream(
        "POST",
        server.url + "/v1/chat/stream",
        json={"prompt": PROMPT, "model": "fake-slow"},
        headers={**server.headers, "X-Request-ID": "hangs-up"},
    ) as response:
        next(response.iter_lines())  # the first delta, then the client leaves
    assert server.call_log("hangs-up")["status"] == "client_disconnect"
    # Refused before any upstream call.
    not_json = httpx2.post(
        server.url + "/v1/chat",
        content=b"{not json",
        headers={**server.headers, "Content-Type": "application/json"},
    )
    assert not_json.status_code == 400
    assert post(server, "/v1/chat", {"prompt": 5}).status_code == 422
    assert post(server, "/v1/chat", {"prompt": PROMPT, "max_tokens": 1000}).status_code == 422
    assert post(server, "/v1/chat", {"prompt": PROMPT, "model": "gpt-4o"}).status_code == 403
{%- if cookiecutter.caller_auth == "keys" %}
    no_key = httpx2.post(server.url + "/v1/chat", json={"prompt": PROMPT})
    assert no_key.status_code == 401
{%- endif %}
    return tokens


def scrape(server: Server, **headers: str) -> Samples:
    response = httpx2.get(server.url + "/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples that have `labels`."""
    wanted = set(labels.items())
    return sum(value for (named, has), value in samples.items() if named == name and wanted <= has)


def by(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """`name`'s non-zero totals by the values of `labels`."""
    found: dict[tuple[str, ...], float] = {}
    for (named, have), value in samples.items():
        if named == name and value:
            key = tuple(dict(have)[label] for label in labels)
            found[key] = found.get(key, 0) + value
    return found


def serve(gateway: FakeGateway, tmp_path: Path, workers: int, **env: str) -> Any:
    return run_server(
        gateway,
        tmp_path,
        workers=workers,
        ALLTKN_ALLOWED_MODELS=ALLOWED,
        ALLTKN_MAX_OUTPUT_TOKENS="100",
        **env,
    )


@pytest.mark.parametrize("workers", [1, 4])
def test_a_scrape_counts_every_call_token_and_refusal_whatever_the_workers(
    gateway: FakeGateway, tmp_path: Path, workers: int
) -> None:
    with serve(gateway, tmp_path, workers) as server:
        tokens = drive(server)
        samples = scrape(server)

    calls = by(samples, f"{DURATION}_count", "gen_ai_request_model", "error_type")
    assert calls == {key: float(count) for key, count in CALLS.items()}
    for kind in ("input", "output"):  # the three answers, as they reported their usage
        assert total(samples, f"{TOKENS}_count", gen_ai_token_type=kind) == 3
        assert total(samples, f"{TOKENS}_sum", gen_ai_token_type=kind) == tokens[kind]
    # A first chunk: the answered stream, the cut one and the one whose client left.
    first_chunks = by(samples, f"{FIRST_CHUNK}_count", "gen_ai_request_model")
    assert first_chunks == {("gpt-4o-mini",): 1, ("fake-stream-cut",): 1, ("fake-slow",): 1}
    disconnects = by(samples, "alltkn_client_disconnects_total", "gen_ai_request_model")
    assert disconnects == {("fake-slow",): 1}
{%- if cookiecutter.caller_auth == "keys" %}
    refused = by(samples, "alltkn_requests_refused_total", "error_type", "alltkn_caller")
{%- else %}
    refused = by(samples, "alltkn_requests_refused_total", "error_type")
{%- endif %}
    assert refused == {key: float(count) for key, count in REFUSED.items()}
    assert total(samples, "alltkn_retries_total") == total(samples, "alltkn_fallbacks_total") == 0
    responses = by(samples, f"{DURATION}_count", "gen_ai_response_model", "server_address")
    assert responses == {
        ("gpt-4o-mini", "127.0.0.1"): 3,
        **{(model, "127.0.0.1"): 1 for model, error in CALLS if error},
    }
{%- if cookiecutter.caller_auth == "keys" %}
    assert by(samples, f"{DURATION}_count", "alltkn_caller") == {("tests",): 9}
{%- endif %}


def test_metrics_needs_no_caller_key_but_the_metrics_token_once_set(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    with serve(gateway, tmp_path, 1, ALLTKN_METRICS_TOKEN=TOKEN) as server:
        assert post(server, "/v1/chat", {"prompt": PROMPT}).status_code == 200
        for authorization in (None, "Bearer wrong-token-of-some-length", f"Basic {TOKEN}"):
            headers = {"Authorization": authorization} if authorization else {}
            denied = httpx2.get(server.url + "/metrics", headers=headers)
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"] == "Bearer"
            error = denied.json()["error"]
            assert error["category"] == "metrics_auth"
            assert error["request_id"] == denied.headers["x-request-id"]
{%- if cookiecutter.caller_auth == "keys" %}
        caller = httpx2.get(server.url + "/metrics", headers=server.headers)
        assert caller.status_code == 401  # a caller key is not the metrics token
{%- endif %}
        samples = scrape(server, Authorization=f"Bearer {TOKEN}")
        assert total(samples, f"{DURATION}_count") == 1
        assert total(samples, "alltkn_requests_refused_total") == 0  # scrapes are not refused
        httpx2.get(server.url + f"/metrics?pasted={TOKEN}")  # the access line shows the query
    assert "pasted=" in server.output()
    assert TOKEN not in server.output()  # masked like the key

    (unset := tmp_path / "no-token").mkdir()
    with serve(gateway, unset, 1) as open_server:  # no token: anyone who reaches it
        assert httpx2.get(open_server.url + "/metrics").status_code == 200


def test_with_metrics_off_there_is_no_endpoint_no_file_and_no_sink(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    directory = tmp_path / "metrics"
    off = {"ALLTKN_METRICS": "off", "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with serve(gateway, tmp_path, 2, **off) as server:
        tokens = drive(server)  # answers, errors, a cut, a hang-up, refusals: all as usual
        assert tokens["input"] > 0
        missing = httpx2.get(server.url + "/metrics")
        assert missing.status_code == 404
        assert "ALLTKN_METRICS=off" in missing.json()["error"]["message"]
    assert not directory.exists() or not list(directory.iterdir())
    # Nothing counts for it in the app: no sink installed, prometheus_client not imported.
    check = (
        "import sys; from {{ cookiecutter.package_name }} import app, metrics; "
        "print(metrics.recording(), 'prometheus_client' in sys.modules)"
    )
    env = server_env(gateway, ALLTKN_METRICS="off")
{%- if cookiecutter.caller_auth == "keys" %}
    env["ALLTKN_CALLERS_FILE"] = str(tmp_path / "callers.json")  # the server's (run_server)
{%- endif %}
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def worker_pids(directory: Path) -> set[int]:
    """The processes whose counts are in `directory` (each writes `<type>_<pid>.db`)."""
    return {int(p.stem.split("_")[1]) for p in directory.glob("*_*.db") if p.stem[-1].isdigit()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def answered(server: Server, count: int) -> None:
    for _ in range(count):
        assert post(server, "/v1/chat", {"prompt": PROMPT}).status_code == 200


def assert_bounded(directory: Path, workers: int) -> None:
    """A live worker's two files, the merged ones and the lock: no file per dead worker."""
    names = {path.name for path in directory.iterdir()}
    assert len(names) <= 2 * workers + 3, sorted(names)
    assert all(alive(pid) for pid in worker_pids(directory))


def test_a_killed_worker_s_counts_stay_and_its_files_are_merged(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    directory = tmp_path / "metrics"
    with serve(gateway, tmp_path, 2, PROMETHEUS_MULTIPROC_DIR=str(directory)) as server:
        killed: set[int] = set()
        for round_ in range(1, 4):
            answered(server, 5)
            victim = next(iter(worker_pids(directory) - killed))
            os.kill(victim, signal.SIGKILL)  # the server starts another in its place
            killed.add(victim)
            wait_until(lambda pid=victim: not alive(pid))  # reaped by the server
            wait_until(lambda: httpx2.get(server.url + "/healthz").status_code == 200)
            samples = scrape(server)
            assert total(samples, f"{DURATION}_count") == 5 * round_
            assert not worker_pids(directory) & killed
            assert_bounded(directory, workers=2)
    assert (directory / "histogram_merged.db").exists()  # the answers had no counter
{%- if cookiecutter.framework == "flask" %}


def test_workers_gunicorn_recycles_leave_exact_counts_and_no_files(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    directory = tmp_path / "metrics"
    recycle = {"GUNICORN_CMD_ARGS": "--max-requests 3", "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with serve(gateway, tmp_path, 2, **recycle) as server:
        answered(server, 30)  # each worker replaced every third request: 10 or more replaced
        samples = scrape(server)
        assert total(samples, f"{DURATION}_count") == 30
        assert total(samples, f"{TOKENS}_count", gen_ai_token_type="input") == 30
        assert_bounded(directory, workers=2)
    assert server.output().count("Booting worker") >= 10
{%- endif %}


# --- metrics_dir: the merge as plain functions ---------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write(directory: Path, kind: str, pid: int, values: dict[str, float]) -> None:
    """A process's file as prometheus_client writes it: `values` by sample name."""
    file = MmapedDict(str(directory / f"{kind}_{pid}.db"))
    for name, value in values.items():
        metric = name.rsplit("_", 1)[0]
        labels = {"model": "m"} | ({"le": "1.0"} if name.endswith("_bucket") else {})
        key = mmap_key(metric, name, list(labels), list(labels.values()), "help")
        file.write_value(key, value, 0.0)
    file.close()


def collected(directory: Path) -> Samples:
    """What a scrape of `directory` reads."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for metric in MultiProcessCollector(None, path=str(directory)).collect()
        for sample in metric.samples
    }


def two_dead_and_one_live(directory: Path) -> list[int]:
    dead = [dead_pid(), dead_pid()]
    for pid, calls, bucket in ((dead[0], 3, 2), (dead[1], 4, 1), (os.getpid(), 5, 0)):
        write(directory, "counter", pid, {"calls_total": calls})
        write(directory, "histogram", pid, {"latency_bucket": bucket, "latency_sum": bucket / 4})
    return dead


def test_dead_processes_files_are_merged_into_one_per_type(tmp_path: Path) -> None:
    two_dead_and_one_live(tmp_path)
    before = collected(tmp_path)
    assert total(before, "calls_total") == 12
    assert total(before, "latency_count") == 3

    metrics_dir.merge_dead(tmp_path)

    assert collected(tmp_path) == before
    live = os.getpid()
    assert {path.name for path in tmp_path.iterdir()} == {
        "counter_merged.db",
        "histogram_merged.db",
        f"counter_{live}.db",
        f"histogram_{live}.db",
        "merge.lock",
    }
    write(tmp_path, "counter", dead_pid(), {"calls_total": 1})  # one more, added to the merged
    (tmp_path / f"histogram_{dead_pid()}.db").touch()  # one that died before sizing its file
    metrics_dir.merge_dead(tmp_path)
    assert total(collected(tmp_path), "calls_total") == 13
    assert len(list(tmp_path.iterdir())) == 5


def test_a_file_a_worker_has_only_just_created_is_not_read(tmp_path: Path) -> None:
    """prometheus_client creates a process's file empty, then sizes it: a scrape in between
    would fail on it."""
    two_dead_and_one_live(tmp_path)
    (tmp_path / f"counter_{os.getppid()}.db").touch()  # a live process's, not yet sized
    text = prometheus.PrometheusSink(tmp_path).exposition().decode()
    assert 'calls_total{model="m"} 12.0' in text.splitlines()


class Crash(Exception):
    """The merging process dies here."""


def a_pid_file(path: Path) -> bool:
    return path.suffix == ".db" and path.stem.rsplit("_", 1)[-1].isdigit()


@pytest.mark.parametrize(
    ("method", "matches", "nth"),
    [
        pytest.param("replace", lambda p: p.name == "merge.journal.tmp", 1, id="before-commit"),
        pytest.param("replace", lambda p: p.name.endswith(".db.tmp"), 2, id="mid-rename"),
        pytest.param("unlink", a_pid_file, 1, id="before-the-deletes"),
    ],
)
def test_a_merge_cut_short_at_any_step_never_counts_twice(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    matches: Callable[[Path], bool],
    nth: int,
) -> None:
    """The merging process dies at its `nth` rename or delete of a file that `matches`: what a
    scrape reads afterwards, under the lock, is still every count once, and the directory is
    left clean."""
    dead = two_dead_and_one_live(tmp_path)
    before = collected(tmp_path)
    original, seen = getattr(Path, method), []

    def step(path: Path, *args: Any, **kwargs: Any) -> Any:
        if matches(path):
            seen.append(path)
            if len(seen) == nth:
                raise Crash
        return original(path, *args, **kwargs)

    monkeypatch.setattr(Path, method, step)
    with pytest.raises(Crash):
        metrics_dir.merge_dead(tmp_path)
    monkeypatch.undo()

    with metrics_dir.merged(tmp_path):  # what a scrape does
        assert collected(tmp_path) == before
    left = {path.name for path in tmp_path.iterdir()}
    assert left == {f"counter_{os.getpid()}.db", f"histogram_{os.getpid()}.db", "merge.lock",
                    "counter_merged.db", "histogram_merged.db"}  # fmt: skip
    assert not any(str(pid) in name for pid in dead for name in left)
