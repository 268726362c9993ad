"""The callers file and caller keys: a bad file refused in one line naming the file and the fix,
keys written as hashes only (mode 0600), requests authenticated by `Authorization: Bearer`, and
a file changed by another writer seen within 2 s without a restart."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from {{ cookiecutter.package_name }} import callers
from {{ cookiecutter.package_name }}.callers import Callers, CallersError, add, hash_key, read, remove
from {{ cookiecutter.package_name }}.errors import Category, GatewayError

KEY_SHAPE = re.compile(r"ck_[A-Za-z0-9_-]{43}")
OTHER_HASH = "ab" * 32


def entry(**policy: Any) -> dict[str, Any]:
    return {"key_sha256": OTHER_HASH, "key_prefix": "ck_abcde", **policy}


def document(**named: dict[str, Any]) -> str:
    return json.dumps({"version": 1, "callers": named})


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "callers.json"


def written(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


# --- the file, read at start ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        pytest.param(
            None, 0o600, "does not exist: create a caller with `keys create", id="missing"
        ),
        pytest.param("", 0o600, "is empty: create a caller with `keys create", id="empty"),
        pytest.param(" \n", 0o600, "is empty", id="blank"),
        pytest.param("{", 0o600, "is not valid JSON: restore it or recreate it", id="not-json"),
        pytest.param("[]", 0o600, "the file: Input should be", id="a-list"),
        pytest.param('{"callers": []}', 0o600, "callers: Input should be", id="callers-a-list"),
        pytest.param(
            document(ci={"key_sha256": "not-hex", "key_prefix": "ck_x"}),
            0o600,
            "callers.ci.key_sha256: String should match",
            id="bad-hash",
        ),
        pytest.param(
            document(ci={"key_prefix": "ck_x"}),
            0o600,
            "callers.ci.key_sha256: Field required",
            id="no-hash",
        ),
        pytest.param(
            document(ci=entry(rmp=5)), 0o600, "callers.ci.rmp: Extra inputs", id="misspelt-limit"
        ),
        pytest.param(
            document(ci=entry(rpm=0)),
            0o600,
            "callers.ci.rpm: Input should be greater than 0",
            id="rpm-zero",
        ),
        pytest.param(
            document(ci=entry(key="ck_" + "a" * 43)),
            0o600,
            "callers.ci.key: Extra inputs",
            id="a-key-in-the-file",
        ),
        pytest.param(document(), 0o644, "is readable by every user: run chmod 600", id="mode-644"),
        pytest.param(document(), 0o604, "by every user: run chmod 600", id="mode-604"),
        pytest.param(document(), 0o602, "writable by every user: run chmod 600", id="mode-602"),
        pytest.param(b"\xff\xfe{}", 0o600, "is not valid JSON", id="not-utf8"),
    ],
)
def test_a_bad_callers_file_is_refused_in_one_line_naming_it(
    path: Path, text: str | bytes | None, mode: int, expected: str
) -> None:
    if isinstance(text, bytes):
        path.write_bytes(text)
        path.chmod(mode)
    elif text is not None:
        written(path, text, mode)

    with pytest.raises(CallersError) as refused:
        read(path)
    with pytest.raises(CallersError) as at_start:
        Callers(path)

    message = str(refused.value)
    assert message.startswith(f"callers file {path}")
    assert expected in message
    assert "\n" not in message
    assert str(at_start.value) == message


def test_a_directory_in_place_of_the_file_is_refused(path: Path) -> None:
    path.mkdir()
    with pytest.raises(
        CallersError, match=r"cannot be read \(IsADirectoryError\): point ALLTKN_CALLERS_FILE"
    ):
        read(path)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440], ids=oct)
def test_modes_closed_to_other_users_are_accepted(path: Path, mode: int) -> None:
    written(path, document(ci=entry(rpm=5, models=["m1"])), mode)
    assert read(path) == {"ci": callers.Caller(**entry(rpm=5, models=("m1",)))}


def test_a_file_without_callers_is_valid(path: Path) -> None:
    assert read(written(path, document())) == {}
    assert read(written(path, "{}")) == {}


# --- add and remove -------------------------------------------------------------------------


def test_add_creates_the_file_0600_with_the_hash_and_a_prefix_never_the_key(path: Path) -> None:
    key = add(path, "team-a", models=["gpt-4o-mini"], rpm=5, tpm=None, daily_tokens=1000)

    assert KEY_SHAPE.fullmatch(key)
    assert mode_of(path) == 0o600
    text = path.read_text(encoding="utf-8")
    assert key not in text
    assert key[3:] not in text  # not even the part after the prefix
    stored = json.loads(text)["callers"]["team-a"]
    assert stored["key_sha256"] == hash_key(key)
    assert stored["key_prefix"] == key[:8]
    assert (stored["models"], stored["rpm"], stored["daily_tokens"]) == (["gpt-4o-mini"], 5, 1000)
    assert "tpm" not in stored  # no limit: not written as null
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stored["created"])
    assert os.listdir(path.parent) == ["callers.json"]  # no temporary file left


def test_add_keeps_the_other_callers_and_makes_a_different_key(path: Path) -> None:
    first = add(path, "team-a")
    path.chmod(0o440)  # as a Secret mounts it
    second = add(path, "team-b", rpm=1)

    assert first != second
    assert sorted(read(path)) == ["team-a", "team-b"]
    assert read(path)["team-a"].key_sha256 == hash_key(first)
    assert mode_of(path) == 0o600


def test_a_duplicate_name_is_refused_and_the_file_is_unchanged(path: Path) -> None:
    add(path, "team-a")
    before = path.read_text(encoding="utf-8")
    with pytest.raises(CallersError, match="caller team-a exists: revoke it first"):
        add(path, "team-a")
    assert path.read_text(encoding="utf-8") == before


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("-team", id="leading-dash"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("team a", id="space"),
        pytest.param("team|a", id="pipe"),  # the separator of `keys usage` fields
        pytest.param("team:a", id="colon"),  # the separator of the Redis keys
        pytest.param("../etc", id="path"),
        pytest.param("équipe", id="non-ascii"),
        pytest.param("t" * 65, id="65-chars"),
        pytest.param("team-a\n", id="final-newline"),
    ],
)
def test_bad_caller_names_are_refused(path: Path, name: str) -> None:
    with pytest.raises(CallersError, match="use letters, digits"):
        add(path, name)
    assert not path.exists()


@pytest.mark.parametrize("name", ["a", "team.a_b-1", "7", "t" * 64])
def test_good_caller_names_are_accepted(path: Path, name: str) -> None:
    add(path, name)
    assert list(read(path)) == [name]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param({"rpm": 0}, "--rpm: Input should be greater than 0", id="rpm-0"),
        pytest.param({"rpm": -1}, "--rpm: Input should be greater than 0", id="rpm-minus-1"),
        pytest.param({"tpm": 0}, "--tpm: Input should be greater than 0", id="tpm-0"),
        pytest.param(
            {"daily_tokens": -1},
            "--daily-tokens: Input should be greater than 0",
            id="daily-minus-1",
        ),
    ],
)
def test_bad_limits_are_refused_naming_the_option(
    path: Path, policy: dict[str, int], expected: str
) -> None:
    add(path, "team-a")
    before = path.read_text(encoding="utf-8")
    with pytest.raises(CallersError) as refused:
        add(path, "team-b", **policy)
    assert str(refused.value) == expected
    assert path.read_text(encoding="utf-8") == before


def test_add_into_a_missing_directory_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy" / "callers.json"
    with pytest.raises(CallersError) as refused:
        add(path, "team-a")
    assert str(refused.value).startswith(f"callers file {path} cannot be written")


def test_remove_drops_one_caller(path: Path) -> None:
    add(path, "team-a")
    add(path, "team-b")
    remove(path, "team-a")
    assert list(read(path)) == ["team-b"]
    assert mode_of(path) == 0o600


def test_removing_an_unknown_caller_is_refused(path: Path) -> None:
    add(path, "team-a")
    with pytest.raises(CallersError) as refused:
        remove(path, "team-x")
    assert str(refused.value) == f"there is no caller team-x in {path} (see `keys list`)"


# --- authenticate ---------------------------------------------------------------------------


@pytest.fixture
def known(path: Path) -> tuple[Callers, str]:
    """The callers of a file with one caller, `team-a`, and its key."""
    key = add(path, "team-a", rpm=5)
    add(path, "team-b")
    return Callers(path), key


GATEWAY_SHAPED = "sk-" + "Z" * 48
UNKNOWN = "ck_" + "Q" * 43


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, "no caller key: send the header Authorization: Bearer", id="missing"),
        pytest.param("", "no caller key", id="empty"),
        pytest.param("Basic dGVhbTpwYXNz", "is not 'Bearer ck_...'", id="basic"),
        pytest.param("Bearer", "is not 'Bearer ck_...'", id="bearer-alone"),
        pytest.param("Bearer hello", "is not 'Bearer ck_...'", id="not-ck"),
        pytest.param(f"Bearer {GATEWAY_SHAPED}", "the gateway's API key", id="gateway-key"),
        pytest.param(GATEWAY_SHAPED, "is not 'Bearer ck_...'", id="no-scheme"),
        pytest.param("Bearer ck_short", "is not 'Bearer ck_...'", id="truncated"),
        pytest.param(f"Bearer {UNKNOWN}", "unknown or was revoked", id="unknown"),
        pytest.param(f"Token {UNKNOWN}", "is not 'Bearer ck_...'", id="other-scheme"),
    ],
)
def test_refused_callers_get_401_naming_what_to_send(
    known: tuple[Callers, str], header: str | None, expected: str
) -> None:
    who, _ = known
    with pytest.raises(GatewayError) as refused:
        who.authenticate(header)
    error = refused.value
    assert error.category is Category.CALLER_AUTH
    assert expected in str(error)
    assert error.headers == {"WWW-Authenticate": "Bearer"}
    sent = (header or "").split()[-1:]
    if sent and len(sent[0]) > 16:  # a credential sent is never repeated back
        assert sent[0] not in f"{error} {error.upstream_message}"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Bearer {key}", id="bearer"),
        pytest.param("bearer {key}", id="lower-case-scheme"),
        pytest.param("BEARER {key}", id="upper-case-scheme"),
        pytest.param("  Bearer   {key}  ", id="extra-spaces"),
    ],
)
def test_a_valid_key_names_its_caller_and_policy(known: tuple[Callers, str], header: str) -> None:
    who, key = known
    name, caller = who.authenticate(header.format(key=key))
    assert (name, caller.rpm) == ("team-a", 5)


def test_a_key_with_a_changed_character_is_unknown(known: tuple[Callers, str]) -> None:
    who, key = known
    changed = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(GatewayError, match="unknown or was revoked"):
        who.authenticate(f"Bearer {changed}")


# --- reload ---------------------------------------------------------------------------------


def until(check: Callable[[], bool], within_s: float) -> float:
    """Seconds until `check()` holds, polled on the real clock; fails after `within_s`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within_s, f"not seen within {within_s} s"
        time.sleep(0.02)
    return time.monotonic() - start


def accepted(who: Callers, key: str) -> bool:
    try:
        who.authenticate(f"Bearer {key}")
    except GatewayError:
        return False
    return True


def test_a_key_added_by_another_writer_counts_within_2_s(path: Path) -> None:
    add(path, "team-a")
    who = Callers(path)
    key = add(path, "team-b")  # as `keys create` does, in another process
    until(lambda: accepted(who, key), within_s=2)


def test_a_revoked_key_is_refused_within_2_s(path: Path) -> None:
    key = add(path, "team-a")
    add(path, "team-b")
    who = Callers(path)
    assert accepted(who, key)
    remove(path, "team-a")
    until(lambda: not accepted(who, key), within_s=2)


BREAKAGES: dict[str, Callable[[Path], None]] = {
    "not-json": lambda path: path.write_text("{", encoding="utf-8"),
    "empty": lambda path: path.write_text("", encoding="utf-8"),
    "wrong-shape": lambda path: path.write_text('{"callers": []}', encoding="utf-8"),
    "deleted": lambda path: path.unlink(),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_file_broken_while_running_keeps_the_last_good_callers(
    path: Path,
    breakage: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(callers, "RELOAD_EVERY_S", 0.0)  # every call looks at the file
    key = add(path, "team-a")
    who = Callers(path)
    caplog.set_level(logging.INFO, logger=callers.__name__)

    BREAKAGES[breakage](path)
    for _ in range(5):
        assert accepted(who, key)

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, "one line per change, not one per request"
    assert errors[0].getMessage().startswith(f"callers file {path}")
    assert errors[0].getMessage().endswith("still serving the callers read before")
    assert "\n" not in errors[0].getMessage()

    path.unlink(missing_ok=True)
    new_key = add(path, "team-b")  # repaired: read again, and only what it holds counts
    assert accepted(who, new_key)
    assert not accepted(who, key)


def test_a_file_refused_for_its_mode_counts_once_its_mode_is_fixed(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An editor saves the file 0644: refused, logged; the operator runs the chmod it names."""
    monkeypatch.setattr(callers, "RELOAD_EVERY_S", 0.0)
    key = add(path, "team-a")
    who = Callers(path)
    add(path, "team-b")
    path.chmod(0o644)
    with caplog.at_level(logging.ERROR, logger=callers.__name__):
        assert accepted(who, key)
        assert list(who.current()) == ["team-a"]
    assert f"run chmod 600 {path}" in caplog.text

    path.chmod(0o600)

    assert list(who.current()) == ["team-a", "team-b"]


def test_a_kubernetes_secret_update_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Secret volume swaps a `..data` symlink to a new directory; the file is a symlink."""
    monkeypatch.setattr(callers, "RELOAD_EVERY_S", 0.0)
    volume = tmp_path / "secret"
    volume.mkdir()
    for version in ("v1", "v2"):
        (volume / version).mkdir()
    key_1 = add(volume / "v1" / "callers.json", "team-a")
    key_2 = add(volume / "v2" / "callers.json", "team-b")
    for version in ("v1", "v2"):
        (volume / version / "callers.json").chmod(0o440)
    (volume / "..data").symlink_to("v1")
    (volume / "callers.json").symlink_to("..data/callers.json")
    who = Callers(volume / "callers.json")
    assert accepted(who, key_1)

    (volume / "..data_tmp").symlink_to("v2")
    (volume / "..data_tmp").replace(volume / "..data")

    assert accepted(who, key_2)
    assert not accepted(who, key_1)
