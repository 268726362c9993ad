"""Command line: `<slug> ask "prompt"`, or `python -m <package> ask "prompt"`.

`<slug> doctor [--json | --support]` checks the configuration and the gateway live (see
`doctor.py`); a failed run also writes a support report to the current directory.
{%- if cookiecutter.framework == "fastapi" %}

`<slug> serve [--host H] [--port P]` runs the service: uvicorn, `WEB_CONCURRENCY` workers.
{%- endif %}
{%- if cookiecutter.framework == "script" %}

`<slug> batch INPUT.jsonl OUTPUT.jsonl` runs a file of prompts (see `batch.py`).
{%- endif %}

Exit codes: 0 answered, 1 the gateway call failed, 2 bad usage or configuration, 130 interrupted,
141 the reader of the output went away (`... | head`); for `doctor`: 0 every check passed
(warnings allowed), 1 a check failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from openai.types.chat import ChatCompletionMessageParam
{% if cookiecutter.framework == "script" %}
from . import batch, doctor
{%- else %}
from . import doctor
{%- endif %}
from .client import CLIENT_NAME
from .errors import GatewayError
from .logs import configure_logging
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
    check = commands.add_parser(
        "doctor",
        help="check the key, base URL, network, model and streaming live against the gateway",
    )
    doctor.add_arguments(check)
{%- if cookiecutter.framework == "fastapi" %}
    serve = commands.add_parser(
        "serve",
        help="run the service (uvicorn, WEB_CONCURRENCY worker processes, asyncio loop)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
{%- endif %}
{%- if cookiecutter.framework == "script" %}
    batch.add_parser(commands)
{%- endif %}
    return parser


def _description() -> str:
    """The one-line description from pyproject.toml, so it is written in one place."""
    try:
        return metadata.metadata(CLIENT_NAME)["Summary"] or ""
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except BrokenPipeError:
        # The reader left (`| head`); a stream was closed upstream on the way out. Point stdout
        # at /dev/null so that the flush at exit does not fail again with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(args: argparse.Namespace) -> int:
    if args.command == "doctor":
        return doctor.main(args)
{%- if cookiecutter.framework == "fastapi" %}
    if args.command == "serve":
        return _serve(args)
{%- endif %}
{%- if cookiecutter.framework == "script" %}
    if args.command == "batch":
        return _batch(args)
{%- endif %}
    return _ask(args)


def _setup() -> Settings:
    settings = load_settings_or_exit()
    configure_logging(settings.log_level, secrets=[settings.api_key.get_secret_value()])
    return settings


def _print(text: str) -> None:
    """Print, also where the terminal's encoding cannot show the gateway's Chinese text."""
    try:
        print(text)
    except UnicodeEncodeError:
        encoding = sys.stdout.encoding or "ascii"
        print(text.encode(encoding, "backslashreplace").decode(encoding))


def _report(error: GatewayError) -> None:
    print(f"error[{error.category.value}]: {error.message} (hint: {error.hint})", file=sys.stderr)


def _ask(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        print("error: the prompt is empty; pass the text to send", file=sys.stderr)
        return EXIT_USAGE
    from .chat import CallInfo, ChatService, Rollback  # type: ignore[attr-defined]  # old core
    from .client import create_client  # type: ignore[attr-defined]

    settings = _setup()
    service = ChatService(create_client(settings), settings.model, Rollback.from_settings(settings))
    call = CallInfo(user=args.user, task=args.task)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": args.prompt}]
    try:
        if args.no_stream:
            print(service.complete(messages, model=args.model, call=call).content)
        else:
            _print_stream(service, messages, args.model, call)
    except GatewayError as error:
        _report(error)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
{%- if cookiecutter.framework == "fastapi" %}


def _serve(args: argparse.Namespace) -> int:
    # Settings are checked here, in the process that starts the workers: uvicorn imports the
    # app only in the workers, and would respawn workers failing on a bad setting forever.
    load_settings_or_exit()
    workers = _web_concurrency()
    import uvicorn  # only this command needs the server

    uvicorn.run(
        f"{__package__}.app:app",
        host=args.host,
        port=args.port,
        workers=workers,
        # Not uvloop: a relay under it was measured missing client hang-ups (README).
        loop="asyncio",
        timeout_graceful_shutdown=30,
    )
    return 0


def _web_concurrency() -> int:
    raw = os.environ.get("WEB_CONCURRENCY", "").strip() or "1"
    if not (raw.isdigit() and 1 <= int(raw) <= MAX_WORKERS):
        print(
            f"config error: WEB_CONCURRENCY must be a whole number of worker processes "
            f"from 1 to {MAX_WORKERS}",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USAGE)
    return int(raw)
{%- endif %}
{%- if cookiecutter.framework == "script" %}


def _batch(args: argparse.Namespace) -> int:
    settings = _setup()
    try:
        outcome = batch.run_batch(batch.options_from(args), settings)
    except batch.BatchUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if outcome.fatal is not None:
        _report(outcome.fatal)
    if outcome.write_error is not None:
        print(f"error: {outcome.write_error}", file=sys.stderr)
    return outcome.exit_code
{%- endif %}


def _print_stream(
    service: Any,
    messages: list[ChatCompletionMessageParam],
    model: str | None,
    call: Any,
) -> None:
    with service.open_stream(messages, model=model, call=call) as stream:
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
    sys.stdout.write("\n")
