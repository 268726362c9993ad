"""Command line: `<slug> ask "prompt"`, or `python -m <package> ask "prompt"`.

`<slug> doctor [--json | --support]` checks the configuration and the gateway live (`doctor.py`).
{%- if cookiecutter.framework == "fastapi" %}
`<slug> serve [--host H] [--port P]` runs the service: uvicorn, `WEB_CONCURRENCY` workers.
{%- endif %}
{%- if cookiecutter.framework == "script" %}
`<slug> batch INPUT.jsonl OUTPUT.jsonl` runs a file of prompts (`batch.py`).
{%- endif %}
{%- if cookiecutter.caller_auth == "keys" %}
`<slug> keys create|list|revoke|usage` manages who may call the service (`keys.py`).
{%- endif %}

Exit codes: 0 answered, 1 the gateway call failed, 2 bad usage or configuration, 130 interrupted,
141 the reader of the output went away (`... | head`).
"""

from __future__ import annotations

import argparse
{%- if cookiecutter.framework == "fastapi" %}
import asyncio
{%- endif %}
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any, NoReturn

from pydantic import ValidationError

{% if cookiecutter.framework == "script" -%}
from . import CLIENT_NAME, batch, doctor, telemetry
{%- elif cookiecutter.caller_auth == "keys" -%}
from . import CLIENT_NAME, doctor, keys, telemetry
{%- else -%}
from . import CLIENT_NAME, doctor, telemetry
{%- endif %}
from .chat import CallInfo
{%- if cookiecutter.framework == "fastapi" %}
from .chat_async import AsyncChatService, create_async_client
{%- else %}
from .chat_sync import ChatService, create_client
{%- endif %}
from .errors import GatewayError
from .logs import configure_logging
from .request import ChatRequest, Parameters
from .settings import Settings, load_settings_or_exit

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what the shell reports for a tool killed by it
{%- if cookiecutter.framework == "fastapi" %}
MAX_WORKERS = 64
{%- endif %}


class _Parser(argparse.ArgumentParser):
    """Bad usage is one line naming the problem (and --help), exit 2; no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=CLIENT_NAME, description=_description())
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="send one prompt and print the answer")
    ask.add_argument("prompt", help="the message to send")
    ask.add_argument("--model", help="model to use instead of ALLTKN_MODEL")
    ask.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    ask.add_argument("--user", help="end user the call is made for (logged)")
    ask.add_argument("--task", help="kind of task, e.g. summarise (logged)")
    for name, field in Parameters.model_fields.items():  # --max-tokens, --temperature, ...
        ask.add_argument(f"--{name.replace('_', '-')}", dest=name, help=field.description)
    doctor.add_arguments(
        commands.add_parser(
            "doctor",
            help="check the key, base URL, network, model and streaming live against the gateway",
        )
    )
{%- if cookiecutter.framework == "fastapi" %}
    serve = commands.add_parser(
        "serve", help="run the service (uvicorn, WEB_CONCURRENCY worker processes)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
{%- endif %}
{%- if cookiecutter.framework == "script" %}
    batch.add_arguments(
        commands.add_parser("batch", help="run a JSONL file of prompts through the gateway")
    )
{%- endif %}
{%- if cookiecutter.caller_auth == "keys" %}
    keys.add_arguments(commands.add_parser("keys", help="create, list and revoke caller keys"))
{%- endif %}
    return parser


def _description() -> str:  # pyproject.toml's, written in one place
    with contextlib.suppress(metadata.PackageNotFoundError):  # a source tree, not installed
        return metadata.metadata(CLIENT_NAME)["Summary"] or ""
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "doctor":
            return doctor.main(args)
{%- if cookiecutter.framework == "fastapi" %}
        if args.command == "serve":
            return _serve(args)
{%- endif %}
{%- if cookiecutter.framework == "script" %}
        if args.command == "batch":
            return batch.main(args, _setup())
{%- endif %}
{%- if cookiecutter.caller_auth == "keys" %}
        if args.command == "keys":
            return keys.main(args)
{%- endif %}
        return _ask(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader left (`| head`); the stream was closed upstream on the way out. Point
        # stdout at /dev/null so that the flush at exit does not fail again with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _setup() -> Settings:
    settings = load_settings_or_exit()
    configure_logging(settings.log_level, secrets=settings.secret_values)
    telemetry.start_or_exit(settings)  # spans and metrics over OTLP, if configured
    return settings


def _request(args: argparse.Namespace) -> ChatRequest:
    """The request `ask` sends, or exit 2 with one line naming the bad option."""
    fields: dict[str, Any] = {"prompt": args.prompt, "model": args.model}
    fields.update(user=args.user, task=args.task)
    for name in Parameters.model_fields:  # values as JSON when they are (`0.5`, `["a"]`)
        if (raw := getattr(args, name)) is not None:
            with contextlib.suppress(ValueError):
                raw = json.loads(raw)
            fields[name] = raw
    try:
        return ChatRequest.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        name = str(error["loc"][0]) if error["loc"] else "prompt"
        where = "the prompt" if name == "prompt" else "--" + name.replace("_", "-")
        print(f"error: {where}: {error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _ask(args: argparse.Namespace) -> int:
    request = _request(args)
    settings = _setup()
    call = CallInfo(user=args.user, task=args.task)
    try:
{%- if cookiecutter.framework == "fastapi" %}
        asyncio.run(_ask_async(settings, request, call, stream=not args.no_stream))
{%- else %}
        service = ChatService(create_client(settings), settings)
        if args.no_stream:
            print(service.complete(request, call).content)
            return 0
        with service.open_stream(request, call) as stream:
            for delta in stream:
                sys.stdout.write(delta)
                sys.stdout.flush()
        sys.stdout.write("\n")
{%- endif %}
    except GatewayError as error:
        print(f"error[{error.category.value}]: {error} (hint: {error.hint})", file=sys.stderr)
        return EXIT_FAILED
    return 0
{%- if cookiecutter.framework == "fastapi" %}


async def _ask_async(
    settings: Settings, request: ChatRequest, call: CallInfo, *, stream: bool
) -> None:
    async with create_async_client(settings) as client:
        service = AsyncChatService(client, settings)
        if not stream:
            print((await service.complete(request, call)).content)
            return
        async with await service.open_stream(request, call) as deltas:
            async for delta in deltas:
                sys.stdout.write(delta)
                sys.stdout.flush()
        sys.stdout.write("\n")


def _serve(args: argparse.Namespace) -> int:
    # Settings are checked here, in the process that starts the workers: uvicorn imports the
    # app only in the workers, and would respawn workers failing on a bad setting forever.
    settings = _setup()
    raw = os.environ.get("WEB_CONCURRENCY", "").strip() or "1"
    if not (raw.isdigit() and 1 <= int(raw) <= MAX_WORKERS):
        print(f"config error: WEB_CONCURRENCY must be 1 to {MAX_WORKERS} workers", file=sys.stderr)
        return EXIT_USAGE
{%- if cookiecutter.caller_auth == "keys" %}
    from .admission import load_callers_or_exit

    load_callers_or_exit(settings, int(raw))  # here too: a worker failing on it would respawn
{%- endif %}
    import uvicorn  # only this command needs the server

    from . import metrics_dir
    from .logs import logging_config

    # Where the workers count for /metrics, before any imports prometheus_client. One worker
    # lives as long as the server: it may count in memory.
    if raw != "1" or os.environ.get(metrics_dir.ENV, "").strip():
        metrics_dir.empty(metrics_dir.prepare())
    try:
        uvicorn.run(
            f"{__package__}.app:app",
            host=args.host,
            port=args.port,
            workers=int(raw),
            # Not uvloop: a relay under it was measured missing client hang-ups (README).
            loop="asyncio",
            timeout_graceful_shutdown=30,
            # uvicorn's own lines and its access lines in the service's JSON format (logs.py).
            log_config=logging_config(settings.log_level),
        )
    finally:
        metrics_dir.remove_private()
    return 0
{%- endif %}
