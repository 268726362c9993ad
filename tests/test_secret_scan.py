"""The generated project's secret scanner, imported straight from the template.

Key-shaped values are generated here at run time from a seeded generator; the repository
holds no real-looking key.
"""

from __future__ import annotations

import random
import re
import string
from pathlib import Path
from types import ModuleType

import pytest
from conftest import SCANNER_PATH

_RNG = random.Random(4)  # test data, not crypto
ALNUM = string.ascii_letters + string.digits


def rand(length: int, alphabet: str = ALNUM) -> str:
    """Random text that always mixes upper case, lower case and digits."""
    while True:
        value = "".join(_RNG.choices(alphabet, k=length))
        if alphabet != ALNUM or (
            any(c.isupper() for c in value)
            and any(c.islower() for c in value)
            and any(c.isdigit() for c in value)
        ):
            return value


SK = "sk-"
KEY = SK + rand(48)
PROJ_KEY = SK + "proj-" + rand(40) + "_" + rand(20)
SHORT_KEY = SK + rand(20)
TOKEN = rand(32)
TOKEN_12 = rand(12)
SECRET = rand(24)
HEX = rand(40, "0123456789abcdef")
BEARER = "Authorization: Bearer "
PEM = "-----BEGIN {}PRIVATE KEY-----"

# (line, kind, value that must be found)
SHOULD_FLAG = [
    pytest.param(f"key is {KEY}", "api_key", KEY, id="sk-key-bare"),
    pytest.param(f"key is {PROJ_KEY}.", "api_key", PROJ_KEY, id="sk-project-key-with-dash-under"),
    pytest.param(f"x({SHORT_KEY})", "api_key", SHORT_KEY, id="sk-key-20-chars"),
    pytest.param(f'api_key = "{KEY}"', "api_key", KEY, id="sk-key-in-assignment-once"),
    pytest.param(f"{BEARER}{KEY}", "api_key", KEY, id="sk-key-as-bearer-once"),
    pytest.param(f"{BEARER}{TOKEN}", "bearer_token", TOKEN, id="bearer-header"),
    pytest.param(f"{BEARER}{TOKEN_12}", "bearer_token", TOKEN_12, id="bearer-12-chars"),
    pytest.param(
        f'curl -H "{BEARER}{TOKEN}" https://api.alltkn.com/api/v1/models',
        "bearer_token",
        TOKEN,
        id="bearer-curl",
    ),
    pytest.param(
        f'h = {{"Authorization": "Bearer {TOKEN}"}}', "bearer_token", TOKEN, id="bearer-dict"
    ),
    pytest.param(
        f"headers['Authorization'] = 'Bearer {TOKEN}'", "bearer_token", TOKEN, id="bearer-subscript"
    ),
    pytest.param(f"authorization: bearer {TOKEN}", "bearer_token", TOKEN, id="bearer-lowercase"),
    pytest.param(f"API_TOKEN={SECRET}", "secret_assignment", SECRET, id="assign-env-file"),
    pytest.param(f"export DB_PASSWORD={SECRET}", "secret_assignment", SECRET, id="assign-export"),
    pytest.param(f'password = "{SECRET}"', "secret_assignment", SECRET, id="assign-python-dq"),
    pytest.param(f"secret_key = '{SECRET}'", "secret_assignment", SECRET, id="assign-python-sq"),
    pytest.param(f"client_secret: {SECRET}", "secret_assignment", SECRET, id="assign-yaml"),
    pytest.param(f'  access_token: "{SECRET}"', "secret_assignment", SECRET, id="assign-yaml-q"),
    pytest.param(f'api_key = "{SECRET}"', "secret_assignment", SECRET, id="assign-toml"),
    pytest.param(f'{{"apiKey": "{SECRET}"}}', "secret_assignment", SECRET, id="assign-json-camel"),
    pytest.param(f'{{"private_key_id":"{HEX}"}}', "secret_assignment", HEX, id="assign-json-hex"),
    pytest.param(
        f"Settings(token={SECRET})", "secret_assignment", SECRET, id="assign-kwarg-unquoted"
    ),
    pytest.param(
        f'os.environ["GITHUB_TOKEN"] = "{SECRET}"',
        "secret_assignment",
        SECRET,
        id="assign-environ-subscript",
    ),
    pytest.param(f"creds: {{token: {SECRET}}}", "secret_assignment", SECRET, id="assign-yaml-flow"),
    pytest.param(f"auth.password := {SECRET}", "secret_assignment", SECRET, id="assign-walrus"),
    pytest.param(PEM.format("RSA "), "private_key", PEM.format("RSA "), id="pem-rsa"),
    pytest.param(PEM.format(""), "private_key", PEM.format(""), id="pem-pkcs8"),
    pytest.param(PEM.format("OPENSSH "), "private_key", PEM.format("OPENSSH "), id="pem-openssh"),
    pytest.param(
        PEM.format("ENCRYPTED "), "private_key", PEM.format("ENCRYPTED "), id="pem-encrypted"
    ),
]

SHOULD_NOT_FLAG = [
    pytest.param("", id="empty"),
    pytest.param(f"{SK}{rand(19)}", id="sk-key-too-short"),
    pytest.param(f"the risk-{rand(30, string.ascii_lowercase)}", id="sk-inside-a-word"),
    pytest.param(SK + "x" * 40, id="sk-placeholder-xxxx"),
    pytest.param(SK + "your-key-goes-here-please", id="sk-placeholder-your"),
    pytest.param(SK + "example" + rand(20), id="sk-placeholder-example"),
    pytest.param(BEARER + rand(11), id="bearer-too-short"),
    pytest.param(BEARER + "$ALLTKN_API_KEY", id="bearer-shell-var"),
    pytest.param(BEARER + "${ALLTKN_API_KEY}", id="bearer-shell-brace-var"),
    pytest.param(BEARER + "<your-alltkn-key>", id="bearer-angle-placeholder"),
    pytest.param('f"Bearer {settings.api_key.get_secret_value()}"', id="bearer-f-string"),
    pytest.param('"Authorization": "Bearer " + token', id="bearer-concatenation"),
    pytest.param('curl -H "Authorization: Bearer $(cat key.txt)"', id="bearer-command-subst"),
    pytest.param(BEARER + "xxxxxxxxxxxxxxxxxxxx", id="bearer-xxxx"),
    pytest.param(f"API_TOKEN={rand(15)}", id="assign-too-short"),
    pytest.param("password = aaaaaaaaaaaaaaaaaaaaaaaa", id="assign-low-entropy"),
    pytest.param("password = 'abababababababababab'", id="assign-low-entropy-2"),
    pytest.param("api_key: <your-alltkn-api-key>", id="assign-angle-placeholder"),
    pytest.param("api_key = ${ALLTKN_API_KEY_FROM_VAULT}", id="assign-dollar-brace"),
    pytest.param("token: " + "{" * 2 + " secrets.ALLTKN_TOKEN " + "}" * 2, id="assign-jinja"),
    pytest.param("API_KEY=$ALLTKN_API_KEY_PRODUCTION", id="assign-dollar-var"),
    pytest.param("password = changeme-changeme-42", id="assign-changeme"),
    pytest.param('api_key = "your-api-key-here-1234"', id="assign-your"),
    pytest.param("api_key = 'example-Key-1234567890'", id="assign-example"),
    pytest.param("secret = XXXXXXXXXXXXXXXXXXXXXXXX", id="assign-upper-xxxx"),
    pytest.param("ALLTKN_API_KEY_ENV = ALLTKN_API_KEY_NAME_X", id="assign-env-var-name"),
    pytest.param('api_key = os.environ["ALLTKN_API_KEY"]', id="assign-os-environ"),
    pytest.param('api_key = os.getenv("ALLTKN_API_KEY")', id="assign-os-getenv"),
    pytest.param("api_key=settings.api_key.get_secret_value()", id="assign-call-chain"),
    pytest.param("token = self.settings.gateway_token", id="assign-dotted-name"),
    pytest.param("api_key: SecretStr = Field(validation_alias=ENV)", id="assign-annotation"),
    pytest.param("self.first_token_delay = first_token_delay", id="assign-identifier-words"),
    pytest.param('"OPENAI_API_KEY": "decoy-openai-key-value",', id="assign-word-decoy"),
    pytest.param("key_file = /etc/ssl/private/server-key.pem", id="assign-file-path"),
    pytest.param("token_url = https://login.alltkn.com/oauth2/v2.0/token", id="assign-url"),
    pytest.param('key_owner: "the platform team"', id="assign-prose"),
    pytest.param(f"if token == {SECRET}:", id="comparison-not-assignment"),
    pytest.param(f"description = {SECRET}", id="unrelated-name"),
    pytest.param("-----BEGIN PUBLIC KEY-----", id="pem-public-key"),
    pytest.param("-----BEGIN CERTIFICATE-----", id="pem-certificate"),
    pytest.param(f'token = "{SECRET}"  # secret-scan: allow', id="pragma-allow"),
    pytest.param(f"{KEY}  <!-- secret-scan: allow -->", id="pragma-allow-html"),
]


@pytest.mark.parametrize(("line", "kind", "value"), SHOULD_FLAG)
def test_should_flag(scanner: ModuleType, line: str, kind: str, value: str) -> None:
    findings = scanner.scan_text(f"first line\n{line}\n", path="f.txt")

    assert [(f.path, f.line, f.kind, f.value) for f in findings] == [("f.txt", 2, kind, value)]


@pytest.mark.parametrize("line", SHOULD_NOT_FLAG)
def test_should_not_flag(scanner: ModuleType, line: str) -> None:
    assert scanner.scan_text(line) == []


def test_literals_are_found_exactly_and_first(scanner: ModuleType) -> None:
    live = rand(30)
    text = f"a\nmodel = {live}\napi_key = '{live}'\n{KEY}\n"

    findings = scanner.scan_text(text, literals=[live, "", "short"])

    assert [(f.line, f.kind, f.value) for f in findings] == [
        (2, "env_value", live),
        (3, "env_value", live),
        (4, "api_key", KEY),
    ]


def test_literal_that_is_an_sk_key_is_reported_once(scanner: ModuleType) -> None:
    findings = scanner.scan_text(f"api_key={KEY}", literals=[KEY])

    assert [(f.kind, f.value) for f in findings] == [("env_value", KEY)]


def test_one_finding_per_value_on_a_line(scanner: ModuleType) -> None:
    findings = scanner.scan_text(f"{KEY} {KEY} {SHORT_KEY}")

    assert [f.value for f in findings] == [KEY, SHORT_KEY]


def test_several_lines_keep_their_numbers(scanner: ModuleType) -> None:
    text = f"{KEY}\n\n{BEARER}{TOKEN}\r\npassword={SECRET}\n"

    assert [(f.line, f.kind) for f in scanner.scan_text(text)] == [
        (1, "api_key"),
        (3, "bearer_token"),
        (4, "secret_assignment"),
    ]


def test_gateway_key_re_is_the_redaction_pattern(scanner: ModuleType) -> None:
    text = f"call failed for {KEY}; retry with {PROJ_KEY}"

    redacted = scanner.GATEWAY_KEY_RE.sub(lambda m: scanner.mask(m.group(0)), text)

    assert KEY not in redacted
    assert PROJ_KEY not in redacted
    assert redacted == f"call failed for ****{KEY[-4:]}; retry with ****{PROJ_KEY[-4:]}"
    assert scanner.GATEWAY_KEY_RE.fullmatch(SK + "a" * 20)
    assert not scanner.GATEWAY_KEY_RE.search(SK + "a" * 19)


def test_rules_are_a_table_of_named_detectors(scanner: ModuleType) -> None:
    kinds = [rule.kind for rule in scanner.RULES]

    assert kinds == ["private_key", "api_key", "bearer_token", "secret_assignment"]
    assert all(isinstance(rule.pattern, re.Pattern) for rule in scanner.RULES)


# --- masking ---------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 4, 7, 8, 9, 12, 16, 51, 200])
def test_mask_never_reveals_more_than_the_last_four(scanner: ModuleType, length: int) -> None:
    value = rand(length, string.ascii_lowercase) if length else ""

    masked = scanner.mask(value)

    assert masked.startswith("****")
    shown = masked[4:]
    assert len(shown) <= 4
    assert value.endswith(shown)
    if length < 8:
        assert shown == ""  # too short to show any of it


def test_finding_str_and_repr_hide_the_value(scanner: ModuleType) -> None:
    finding = scanner.scan_text(f"x = {KEY}", path="src/app.py")[0]

    assert str(finding) == f"src/app.py:1: api_key: ****{KEY[-4:]}"
    assert finding.masked == "****" + KEY[-4:]
    for shown in (str(finding), repr(finding), f"{finding}", f"{finding!r}"):
        assert KEY not in shown
        assert KEY[:-4] not in shown
    assert "value" not in repr(finding)


def test_finding_is_frozen(scanner: ModuleType) -> None:
    finding = scanner.Finding("p", 1, "api_key", KEY)

    with pytest.raises(AttributeError):
        finding.value = "other"  # type: ignore[misc]


# --- scan_tree -------------------------------------------------------------------------------


def write(root: Path, relative: str, content: str | bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def test_scan_tree_reports_relative_posix_paths_in_order(
    scanner: ModuleType, tmp_path: Path
) -> None:
    write(tmp_path, "z.txt", f"{KEY}\n")
    write(tmp_path, "a/b/c.env", f"\nAPI_TOKEN={SECRET}\n")
    write(tmp_path, "a/a.md", f"{BEARER}{TOKEN}\n")
    write(tmp_path, "clean.py", "print('hello')\n")

    findings = scanner.scan_tree(tmp_path)

    assert [(f.path, f.line, f.kind) for f in findings] == [
        ("a/a.md", 1, "bearer_token"),
        ("a/b/c.env", 2, "secret_assignment"),
        ("z.txt", 1, "api_key"),
    ]
    assert findings == scanner.scan_tree(tmp_path)  # deterministic


@pytest.mark.parametrize(
    "skipped",
    [
        ".git/config",
        ".venv/lib/site.py",
        "venv/lib/site.py",
        "src/__pycache__/m.py",
        "node_modules/pkg/index.js",
        ".mypy_cache/3.12/m.json",
        ".ruff_cache/0.6/x",
        ".pytest_cache/v/cache",
        "src/my_svc.egg-info/PKG-INFO",
        "deep/er/.git/HEAD",
    ],
)
def test_scan_tree_skips_tool_and_vcs_dirs(
    scanner: ModuleType, tmp_path: Path, skipped: str
) -> None:
    write(tmp_path, skipped, f"{KEY}\n")

    assert scanner.scan_tree(tmp_path) == []


def test_scan_tree_skips_binary_files(scanner: ModuleType, tmp_path: Path) -> None:
    write(tmp_path, "logo.png", b"\x89PNG\r\n\x1a\n\0\0" + KEY.encode())
    write(tmp_path, "late-nul.bin", KEY.encode() + b"\n" + b"a" * 9000 + b"\0")

    assert [f.path for f in scanner.scan_tree(tmp_path)] == ["late-nul.bin"]


def test_scan_tree_skips_files_over_2_mib(scanner: ModuleType, tmp_path: Path) -> None:
    filler = "# filler line\n" * (2 * 1024 * 1024 // 14 + 1)
    write(tmp_path, "big.txt", KEY + "\n" + filler)
    write(tmp_path, "small.txt", KEY + "\n")

    assert [f.path for f in scanner.scan_tree(tmp_path)] == ["small.txt"]


def test_scan_tree_survives_undecodable_text(scanner: ModuleType, tmp_path: Path) -> None:
    write(tmp_path, "latin1.txt", b"caf\xe9 " + KEY.encode() + b"\n")

    assert [f.kind for f in scanner.scan_tree(tmp_path)] == ["api_key"]


def test_scan_tree_with_literals(scanner: ModuleType, tmp_path: Path) -> None:
    live = rand(20)
    write(tmp_path, "docs/owner.md", f"Owner: {live}\n")

    findings = scanner.scan_tree(tmp_path, literals=[live])

    assert [(f.path, f.kind, f.value) for f in findings] == [("docs/owner.md", "env_value", live)]


def test_long_lines_scan_quickly(scanner: ModuleType) -> None:
    # A minified or base64 line must not make the assignment pattern backtrack quadratically.
    line = "a" * 1_000_000 + "=" + "b.c" * 100_000

    assert scanner.scan_text(line) == []


# --- main ------------------------------------------------------------------------------------


def test_main_returns_0_on_a_clean_tree(
    scanner: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "ok.py", "print('hi')\n")

    assert scanner.main([str(tmp_path)]) == 0

    out, err = capsys.readouterr()
    assert out == ""
    assert err == "secret_scan: no secrets found\n"


def test_main_reports_findings_masked_and_returns_1(
    scanner: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write(tmp_path, "src/settings.py", f"\n\nDEFAULT_KEY = '{KEY}'\n")
    write(tmp_path, ".env", f"API_TOKEN={SECRET}\n")
    monkeypatch.chdir(tmp_path)

    assert scanner.main([]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f".env:1: secret_assignment: ****{SECRET[-4:]}",
        f"src/settings.py:3: api_key: ****{KEY[-4:]}",
        (
            "secret_scan: 2 possible secret(s) in 2 file(s); remove them, "
            "or mark a deliberate fixture line with 'secret-scan: allow'"
        ),
    ]
    for value in (KEY, SECRET, KEY[:-4], SECRET[:-4]):
        assert value not in err


def test_main_adds_env_values_as_literals(
    scanner: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    live = rand(26)
    write(tmp_path, "notes.txt", f"remember {live}\nand 1234567\n")
    monkeypatch.setenv("MY_GATEWAY_KEY", live)
    monkeypatch.setenv("SHORT_ONE", "1234567")
    monkeypatch.delenv("UNSET_ONE", raising=False)

    code = scanner.main(
        ["--env", "MY_GATEWAY_KEY", "--env", "SHORT_ONE", "--env", "UNSET_ONE", str(tmp_path)]
    )

    err = capsys.readouterr().err
    assert code == 1
    assert f"notes.txt:1: env_value: ****{live[-4:]}" in err
    assert ":2:" not in err
    assert live not in err


def test_main_scans_a_single_file(
    scanner: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "one.txt", f"{KEY}\n")

    assert scanner.main([str(tmp_path / "one.txt")]) == 1
    assert f"{(tmp_path / 'one.txt').as_posix()}:1: api_key:" in capsys.readouterr().err


def test_main_rejects_a_missing_path(
    scanner: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert scanner.main([str(tmp_path / "nope")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


# --- the file itself -------------------------------------------------------------------------


def test_scanner_source_reads_the_same_through_jinja() -> None:
    # cookiecutter may render it (a _copy_without_render pattern that misses); it must not change.
    source = SCANNER_PATH.read_text(encoding="utf-8")

    assert not re.search(r"\{\{|\{%|\{#", source)


def test_scanner_source_is_clean_under_its_own_scan(scanner: ModuleType) -> None:
    source = SCANNER_PATH.read_text(encoding="utf-8")

    assert scanner.scan_text(source) == []


def test_scanner_uses_only_the_standard_library() -> None:
    import ast
    import sys

    tree = ast.parse(SCANNER_PATH.read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }

    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
