"""The template's generation-time secret scanner (`hooks/alltkn_hooks/secret_scan.py`): the
detection rules the answers and the generated files are checked with.

Key-shaped values are generated here at run time from a seeded generator; the repository
holds no real-looking key.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import SCANNER_PATH, TEMPLATE_DIR

_RNG = random.Random(4)  # test data, not crypto
ALNUM = string.ascii_letters + string.digits
HEXDIGITS = "0123456789abcdef"
B64 = string.ascii_letters + string.digits + "+/"
_STAND_IN = re.compile(r"your|fake|x{4}|example|dummy|sample|redacted|change", re.IGNORECASE)


def rand(length: int, alphabet: str = ALNUM) -> str:
    """Random text; from ALNUM it always mixes upper case, lower case and digits, and it never
    contains a word the scanner reads as a stand-in."""
    while True:
        value = "".join(_RNG.choices(alphabet, k=length))
        mixed = alphabet != ALNUM or (
            any(c.isupper() for c in value)
            and any(c.islower() for c in value)
            and any(c.isdigit() for c in value)
        )
        if mixed and not _STAND_IN.search(value):
            return value


def b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


SK = "sk-"
KEY = SK + rand(48)
KEY_32 = SK + rand(32)
KEY_64 = SK + rand(64)
KEY_SUFFIXED = SK + rand(48) + "-2"
PROJ_KEY = SK + "proj-" + rand(40) + "_" + rand(20)
SVCACCT_KEY = SK + "svcacct-" + rand(60)
ADMIN_KEY = SK + "admin-" + rand(50)
LEGACY_KEY = SK + rand(20) + "T3BlbkFJ" + rand(20)
AWS_ID = "AKIA" + rand(16, string.ascii_uppercase + string.digits)
AWS_TEMP_ID = "ASIA" + rand(16, string.ascii_uppercase + string.digits)
GH_PAT = "ghp_" + rand(36)
GH_OAUTH = "gho_" + rand(36)
GH_SERVER = "ghs_" + rand(36)
GH_FINE = "github_pat_" + rand(22) + "_" + rand(59)
GL_PAT = "glpat-" + rand(20)
GL_TRIGGER = "glptt-" + rand(40, HEXDIGITS)
SLACK_BOT = f"xoxb-{rand(12, string.digits)}-{rand(13, string.digits)}-{rand(24)}"
SLACK_USER = f"xoxp-{rand(12, string.digits)}-{rand(12, string.digits)}-{rand(32, HEXDIGITS)}"
SLACK_APP = f"xapp-1-A{rand(10, string.ascii_uppercase + string.digits)}-{rand(13, string.digits)}"
SLACK_HOOK = (
    "https://hooks.slack.com/services/"
    f"T{rand(8, string.ascii_uppercase)}/B{rand(8, string.ascii_uppercase)}/{rand(24)}"
)
JWT = ".".join(
    [b64url({"alg": "HS256", "typ": "JWT"}), b64url({"sub": rand(10), "iat": 1700000000}), rand(43)]
)
TOKEN = rand(32)
TOKEN_12 = rand(12)
SECRET = rand(24)
PASSWORD = rand(14)
HEX = rand(40, HEXDIGITS)
BEARER = "Authorization: Bearer "
PEM = "-----BEGIN {}PRIVATE KEY-----"
PEM_PGP = PEM.format("PGP ").replace("KEY", "KEY BLOCK")

# (line, kind, value that must be found): every detector, in the places keys end up.
SHOULD_FLAG = [
    pytest.param(f"key is {KEY}", "gateway_key", KEY, id="gateway-bare"),
    pytest.param(f"key is {KEY_32}.", "gateway_key", KEY_32, id="gateway-32-chars"),
    pytest.param(f"({KEY_64})", "gateway_key", KEY_64, id="gateway-64-chars"),
    pytest.param(f"key {KEY_SUFFIXED}", "gateway_key", KEY_SUFFIXED, id="gateway-digit-suffix"),
    pytest.param(f'api_key = "{KEY}"', "gateway_key", KEY, id="gateway-python-once"),
    pytest.param(f"ALLTKN_API_KEY={KEY}", "gateway_key", KEY, id="gateway-env-file"),
    pytest.param(f'{{"api_key": "{KEY}"}}', "gateway_key", KEY, id="gateway-json"),
    pytest.param(f"  api_key: {KEY}", "gateway_key", KEY, id="gateway-yaml"),
    pytest.param(f"{BEARER}{KEY}", "gateway_key", KEY, id="gateway-as-bearer-once"),
    pytest.param(
        f'curl https://api.alltkn.com/api/v1/models -H "{BEARER}{KEY}"',
        "gateway_key",
        KEY,
        id="gateway-curl-doc-line",
    ),
    pytest.param(f"https://x/api?key={KEY}&a=1", "gateway_key", KEY, id="gateway-in-query"),
    pytest.param(f"key is {PROJ_KEY}.", "openai_key", PROJ_KEY, id="openai-project"),
    pytest.param(f"OPENAI_API_KEY={SVCACCT_KEY}", "openai_key", SVCACCT_KEY, id="openai-svcacct"),
    pytest.param(f"'{ADMIN_KEY}'", "openai_key", ADMIN_KEY, id="openai-admin"),
    pytest.param(f"old = {LEGACY_KEY}", "openai_key", LEGACY_KEY, id="openai-t3blbkfj-marker"),
    pytest.param(f"id {AWS_ID}", "aws_access_key_id", AWS_ID, id="aws-akia"),
    pytest.param(
        f"aws_access_key_id = {AWS_TEMP_ID}", "aws_access_key_id", AWS_TEMP_ID, id="aws-asia-ini"
    ),
    pytest.param(f"GH_TOKEN={GH_PAT}", "github_token", GH_PAT, id="github-classic-pat"),
    pytest.param(f"token: {GH_OAUTH}", "github_token", GH_OAUTH, id="github-oauth"),
    pytest.param(f'"{GH_SERVER}"', "github_token", GH_SERVER, id="github-app-server"),
    pytest.param(f"pat {GH_FINE}", "github_token", GH_FINE, id="github-fine-grained"),
    pytest.param(f"CI_TOKEN={GL_PAT}", "gitlab_token", GL_PAT, id="gitlab-pat"),
    pytest.param(f"trigger {GL_TRIGGER}", "gitlab_token", GL_TRIGGER, id="gitlab-trigger"),
    pytest.param(f"SLACK_BOT_TOKEN={SLACK_BOT}", "slack_token", SLACK_BOT, id="slack-bot"),
    pytest.param(f"user token {SLACK_USER}", "slack_token", SLACK_USER, id="slack-user"),
    pytest.param(f"app: {SLACK_APP}", "slack_token", SLACK_APP, id="slack-app-level"),
    pytest.param(f"url: {SLACK_HOOK}", "slack_webhook", SLACK_HOOK, id="slack-webhook"),
    pytest.param(f"jwt = {JWT}", "jwt", JWT, id="jwt-assignment"),
    pytest.param(f"{BEARER}{JWT}", "jwt", JWT, id="jwt-as-bearer"),
    pytest.param(PEM.format("RSA "), "private_key", PEM.format("RSA "), id="pem-rsa"),
    pytest.param(PEM.format(""), "private_key", PEM.format(""), id="pem-pkcs8"),
    pytest.param(PEM.format("OPENSSH "), "private_key", PEM.format("OPENSSH "), id="pem-openssh"),
    pytest.param(PEM.format("EC "), "private_key", PEM.format("EC "), id="pem-ec"),
    pytest.param(
        PEM.format("ENCRYPTED "), "private_key", PEM.format("ENCRYPTED "), id="pem-encrypted"
    ),
    pytest.param(PEM_PGP, "private_key", PEM_PGP, id="pem-pgp-block"),
    pytest.param(
        f"DATABASE_URL=postgres://app:{PASSWORD}@db:5432/app",
        "url_password",
        PASSWORD,
        id="url-password-postgres",
    ),
    pytest.param(
        f"base_url: https://ops:{PASSWORD}@api.alltkn.com/api/v1",
        "url_password",
        PASSWORD,
        id="url-password-https",
    ),
    pytest.param(f"{BEARER}{TOKEN}", "bearer_token", TOKEN, id="bearer-header"),
    pytest.param(f"{BEARER}{TOKEN_12}", "bearer_token", TOKEN_12, id="bearer-12-chars"),
    pytest.param(
        f"curl -H '{BEARER}{TOKEN}' https://api.alltkn.com/api/v1/models",
        "bearer_token",
        TOKEN,
        id="bearer-curl-single-quotes",
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
    pytest.param(
        f'curl -H "X-Api-Key: {SECRET}" https://h', "secret_assignment", SECRET, id="assign-header"
    ),
]

UUID = "c9bf9e57-1685-4c89-bafb-ff5af830be8a"
SHA256 = rand(64, HEXDIGITS)
SHA512_B64 = rand(86, B64)
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAA" + rand(400, B64) + "=="

SHOULD_NOT_FLAG = [
    pytest.param("", id="empty"),
    pytest.param(f'"id": "{UUID}",', id="uuid-json-id"),
    pytest.param(f"request_id = {UUID}", id="uuid-request-id"),
    pytest.param(f"X-Request-ID: {UUID}", id="uuid-header"),
    pytest.param(f'hash = "sha256:{SHA256}"', id="lockfile-uv-poetry-hash"),
    pytest.param(f'"integrity": "sha512-{SHA512_B64}==",', id="lockfile-npm-integrity"),
    pytest.param(f"openai==3.57.0 --hash=sha256:{SHA256}", id="lockfile-pip-hash"),
    pytest.param(f"image: python@sha256:{SHA256}", id="docker-digest"),
    pytest.param(f"- uses: actions/checkout@{HEX} # v6.0.1", id="pinned-action-sha"),
    pytest.param(f"See https://github.com/org/repo/commit/{HEX}", id="commit-link"),
    pytest.param(f"![logo](data:image/png;base64,{PNG_B64})", id="markdown-base64-image"),
    pytest.param("import sklearn  # pip install scikit-learn", id="sklearn-import"),
    pytest.param("sk-learn-compatible-estimator-wrapper-for-pipelines", id="sk-learn-style-name"),
    pytest.param(f"{SK}{rand(31)}", id="sk-31-chars-too-short"),
    pytest.param(f"the risk-{rand(40)} and desk-{rand(40)}", id="sk-inside-a-word"),
    pytest.param(SK + "x" * 48, id="sk-placeholder-xxxx"),
    pytest.param(SK + "...", id="sk-placeholder-dots"),
    pytest.param(SK + "your" + rand(44), id="sk-placeholder-your"),
    pytest.param(SK + "a" * 48, id="sk-one-repeated-char"),
    pytest.param("ALLTKN_API_KEY: ${{ secrets.ALLTKN_API_KEY }}", id="gha-secrets-expression"),
    pytest.param("ALLTKN_API_KEY=", id="env-example-empty-value"),
    pytest.param("api_key: <your-alltkn-api-key>", id="placeholder-angle"),
    pytest.param('api_key = os.environ["ALLTKN_API_KEY"]', id="os-environ-subscript"),
    pytest.param('api_key = os.getenv("ALLTKN_API_KEY")', id="os-getenv"),
    pytest.param("SECRET_KEY = os.environ['SECRET_KEY']", id="os-environ-same-name"),
    pytest.param("api_key=settings.api_key.get_secret_value()", id="call-chain"),
    pytest.param("token = self.settings.gateway_token", id="dotted-name"),
    pytest.param("api_key: SecretStr = Field(validation_alias=ENV)", id="annotation"),
    pytest.param("self.first_token_delay = first_token_delay", id="identifier-words"),
    pytest.param('"OPENAI_API_KEY": "decoy-openai-key-value",', id="word-decoy"),
    pytest.param("ALLTKN_API_KEY_ENV = ALLTKN_API_KEY_NAME_X", id="env-var-name-value"),
    pytest.param("api_key = ${ALLTKN_API_KEY_FROM_VAULT}", id="dollar-brace"),
    pytest.param("API_KEY=$ALLTKN_API_KEY_PRODUCTION", id="dollar-var"),
    pytest.param("password = changeme-changeme-42", id="placeholder-changeme"),
    pytest.param("api_key = 'example-Key-1234567890'", id="placeholder-example"),
    pytest.param("secret = XXXXXXXXXXXXXXXXXXXXXXXX", id="placeholder-upper-xxxx"),
    pytest.param(f"API_TOKEN={rand(15)}", id="assign-too-short"),
    pytest.param("password = aaaaaaaaaaaaaaaaaaaaaaaa", id="assign-low-entropy"),
    pytest.param("password = 'abababababababababab'", id="assign-low-entropy-2"),
    pytest.param("key_file = /etc/ssl/private/server-key.pem", id="file-path"),
    pytest.param("token_url = https://login.alltkn.com/oauth2/v2.0/token", id="url-value"),
    pytest.param('key_owner: "the platform team"', id="prose"),
    pytest.param('"max_tokens": 4096, "completion_tokens": 6', id="token-counts"),
    pytest.param(f"if token == {SECRET}:", id="comparison-not-assignment"),
    pytest.param(f"description = {SECRET}", id="unrelated-name"),
    pytest.param("AKIAIOSFODNN7EXAMPLE", id="aws-documentation-example"),
    pytest.param("ghp_" + "x" * 36, id="github-placeholder"),
    pytest.param("xoxb-your-bot-token-here", id="slack-placeholder"),
    pytest.param(b64url({"alg": "HS256"}) + ".", id="jwt-header-only"),
    pytest.param("postgres://app@db:5432/app", id="url-without-password"),
    pytest.param("postgres://app:${DB_PASSWORD}@db:5432/app", id="url-password-env-ref"),
    pytest.param(BEARER + rand(11), id="bearer-too-short"),
    pytest.param(BEARER + "$ALLTKN_API_KEY", id="bearer-shell-var"),
    pytest.param(BEARER + "${ALLTKN_API_KEY}", id="bearer-shell-brace-var"),
    pytest.param(BEARER + "<your-alltkn-key>", id="bearer-angle-placeholder"),
    pytest.param('f"Bearer {settings.api_key.get_secret_value()}"', id="bearer-f-string"),
    pytest.param('"Authorization": "Bearer " + token', id="bearer-concatenation"),
    pytest.param('curl -H "Authorization: Bearer $(cat key.txt)"', id="bearer-command-subst"),
    pytest.param("-----BEGIN PUBLIC KEY-----", id="pem-public-key"),
    pytest.param("-----BEGIN CERTIFICATE-----", id="pem-certificate"),
    pytest.param("color: #1f2937; background: #ffffff;", id="css-colors"),
    pytest.param(f'token = "{SECRET}"  # secret-scan: allow', id="pragma-allow"),
    pytest.param(f"{KEY}  <!-- secret-scan: allow -->", id="pragma-allow-html"),
]


def test_corpora_are_large_and_cover_every_detector(scanner: ModuleType) -> None:
    kinds = {param.values[1] for param in SHOULD_FLAG}

    assert len(SHOULD_FLAG) >= 40
    assert len(SHOULD_NOT_FLAG) >= 40
    assert kinds == {rule.kind for rule in scanner.RULES}


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
        (4, "gateway_key", KEY),
    ]


def test_literal_that_is_an_sk_key_is_reported_once(scanner: ModuleType) -> None:
    findings = scanner.scan_text(f"api_key={KEY}", literals=[KEY])

    assert [(f.kind, f.value) for f in findings] == [("env_value", KEY)]


def test_one_finding_per_value_on_a_line(scanner: ModuleType) -> None:
    findings = scanner.scan_text(f"{KEY} {KEY} {KEY_32}")

    assert [f.value for f in findings] == [KEY, KEY_32]


def test_several_lines_keep_their_numbers(scanner: ModuleType) -> None:
    text = f"{KEY}\n\n{BEARER}{TOKEN}\r\npassword={SECRET}\n{GH_PAT}"

    assert [(f.line, f.kind) for f in scanner.scan_text(text)] == [
        (1, "gateway_key"),
        (3, "bearer_token"),
        (4, "secret_assignment"),
        (5, "github_token"),
    ]


def test_the_pragma_skips_only_its_own_line(scanner: ModuleType) -> None:
    text = f"{KEY}  # secret-scan: allow\n{KEY_32}\n"

    assert [(f.line, f.value) for f in scanner.scan_text(text)] == [(2, KEY_32)]


def test_no_pattern_crosses_a_line_break(scanner: ModuleType) -> None:
    text = f"password =\n{SECRET}\nAuthorization: Bearer\n{TOKEN}\n"

    assert scanner.scan_text(text) == []


def test_rules_are_a_table_of_named_detectors(scanner: ModuleType) -> None:
    kinds = [rule.kind for rule in scanner.RULES]

    assert kinds[0] == "private_key"
    assert kinds[-2:] == ["bearer_token", "secret_assignment"]
    assert len(set(kinds)) == len(kinds)
    assert all(isinstance(rule.pattern, re.Pattern) for rule in scanner.RULES)


# --- answers: one short value each -----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(rand(20), id="opaque-20-mixed"),
        pytest.param(rand(40), id="opaque-40-mixed"),
        pytest.param(rand(32, HEXDIGITS), id="opaque-32-hex"),
        pytest.param(f"team {rand(24)}", id="opaque-inside-text"),
    ],
)
def test_answer_rules_also_flag_a_lone_opaque_token(scanner: ModuleType, value: str) -> None:
    assert scanner.scan_text(value) == []
    assert [f.kind for f in scanner.scan_text(value, rules=scanner.ANSWER_RULES)] == [
        "opaque_token"
    ]


@pytest.mark.parametrize(
    "value",
    [
        "meta-llama/Llama-3.1-70B-Instruct-Turbo",
        "claude-3-5-sonnet-20241022",
        "Qwen2.5-72B-Instruct",
        "https://api.alltkn.com/api/v1",
        "A Python service wired to the ALLTKN AI API gateway.",
        "the service's on-call engineers",
        "ALLTKN_API_KEY",
        "alltkn_service",
        "20240101120000",
    ],
)
def test_answer_rules_accept_ordinary_answers(scanner: ModuleType, value: str) -> None:
    assert scanner.scan_text(value, rules=scanner.ANSWER_RULES) == []


# --- environment values ----------------------------------------------------------------------


def test_secret_env_values_takes_secret_names_and_secret_looking_values(
    scanner: ModuleType,
) -> None:
    environ = {
        "ALLTKN_API_KEY": KEY,
        "GITHUB_TOKEN": GH_PAT,
        "DB_PASSWORD": PASSWORD,
        "aws_secret_access_key": SECRET,
        "HOME": "/root/somewhere/deep",
        "SHORT_KEY": "1234567",
        "KEY_NAME": "ALLTKN_API_KEY",
        "KEY_OWNER": "the platform team",
        "KEYRING_BACKEND": "keyring.backends.null.Keyring",
        "TOKEN_FILE": "/run/secrets/token",
        "SAMPLE_TOKEN": "<your-token>",
        "OPENAI_API_KEY": "decoy-openai-key-value",
    }

    assert sorted(scanner.secret_env_values(environ)) == sorted([KEY, GH_PAT, PASSWORD, SECRET])


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

    assert str(finding) == f"src/app.py:1: gateway_key: ****{KEY[-4:]}"
    assert finding.masked == "****" + KEY[-4:]
    for shown in (str(finding), repr(finding), f"{finding}", f"{finding!r}"):
        assert KEY not in shown
        assert KEY[:-4] not in shown
    assert "value" not in repr(finding)


def test_finding_is_frozen(scanner: ModuleType) -> None:
    finding = scanner.Finding("p", 1, "gateway_key", KEY)

    with pytest.raises(AttributeError):
        finding.value = "other"  # type: ignore[misc]


# --- files: what the post-gen hook scans ------------------------------------------------------


def scan_tree(scanner: ModuleType, root: Path, literals: list[str] | None = None) -> list[Any]:
    """Every file below `root`, as the post-gen hook scans a fresh project."""
    return scanner.scan_files(root, scanner.iter_files(root), literals=literals or [])


def write(root: Path, relative: str, content: str | bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def test_scan_tree_skips_any_virtualenv_by_its_pyvenv_cfg(
    scanner: ModuleType, tmp_path: Path
) -> None:
    write(tmp_path, ".venv-tools/pyvenv.cfg", "home = /usr/bin\n")
    write(tmp_path, ".venv-tools/lib/site-packages/pkg/METADATA", f"{KEY}\n")
    write(tmp_path, "env-named-like-code/app.py", f"{KEY}\n")

    findings = scan_tree(scanner, tmp_path)

    assert [(f.path, f.kind) for f in findings] == [("env-named-like-code/app.py", "gateway_key")]


def test_scan_tree_reports_relative_posix_paths_in_order(
    scanner: ModuleType, tmp_path: Path
) -> None:
    write(tmp_path, "z.txt", f"{KEY}\n")
    write(tmp_path, "a/b/c.env", f"\nAPI_TOKEN={SECRET}\n")
    write(tmp_path, "a/a.md", f"{BEARER}{TOKEN}\n")
    write(tmp_path, "clean.py", "print('hello')\n")

    findings = scan_tree(scanner, tmp_path)

    assert [(f.path, f.line, f.kind) for f in findings] == [
        ("a/a.md", 1, "bearer_token"),
        ("a/b/c.env", 2, "secret_assignment"),
        ("z.txt", 1, "gateway_key"),
    ]
    assert findings == scan_tree(scanner, tmp_path)  # deterministic


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

    assert scan_tree(scanner, tmp_path) == []


def test_scan_tree_skips_binary_files(scanner: ModuleType, tmp_path: Path) -> None:
    write(tmp_path, "logo.png", b"\x89PNG\r\n\x1a\n\0\0" + KEY.encode())
    write(tmp_path, "late-nul.bin", KEY.encode() + b"\n" + b"a" * 9000 + b"\0")

    assert [f.path for f in scan_tree(scanner, tmp_path)] == ["late-nul.bin"]


def test_scan_tree_skips_files_over_2_mib(scanner: ModuleType, tmp_path: Path) -> None:
    filler = "# filler line\n" * (2 * 1024 * 1024 // 14 + 1)
    write(tmp_path, "big.txt", KEY + "\n" + filler)
    write(tmp_path, "small.txt", KEY + "\n")

    assert [f.path for f in scan_tree(scanner, tmp_path)] == ["small.txt"]


def test_scan_tree_survives_undecodable_text(scanner: ModuleType, tmp_path: Path) -> None:
    write(tmp_path, "latin1.txt", b"caf\xe9 " + KEY.encode() + b"\n")

    assert [f.kind for f in scan_tree(scanner, tmp_path)] == ["gateway_key"]


def test_scan_tree_with_literals(scanner: ModuleType, tmp_path: Path) -> None:
    live = rand(20)
    write(tmp_path, "docs/owner.md", f"Owner: {live}\n")

    findings = scan_tree(scanner, tmp_path, literals=[live])

    assert [(f.path, f.kind, f.value) for f in findings] == [("docs/owner.md", "env_value", live)]


def test_long_lines_scan_quickly(scanner: ModuleType) -> None:
    # A minified or base64 line must not make any pattern backtrack quadratically.
    line = "a" * 1_000_000 + "=" + "b.c" * 100_000 + " sk-" + "A1" * 50_000

    assert [f.kind for f in scanner.scan_text(line)] == []


# --- the file itself, and the template it lives in ------------------------------------------


def test_scanner_source_is_clean_under_its_own_scan(scanner: ModuleType) -> None:
    source = SCANNER_PATH.read_text(encoding="utf-8")

    assert scanner.scan_text(source) == []


def test_the_template_repository_passes_the_scan(scanner: ModuleType) -> None:
    findings = scan_tree(scanner, TEMPLATE_DIR)

    assert [str(finding) for finding in findings] == []


def bake(cookies: Any, **answers: str) -> Path:
    result = cookies.bake(extra_context=answers)
    assert result.exit_code == 0, result.exception
    return Path(str(result.project_path))


def test_no_generated_file_keeps_the_answers(cookies: Any) -> None:
    marker = "billing-" + rand(12, string.ascii_lowercase)
    project = bake(cookies, framework="fastapi", billing_group=marker)

    holders = [
        path.relative_to(project).as_posix()
        for path in project.rglob("*")
        if path.is_file() and marker in path.read_text(encoding="utf-8")
    ]

    # where the answer belongs, and the answers file `cruft update` regenerates from
    assert sorted(holders) == [".cruft.json", "docs/CHECKLIST.md", "docs/TROUBLESHOOTING.md"]


def test_scanner_uses_only_the_standard_library() -> None:
    import ast

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
