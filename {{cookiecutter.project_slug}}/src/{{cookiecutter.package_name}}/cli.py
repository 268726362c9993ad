"""Command line: `<slug> ask "prompt"`, or `python -m <package> ask "prompt"`.

`ask` sends piped input before the prompt (`git diff | <slug> ask "Write a commit message"`;
`ask -` reads the prompt from stdin alone); `--json` prints one JSON object when the call ends:
the answer, or the `{"error": {...}}` body the web variants answer with.

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
{%- if cookiecutter.worker == "celery" %}
`<slug> worker`, `enqueue IN.jsonl`, `collect JOBS OUT.jsonl [--wait]`: the queue (docs/WORKER.md).
{%- endif %}

Exit codes: 0 answered, 1 the gateway call failed, 2 bad usage or configuration, 130 interrupted,
141 the reader of the output went away (`... | head`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import CLIENT_NAME, DESCRIPTION

# The commands' modules (and the SDK, pydantic, the servers behind them) are imported by the
# command that runs, inside the functions below: `--help`, and a command's own `--help`, answer
# without loading what they do not use (tests/test_cli.py, test_help_loads_no_sdk).
if TYPE_CHECKING:
    from .chat import CallInfo, ChatResult
    from .request import ChatRequest
    from .settings import Settings

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what the shell reports for a tool killed by it
{%- if cookiecutter.framework == "fastapi" %}
MAX_WORKERS = 64
{%- endif %}


# What a model's answer may not send to a terminal: control characters (escape sequences move
# the cursor, retitle the window, hide text), bar newline and tab.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def for_terminal(text: str) -> str:
    """`text` without control characters other than newline and tab, when stdout is a terminal
    (piped or redirected, the answer goes out as the model wrote it)."""
    return _CONTROL.sub("", text) if sys.stdout.isatty() else text


class _AnswerLine(logging.Filter):
    """On a terminal, a log line written while the answer's last line is open ends it first."""

    open = False  # a delta was written and no newline since

    def filter(self, record: logging.LogRecord) -> bool:
        if _AnswerLine.open:
            _AnswerLine.open = False
            sys.stdout.write("\n")
            sys.stdout.flush()
        return True


class _Parser(argparse.ArgumentParser):
    """Bad usage is one line naming the problem (and --help), exit 2; no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command, with the arguments of `command` only: adding a command's arguments imports
    its module, which neither `--help` nor the other commands need."""
    parser = _Parser(prog=CLIENT_NAME, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (summary, add_arguments) in _COMMANDS.items():
        sub = commands.add_parser(name, help=summary)
        if name == command:
            add_arguments(sub)
    return parser


def _ask_arguments(ask: argparse.ArgumentParser) -> None:
    from .request import Parameters

    ask.add_argument(
        "prompt", nargs="?", help="the message to send, after any piped input ('-': stdin alone)"
    )
    ask.add_argument("-s", "--system", metavar="TEXT", help="a system message: how to answer")
    ask.add_argument("-m", "--model", help="model to use instead of ALLTKN_MODEL")
    ask.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    ask.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object when done: content, model, usage, ids, finish_reason; "
        "or the error",
    )
    ask.add_argument("--user", help="end user the call is made for (logged)")
    ask.add_argument("--task", help="kind of task, e.g. summarise (logged)")
    ask.add_argument(
        "-v", "--verbose", action="store_true", help="on a terminal, show the call log line too"
    )
    for name, field in Parameters.model_fields.items():  # --max-tokens, --temperature, ...
        ask.add_argument(f"--{name.replace('_', '-')}", dest=name, help=field.description)
    ask.set_defaults(usage_error=ask.error)  # for an `ask` with nothing to send


def _doctor_arguments(parser: argparse.ArgumentParser) -> None:
    from . import doctor

    doctor.add_arguments(parser)
{%- if cookiecutter.framework == "fastapi" %}


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--reload", action="store_true", help="one worker, restarted on code changes (development)"
    )
{%- endif %}
{%- if cookiecutter.framework == "script" %}


def _batch_arguments(parser: argparse.ArgumentParser) -> None:
    from . import batch

    batch.add_arguments(parser)
{%- endif %}
{%- if cookiecutter.caller_auth == "keys" %}


def _keys_arguments(parser: argparse.ArgumentParser) -> None:
    from . import keys

    keys.add_arguments(parser)
{%- endif %}
{%- if cookiecutter.worker == "celery" %}


def _queue_arguments(command: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        from . import queue_cli

        queue_cli.add_arguments(command, parser)

    return add
{%- endif %}


# name: (the help line, what adds its arguments)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "ask": ("send one prompt and print the answer", _ask_arguments),
    "doctor": (
        "check the key, base URL, network, model and streaming live against the gateway",
        _doctor_arguments,
    ),
{%- if cookiecutter.framework == "fastapi" %}
    "serve": ("run the service (uvicorn, WEB_CONCURRENCY worker processes)", _serve_arguments),
{%- endif %}
{%- if cookiecutter.framework == "script" %}
    "batch": ("run a JSONL file of prompts through the gateway", _batch_arguments),
{%- endif %}
{%- if cookiecutter.caller_auth == "keys" %}
    "keys": ("create, list and revoke caller keys", _keys_arguments),
{%- endif %}
{%- if cookiecutter.worker == "celery" %}
    "worker": ("answer queued jobs (a Celery worker)", _queue_arguments("worker")),
    "enqueue": ("queue a JSONL file of prompts, print job ids", _queue_arguments("enqueue")),
    "collect": ("write the results of queued jobs", _queue_arguments("collect")),
{%- endif %}
}


def _command(argv: Sequence[str]) -> str | None:
    """The command `argv` names: its first word (the program itself has no option but --help)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        if args.command == "doctor":
            from . import doctor

            return doctor.main(args)
{%- if cookiecutter.framework == "fastapi" %}
        if args.command == "serve":
            return _serve(args)
{%- endif %}
{%- if cookiecutter.framework == "script" %}
        if args.command == "batch":
            from . import batch

            return batch.main(args, _setup())
{%- endif %}
{%- if cookiecutter.caller_auth == "keys" %}
        if args.command == "keys":
            from . import keys

            return keys.main(args)
{%- endif %}
{%- if cookiecutter.worker == "celery" %}
        if args.command in ("worker", "enqueue", "collect"):
            from . import queue_cli

            return queue_cli.main(args)
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
    from . import telemetry
    from .logs import configure_logging
    from .settings import load_settings_or_exit

    settings = load_settings_or_exit()
    configure_logging(settings.log_level, secrets=settings.secret_values)
    telemetry.start_or_exit(settings)  # spans and metrics over OTLP, if configured
    return settings


def _usage_error(where: str, message: str) -> NoReturn:
    print(f"error: {where}: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _read_stdin(*, even_a_terminal: bool) -> str:
    """Piped input: stdin when it is a pipe, a file or a socket (`-`: whatever it is), else "".
    A terminal, /dev/null or no stdin at all (a job's, a test runner's) is no input."""
    from .request import MAX_CONTENT_CHARS

    # More bytes than this are more characters than one message takes (UTF-8: at most 4 each).
    max_bytes = 4 * MAX_CONTENT_CHARS
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # closed, or a stand-in with no file behind
        return ""
    if not (even_a_terminal or stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)):
        return ""
    data = sys.stdin.buffer.read(max_bytes + 1)  # bounded: `cat huge.log | ask` is refused
    if len(data) > max_bytes:
        most = f"more than the {MAX_CONTENT_CHARS} characters one message takes"
        _usage_error("stdin", f"over {max_bytes} bytes, {most}; send less (head -c)")
    try:
        return data.decode("utf-8-sig")  # without the byte order mark some editors write
    except UnicodeDecodeError as exc:
        byte = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
        _usage_error("stdin", f"not UTF-8 text ({byte}); pipe text (iconv -t UTF-8 converts it)")


def _request(args: argparse.Namespace) -> ChatRequest:
    """The request `ask` sends, or exit 2 with one line naming what is wrong. The user's message
    is the piped input, then the prompt; with --system a system message comes first."""
    from pydantic import ValidationError

    from .request import ChatRequest, Parameters

    piped = _read_stdin(even_a_terminal=args.prompt == "-").rstrip()
    prompt = None if args.prompt == "-" else args.prompt
    text = "\n\n".join(part for part in (piped, prompt) if part and part.strip())
    if not text:
        args.usage_error("no prompt: give one, or pipe text in ('ask -' reads it from stdin)")
    fields: dict[str, Any] = {"model": args.model, "user": args.user, "task": args.task}
    if args.system is None:
        fields["prompt"] = text
    else:
        system = {"role": "system", "content": args.system}
        fields["messages"] = [system, {"role": "user", "content": text}]
    for name in Parameters.model_fields:  # values as JSON when they are (`0.5`, `["a"]`)
        if (raw := getattr(args, name)) is not None:
            with contextlib.suppress(ValueError):
                raw = json.loads(raw)
            fields[name] = raw
    try:
        return ChatRequest.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        loc = error["loc"]
        if loc[:2] == ("messages", 0):
            where = "--system"
        elif loc and loc[0] not in ("prompt", "messages"):
            where = "--" + str(loc[0]).replace("_", "-")
        else:
            where = "stdin and the prompt" if piped else "the prompt"
        _usage_error(where, error["msg"].removeprefix("Value error, "))


def _ask(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .chat import CallInfo
    from .errors import GatewayError, error_body
    from .logs import CALL_LOGGER

    request = _request(args)
    settings = _setup()
    if sys.stderr.isatty() and not args.verbose:  # a person reading: a failed call's line only
        CALL_LOGGER.setLevel(logging.WARNING)
    if sys.stdout.isatty():
        for handler in logging.getLogger().handlers:
            handler.addFilter(_AnswerLine())
    call = CallInfo(user=args.user, task=args.task)
    stream, echo = not args.no_stream, not args.json  # --json: the one object, at the end
    try:
{%- if cookiecutter.framework == "fastapi" %}
        import asyncio

        result = asyncio.run(_answer(settings, request, call, stream=stream, echo=echo))
{%- else %}
        result = _answer(settings, request, call, stream=stream, echo=echo)
{%- endif %}
    except GatewayError as error:
        if args.json:  # the web variants' error body: `jq` reads either outcome
            body = error_body(error.category, error.message, error.hint, call.request_id)
            print(json.dumps(body, ensure_ascii=False))
        else:
            print(f"error[{error.category.value}]: {error} (hint: {error.hint})", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(asdict(result), ensure_ascii=False))
    else:
        if not stream:
            print(for_terminal(result.content))
        elif _AnswerLine.open or not result.content:  # streamed: its newline, unless written
            print()
    return 0
{%- if cookiecutter.framework == "fastapi" %}


async def _answer(
    settings: Settings, request: ChatRequest, call: CallInfo, *, stream: bool, echo: bool
) -> ChatResult:
    """The whole answer; streamed, each delta is printed as it comes when `echo`."""
    from .chat_async import AsyncChatService, create_async_client

    async with create_async_client(settings) as client:
        service = AsyncChatService(client, settings)
        if not stream:
            return await service.complete(request, call)
        async with await service.open_stream(request, call) as deltas:
            async for delta in deltas:
                if echo:
                    sys.stdout.write(for_terminal(delta))
                    sys.stdout.flush()
                    _AnswerLine.open = True
        return deltas.result()
{%- else %}


def _answer(
    settings: Settings, request: ChatRequest, call: CallInfo, *, stream: bool, echo: bool
) -> ChatResult:
    """The whole answer; streamed, each delta is printed as it comes when `echo`."""
    from .chat_sync import ChatService, create_client

    service = ChatService(create_client(settings), settings)
    if not stream:
        return service.complete(request, call)
    with service.open_stream(request, call) as deltas:
        for delta in deltas:
            if echo:
                sys.stdout.write(for_terminal(delta))
                sys.stdout.flush()
                _AnswerLine.open = True
    return deltas.result()
{%- endif %}
{%- if cookiecutter.framework == "fastapi" %}


def _serve(args: argparse.Namespace) -> int:
    # Settings are checked here, in the process that starts the workers: uvicorn imports the
    # app only in the workers, and would respawn workers failing on a bad setting forever.
    settings = _setup()
    raw = os.environ.get("WEB_CONCURRENCY", "").strip() or "1"
    if not (raw.isdigit() and 1 <= int(raw) <= MAX_WORKERS):
        print(f"error[config]: WEB_CONCURRENCY must be 1 to {MAX_WORKERS} workers", file=sys.stderr)
        return EXIT_USAGE
{%- if cookiecutter.caller_auth == "keys" %}
    from .admission import load_callers_or_exit

    load_callers_or_exit(settings, int(raw))  # here too: a worker failing on it would respawn
{%- endif %}
    import uvicorn  # only this command needs the server

    from . import metrics_dir
    from .http_protocol import PROTOCOL
    from .logs import logging_config

    # Where the workers count for /metrics, before any imports prometheus_client. One worker
    # lives as long as the server: it may count in memory.
    if settings.metrics == "on" and (raw != "1" or os.environ.get(metrics_dir.ENV, "").strip()):
        metrics_dir.empty(metrics_dir.prepare())
    try:
        uvicorn.run(
            f"{__package__}.app:app",
            host=args.host,
            port=args.port,
            workers=int(raw),
            # The settings are checked above, before the reloader starts: a bad one exits 2 here.
            reload=args.reload,
            # Not uvloop: a relay under it was measured missing client hang-ups (README).
            loop="asyncio",
            http=PROTOCOL,  # httptools, a deadline for a request's head (408), a stop losing none
            # Past ALLTKN_MAX_STREAMS chat requests the app answers 503 itself; uvicorn's own
            # 503 beyond this bounds the connections and requests a worker holds at all.
            limit_concurrency=settings.max_streams + 100,
            timeout_graceful_shutdown=30,
            # uvicorn's own lines and its access lines in the service's JSON format (logs.py).
            log_config=logging_config(settings.log_level),
        )
    finally:
        metrics_dir.remove_private()
    return 0
{%- endif %}
