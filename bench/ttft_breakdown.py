"""Where the FastAPI service's added time to first token goes, and what no relay can avoid.

Run from the template root (same environment as bench_stream.py):

    python bench/ttft_breakdown.py [--streams N]

One client, streams one after another, against the bundled fake gateway (first token after
50 ms). It measures, alternating stream by stream with the openai SDK calling the fake directly:

1. `hop floor`: the SDK streaming through a byte-forwarding TCP proxy in its own process (no
   HTTP parsing, no work at all): the cost of one more process and two more loopback hops on
   this machine, which every relay pays;
2. `fastapi service`: the generated service under uvicorn as its README runs it, started through
   a wrapper that timestamps its critical path (request entering the ASGI app, body received,
   handler, SDK call, first delta read from the gateway, first event written). The clock is
   the system-wide monotonic one, so service and client timestamps compare directly.

It prints the medians; nothing here is a target, it explains bench_stream.py's first row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from bench_common import bake, fake_gateway
from openai import AsyncOpenAI

KEY = "bench-" + "k" * 40
PROMPT = {"prompt": "stream please"}

PROXY = textwrap.dedent(
    """
    import asyncio, sys

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
        except OSError:
            pass
        finally:
            writer.close()

    async def main(host, port):
        async def handle(client_reader, client_writer):
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
            await asyncio.gather(
                pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer)
            )

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)

# Wraps the generated app; writes one line of timestamps per stream to $PROBE_OUT.
PROBE = textwrap.dedent(
    """
    import json, os, time
    from openai import AsyncOpenAI
    import alltkn_service.app as service_app
    import alltkn_service.chat as chat

    marks = {}
    out = open(os.environ["PROBE_OUT"], "a", buffering=1)

    async def app(scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/stream":
            return await service_app.app(scope, receive, send)
        marks.clear()
        marks["request entered the app"] = time.perf_counter()

        async def timed_receive():
            marks.setdefault("app asked for the body", time.perf_counter())
            message = await receive()
            marks.setdefault("request body received", time.perf_counter())
            return message

        async def timed_send(message):
            if message.get("body", b"").startswith(b'data: {"delta"'):
                marks.setdefault("first delta written", time.perf_counter())
            await send(message)

        await service_app.app(scope, timed_receive, timed_send)
        out.write(json.dumps(marks) + "\\n")

    arguments = chat.sdk_arguments

    def timed_arguments(*args, **kwargs):
        marks["handler called the SDK"] = time.perf_counter()
        return arguments(*args, **kwargs)

    chat.sdk_arguments = timed_arguments
    post = AsyncOpenAI.post

    async def timed_post(self, *args, **kwargs):
        marks["SDK built the request"] = time.perf_counter()
        stream = await post(self, *args, **kwargs)
        marks["SDK returned (headers in)"] = time.perf_counter()
        return stream

    AsyncOpenAI.post = timed_post
    feed = chat.StreamProtocol.feed

    def timed_feed(self, line):
        delta = feed(self, line)
        if delta:
            marks.setdefault("first delta read from gateway", time.perf_counter())
        return delta

    chat.StreamProtocol.feed = timed_feed
    """
)


async def sdk_ttft(client: AsyncOpenAI) -> float:
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
    )
    first = None
    async with stream:  # read to the end, so the connection is reused as in production
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
    assert first is not None
    return first


async def relay_ttft(http: httpx2.AsyncClient, url: str) -> tuple[float, float]:
    """(start, first delta) timestamps of one stream through the service."""
    started = time.perf_counter()
    first = None
    async with http.stream("POST", url + "/v1/chat/stream", json=PROMPT) as response:
        async for line in response.aiter_lines():
            if first is None and line.startswith('data: {"delta"'):
                first = time.perf_counter()
    assert first is not None
    return started, first


def sdk(base_url: str) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=base_url, api_key=KEY, max_retries=0, http_client=httpx2.AsyncClient()
    )


async def hop_floor(base_url: str, proxied_url: str, streams: int) -> tuple[float, float]:
    direct, proxied = sdk(base_url), sdk(proxied_url)
    for _ in range(5):
        await sdk_ttft(direct)
        await sdk_ttft(proxied)
    direct_s, proxied_s = [], []
    for _ in range(streams):
        direct_s.append(await sdk_ttft(direct))
        proxied_s.append(await sdk_ttft(proxied))
    return statistics.median(direct_s), statistics.median(proxied_s)


async def service_run(
    base_url: str, url: str, streams: int
) -> tuple[float, list[tuple[float, float]]]:
    direct, http = sdk(base_url), httpx2.AsyncClient(timeout=30)
    for _ in range(5):
        await sdk_ttft(direct)
        await relay_ttft(http, url)
    direct_s, relayed = [], []
    for _ in range(streams):
        direct_s.append(await sdk_ttft(direct))
        relayed.append(await relay_ttft(http, url))
    return statistics.median(direct_s), relayed


def start_service(
    project: Path, base_url: str, workdir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    (workdir / "ttft_probe.py").write_text(PROBE)
    port = 18000 + os.getpid() % 1000
    env = {
        **os.environ,
        "ALLTKN_API_KEY": KEY,
        "ALLTKN_BASE_URL": base_url,
        "ALLTKN_MAX_RETRIES": "0",
        "LOG_LEVEL": "WARNING",
        "PROBE_OUT": str(workdir / "marks.txt"),
        "PYTHONPATH": f"{project / 'src'}{os.pathsep}{workdir}",
    }
    command = [sys.executable, "-m", "uvicorn", "ttft_probe:app", "--port", str(port)]
    command += ["--loop", "asyncio", "--http", "httptools", "--log-level", "warning"]
    process = subprocess.Popen([*command, "--no-access-log"], env=env, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx2.get(url + "/healthz", timeout=1)
            break
        except httpx2.HTTPError:
            time.sleep(0.1)
    return process, url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=150)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ttft-"))
    try:
        project = bake("fastapi", workdir, caller_auth="none")  # the open service
        with fake_gateway(project) as (base_url, _):
            upstream = urlsplit(base_url)
            proxy = subprocess.Popen(
                [sys.executable, "-c", PROXY, str(upstream.hostname), str(upstream.port)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proxy.stdout is not None
            proxy_port = proxy.stdout.readline().strip()
            proxied_url = base_url.replace(f":{upstream.port}", f":{proxy_port}")
            try:
                direct, proxied = asyncio.run(hop_floor(base_url, proxied_url, args.streams))
            finally:
                proxy.terminate()
                proxy.wait()
            service, url = start_service(project, base_url, workdir)
            try:
                direct_2, relayed = asyncio.run(service_run(base_url, url, args.streams))
            finally:
                service.send_signal(signal.SIGINT)
                service.wait()
            marks = (workdir / "marks.txt").read_text().splitlines()[-len(relayed) :]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows: dict[str, list[float]] = {}
    for line, (started, first) in zip(marks, relayed, strict=True):
        for name, stamp in json.loads(line).items():
            rows.setdefault(name, []).append((stamp - started) * 1000)
        rows.setdefault("client read the first delta", []).append((first - started) * 1000)

    ms = 1000
    print(f"direct TTFT p50 {direct * ms:.2f} ms; through a byte-forwarding proxy process")
    print(f"{proxied * ms:.2f} ms: hop floor +{(proxied - direct) * ms:.2f} ms\n")
    relay_p50 = statistics.median(rows["client read the first delta"])
    print(f"direct TTFT p50 {direct_2 * ms:.2f} ms; through the FastAPI service")
    print(f"{relay_p50:.2f} ms: added +{relay_p50 - direct_2 * ms:.2f} ms\n")
    print("the service's stream, median ms after the client started the request:")
    for name, values in sorted(rows.items(), key=lambda item: statistics.median(item[1])):
        print(f"  {statistics.median(values):8.2f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
