"""`<slug> keys create|list|revoke|usage`: the caller keys of this service (callers.py).

`create` prints the new key alone on stdout, once; the callers file keeps only its SHA-256.
Give each team or job its own key: the call log names the caller of every call, `usage` counts
today's requests and tokens per caller and model (from Redis: ALLTKN_LIMITS_REDIS_URL).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import callers
from .limiter import REDIS_ERRORS, Limiter, day_of
from .settings import CallerSettings, ConfigError, build

EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    create = commands.add_parser("create", help="make a caller key (printed once)")
    create.add_argument("name", help="who the key is for: a team, a service, a job")
    create.add_argument("--models", help="models it may use, comma-separated (default: all)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--daily-tokens", type=int, help="tokens per UTC day")
    commands.add_parser("list", help="the callers and their limits (never a key)")
    revoke = commands.add_parser("revoke", help="remove a caller; its key stops working")
    revoke.add_argument("name")
    usage = commands.add_parser("usage", help="today's requests and tokens per caller and model")
    usage.add_argument("name", nargs="?", help="one caller only")


def main(args: argparse.Namespace) -> int:
    try:
        settings = build(CallerSettings)
        path = settings.callers_file
        if args.keys_command == "create":
            return _create(path, args)
        if args.keys_command == "list":
            return _list(path)
        if args.keys_command == "revoke":
            callers.remove(path, args.name)
            print(f"revoked {args.name}; the service refuses its key within 2 s", file=sys.stderr)
            return 0
        redis_url = settings.limits_redis_url
        if redis_url is None:
            print(
                "error[config]: usage is counted in the service's own memory without "
                "ALLTKN_LIMITS_REDIS_URL; set it to read usage here (the call log names the "
                "caller of every call)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    except ConfigError as exc:
        print(f"error[config]: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except callers.CallersError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    limiter = Limiter(redis_url.get_secret_value())
    try:
        return _usage(limiter, args.name)
    except REDIS_ERRORS as exc:  # only here: a file's OSError is not Redis's
        print(f"error: cannot read usage from Redis ({type(exc).__name__})", file=sys.stderr)
        return 1
    finally:
        limiter.redis.close()


def _create(path: Path, args: argparse.Namespace) -> int:
    models = None if args.models is None else [name.strip() for name in args.models.split(",")]
    if models is not None and not all(models):
        raise callers.CallersError("--models: list model names separated by single commas")
    policy = {"models": models, "rpm": args.rpm, "tpm": args.tpm}
    key = callers.add(path, args.name, **policy, daily_tokens=args.daily_tokens)
    print(key)
    print(
        f"caller {args.name} added to {path}. This is the only time the key is shown: give it "
        "to the caller through your secret store.",
        file=sys.stderr,
    )
    return 0


def _list(path: Path) -> int:
    found = callers.read(path)
    if not found:
        print(f"no callers in {path}", file=sys.stderr)
    for name, caller in sorted(found.items()):
        models = ",".join(caller.models) if caller.models is not None else "(allowed models)"
        limits = [f"{label} {value}" for label, value in (
            ("rpm", caller.rpm), ("tpm", caller.tpm), ("daily tokens", caller.daily_tokens)
        ) if value]  # fmt: skip
        print(f"{name}\t{caller.key_prefix}...\t{models}\t{', '.join(limits) or 'no limits'}")
    return 0


def _usage(limiter: Limiter, only: str | None) -> int:
    day = day_of(time.time())
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for field, value in limiter.usage(day).items():
        name, rest = field.split("|", 1)  # names have no "|"
        model, what = rest.rsplit("|", 1)
        if only is None or name == only:
            counts.setdefault((name, model), {})[what] = value
    print(f"usage on {day} (UTC)\ncaller\tmodel\trequests\ttokens")
    for (name, model), row in sorted(counts.items()):
        print(f"{name}\t{model}\t{row.get('requests', 0)}\t{row.get('tokens', 0)}")
    return 0
