"""What the public SDK API costs per stream: `chat.completions.create()` (the documented call;
the generated chat service uses its `with_streaming_response` form, which builds the request
the same way) against the client's `post()` with the same typed body, the private path the
service used before (it skips the SDK's walk of every message through its TypedDicts).

Run from the template root (same environment as bench_stream.py):

    python bench/bench_request.py [--calls N]

It bakes the FastAPI variant for its fake gateway, starts the fake in its own process (no
delays) and, with one `AsyncOpenAI` client over aiohttp as the service uses, opens streams of
1, 10 and 40 messages, alternating `create()` and `post()` call by call, reading each stream
to the end the same way. It reports, per call, this process's CPU time and the wall time until
the response headers arrived (medians) and the ratio post / create, and writes
bench/results/request.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import bake, fake_gateway
from openai import AsyncOpenAI, AsyncStream, DefaultAioHttpClient
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
RESULTS = TEMPLATE_DIR / "bench" / "results" / "request.json"
KEY = "bench-" + "k" * 40
MODEL = "gpt-4o-mini"
SIZES = (1, 10, 40)


def conversation(size: int) -> list[ChatCompletionMessageParam]:
    messages: list[ChatCompletionMessageParam] = []
    for turn in range(size):
        text = f"turn {turn}: " + "a few words of conversation " * 8
        if turn % 2:
            messages.append({"role": "assistant", "content": text})
        else:
            messages.append({"role": "user", "content": text})
    return messages


async def open_with_create(
    client: AsyncOpenAI, messages: list[ChatCompletionMessageParam]
) -> AsyncStream[ChatCompletionChunk]:
    return await client.chat.completions.create(
        model=MODEL,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Request-ID": "bench"},
    )


async def open_with_post(
    client: AsyncOpenAI, messages: list[ChatCompletionMessageParam]
) -> AsyncStream[ChatCompletionChunk]:
    body: CompletionCreateParamsStreaming = {
        "model": MODEL,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return await client.post(
        "/chat/completions",
        cast_to=ChatCompletion,
        body=body,
        options={"headers": {"X-Request-ID": "bench"}},
        stream=True,
        stream_cls=AsyncStream[ChatCompletionChunk],
    )


OPENERS = {"create": open_with_create, "post": open_with_post}


async def measure(base_url: str, calls: int) -> dict[str, Any]:
    client = AsyncOpenAI(
        base_url=base_url, api_key=KEY, max_retries=0, http_client=DefaultAioHttpClient()
    )
    results: dict[str, Any] = {}
    try:
        for size in SIZES:
            messages = conversation(size)
            cpu: dict[str, list[float]] = {name: [] for name in OPENERS}
            wall: dict[str, list[float]] = {name: [] for name in OPENERS}
            for call in range(calls + 20):  # the first 20 warm up connections and caches
                for name, open_stream in OPENERS.items():
                    started, cpu_started = time.perf_counter(), time.process_time()
                    stream = await open_stream(client, messages)
                    spent, waited = time.process_time() - cpu_started, time.perf_counter() - started
                    async with stream:
                        async for _ in stream.response.aiter_lines():
                            pass
                    if call >= 20:
                        cpu[name].append(spent * 1e6)
                        wall[name].append(waited * 1e3)
            row: dict[str, Any] = {
                name: {
                    "cpu_us_p50": round(statistics.median(cpu[name]), 1),
                    "open_ms_p50": round(statistics.median(wall[name]), 3),
                }
                for name in OPENERS
            }
            row["cpu_ratio"] = round(row["post"]["cpu_us_p50"] / row["create"]["cpu_us_p50"], 3)
            results[str(size)] = row
    finally:
        await client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="counted calls per way and size")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-request-"))
    try:
        project = bake("fastapi", workdir)
        with fake_gateway(project, first_token_delay=0.0, delta_interval=0.0) as (base_url, _):
            results = asyncio.run(measure(base_url, args.calls))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print("messages | create() CPU | post() CPU | post / create | create() open | post() open")
    for size, row in results.items():
        create, post = row["create"], row["post"]
        print(
            f"{size:>8} | {create['cpu_us_p50']:8.0f} us | {post['cpu_us_p50']:7.0f} us"
            f" | {row['cpu_ratio']:13.2f} | {create['open_ms_p50']:10.2f} ms"
            f" | {post['open_ms_p50']:8.2f} ms"
        )
    print(f"\nwrote {RESULTS.relative_to(TEMPLATE_DIR)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
