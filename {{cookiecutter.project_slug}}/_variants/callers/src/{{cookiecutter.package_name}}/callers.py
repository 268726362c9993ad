"""Caller keys: who may call this service, with which models, within which limits.

The callers file (ALLTKN_CALLERS_FILE, default `callers.json`, mode 0600, never committed) holds,
per caller, the SHA-256 of its key, the key's first characters (to recognise it in a list) and its
policy; never a key. `keys create` (keys.py) prints a new key once. The service re-reads the file
when it changes (looked at once a second), so a new or revoked key counts within 2 s.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import Category, GatewayError

KEY_PREFIX = "ck_"  # not `sk-`: a caller key is never taken for the gateway key
SHOWN_CHARS = 8  # the key's start kept in the file and shown by `keys list`
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_KEY_SHAPE = re.compile(r"ck_[A-Za-z0-9_-]{40,64}")
RELOAD_EVERY_S = 1.0
logger = logging.getLogger(__name__)


class CallersError(Exception):
    """The callers file is missing or invalid; the message is one line naming the file."""


class Caller(BaseModel):
    """One caller's policy. `models` None: every model the service allows; a limit None: none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    key_prefix: str = Field(max_length=SHOWN_CHARS)
    models: tuple[str, ...] | None = None
    rpm: int | None = Field(None, gt=0, description="requests per minute")
    tpm: int | None = Field(None, gt=0, description="tokens per minute")
    daily_tokens: int | None = Field(None, gt=0, description="tokens per UTC day")
    created: str = ""

    @property
    def limited(self) -> bool:
        return any((self.rpm, self.tpm, self.daily_tokens))


Who = tuple[str, Caller]  # an authenticated caller: its name and policy


class CallersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    callers: dict[str, Caller] = {}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read(path: Path) -> dict[str, Caller]:
    """The callers in `path`, or `CallersError` naming what is wrong and the fix."""
    where = f"callers file {path}"
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise CallersError(
            f"{where} does not exist: create a caller with `keys create NAME`, "
            "or point ALLTKN_CALLERS_FILE at the file"
        ) from None
    except OSError as exc:
        raise CallersError(
            f"{where} cannot be read ({type(exc).__name__}): point ALLTKN_CALLERS_FILE at a "
            "file this user can read"
        ) from None
    if os.name == "posix" and mode & (stat.S_IROTH | stat.S_IWOTH):  # anyone could add a key
        what = "readable" if mode & stat.S_IROTH else "writable"
        raise CallersError(f"{where} is {what} by every user: run chmod 600 {path}")
    if not data.strip():
        raise CallersError(f"{where} is empty: create a caller with `keys create NAME`")
    try:  # not UTF-8: invalid JSON too
        return CallersFile.model_validate_json(data).callers
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        if error["type"] == "json_invalid":
            raise CallersError(f"{where} is not valid JSON: restore it or recreate it") from None
        field = ".".join(str(part) for part in error["loc"]) or "the file"
        raise CallersError(f"{where}: {field}: {error['msg']}") from None


def write(path: Path, callers: dict[str, Caller]) -> None:
    """Replace the file atomically (a running service never reads half a file), mode 0600."""
    document = CallersFile(callers=callers).model_dump_json(indent=2, exclude_none=True)
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=".callers-", dir=path.parent)
    except OSError as exc:  # no such directory, read-only (a mounted Secret), ...
        raise _unwritable(path, exc) from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:  # mkstemp: mode 0600
            file.write(document + "\n")
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _unwritable(path, exc) from None
        raise


def _unwritable(path: Path, exc: OSError) -> CallersError:
    return CallersError(
        f"callers file {path} cannot be written ({type(exc).__name__}): check that its "
        "directory exists and this user can write there"
    )


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def add(path: Path, name: str, **policy: object) -> str:
    """Add caller `name` with `policy` (models, rpm, tpm, daily_tokens); returns its new key."""
    if not re.fullmatch(NAME_PATTERN, name):  # match's `$` lets a final newline in
        raise CallersError(f"caller name {name!r}: use letters, digits, . _ - (at most 64)")
    callers = read(path) if path.exists() else {}
    if name in callers:
        raise CallersError(f"caller {name} exists: revoke it first, or choose another name")
    key = new_key()
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    caller = {"key_sha256": hash_key(key), "key_prefix": key[:SHOWN_CHARS], "created": created}
    try:
        callers[name] = Caller.model_validate({**caller, **policy})
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        raise CallersError(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}") from None
    write(path, callers)
    return key


def remove(path: Path, name: str) -> None:
    callers = read(path)
    if callers.pop(name, None) is None:
        raise CallersError(f"there is no caller {name} in {path} (see `keys list`)")
    write(path, callers)


class Callers:
    """The callers file as the service sees it: read at start (a bad file stops the start) and
    again when it changes; a file broken while running keeps the last good callers, logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # The signature first: a change made while the file is read is seen at the next check.
        self._seen, self._checked = self._signature(), time.monotonic()
        self._callers = read(path)

    def _signature(self) -> tuple[int, ...] | None:
        try:
            found = self.path.stat()
        except OSError:
            return None
        # The mode too: a file refused for its mode counts once `chmod 600` fixes it.
        return found.st_mtime_ns, found.st_size, found.st_ino, found.st_mode

    def current(self) -> dict[str, Caller]:
        now = time.monotonic()
        if now - self._checked >= RELOAD_EVERY_S and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                if (signature := self._signature()) != self._seen:
                    self._seen = signature
                    self._callers = read(self.path)
                    logger.info("callers file reloaded: %d callers", len(self._callers))
            except CallersError as exc:
                logger.error("%s; still serving the callers read before", exc)
            finally:
                self._lock.release()
        return self._callers

    def authenticate(self, authorization: str | None) -> Who:
        """The (name, policy) of the caller whose key is in `Authorization: Bearer <key>`."""
        scheme, _, key = (authorization or "").strip().partition(" ")
        if not authorization:
            raise _refused("no caller key: send the header Authorization: Bearer <caller key>")
        if scheme.lower() == "bearer" and key.strip().startswith("sk-"):
            raise _refused(
                "that is the gateway's API key, not a caller key: send the caller key the "
                "service's owner gave you (and keep the gateway key out of clients)"
            )
        if scheme.lower() != "bearer" or not _KEY_SHAPE.fullmatch(key.strip()):
            raise _refused(
                f"the Authorization header is not 'Bearer {KEY_PREFIX}...': send the caller key "
                "the service's owner gave you"
            )
        digest, found = hash_key(key.strip()), None
        for name, caller in self.current().items():  # every entry compared: constant time
            if hmac.compare_digest(caller.key_sha256, digest):
                found = name, caller
        if found is None:
            raise _refused("the caller key is unknown or was revoked: ask for a new one")
        return found


def _refused(why: str) -> GatewayError:
    return GatewayError(Category.CALLER_AUTH, detail=why, headers={"WWW-Authenticate": "Bearer"})
