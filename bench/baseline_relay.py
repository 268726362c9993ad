"""The baseline the benchmark compares with: a straightforward FastAPI + AsyncOpenAI SSE relay.

This is what a team would write by hand from the SDK and FastAPI docs. It is kept deliberately
plain; it is not part of the template.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI

client = AsyncOpenAI(base_url=os.environ["ALLTKN_BASE_URL"], api_key=os.environ["ALLTKN_API_KEY"])
app = FastAPI()


@app.post("/v1/chat/stream")
async def chat_stream(body: dict[str, Any]) -> StreamingResponse:
    messages = [{"role": "user", "content": body["prompt"]}]

    async def relay() -> AsyncIterator[str]:
        stream = await client.chat.completions.create(
            model=body.get("model", "gpt-4o-mini"), messages=messages, stream=True
        )
        async with stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield f"data: {json.dumps({'delta': chunk.choices[0].delta.content})}\n\n"

    return StreamingResponse(relay(), media_type="text/event-stream")
