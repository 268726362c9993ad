"""Stream an answer to a terminal, token by token.

When to use: a command-line tool or a worker that shows the answer as it is generated. Each
delta is printed and flushed as it arrives; the stream is opened with `with`, so leaving early
(an error, Ctrl-C) closes the connection and the gateway stops generating, and billing, for
nobody. Ctrl-C exits 130 without a traceback. A failure after the first token is
`stream_interrupted`, and so is a stream that ends without a `finish_reason`.

Run: `python stream_terminal.py "Tell me a story" [model]`. Needs alltkn_client.py and
alltkn_errors.py next to it.
"""

from __future__ import annotations

import sys
from typing import TextIO

from alltkn_client import DEFAULT_MODEL, SettingsError, make_client
from alltkn_errors import CATEGORIES, UPSTREAM_ERRORS, classify
from openai import OpenAI


class StreamInterrupted(Exception):
    """The stream failed after it began (a cut connection, an in-stream error event), or
    ended without saying why it stopped (no `finish_reason`)."""


def stream_answer(client: OpenAI, prompt: str, model: str, out: TextIO = sys.stdout) -> None:
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], stream=True
    )
    finished = False
    with stream:  # closes the upstream connection however the loop ends
        try:
            for chunk in stream:
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if choice.delta.content:
                    out.write(choice.delta.content)
                    out.flush()
                finished = finished or choice.finish_reason is not None
        except UPSTREAM_ERRORS as exc:
            raise StreamInterrupted(str(exc)) from exc
    if not finished:
        raise StreamInterrupted("the stream ended without a finish_reason")


def main(argv: list[str]) -> int:
    prompt = argv[0] if argv else "Say hello in one short sentence."
    model = argv[1] if len(argv) > 1 else DEFAULT_MODEL
    try:
        client = make_client()
    except SettingsError as exc:
        print(f"error[config]: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            stream_answer(client, prompt, model)
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        except (*UPSTREAM_ERRORS, StreamInterrupted) as exc:
            category = classify(exc, stream_started=isinstance(exc, StreamInterrupted))
            message, hint = CATEGORIES[category]
            print(f"\nerror[{category}]: {message} (hint: {hint})", file=sys.stderr)
            return 1
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
