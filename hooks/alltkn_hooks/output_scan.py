"""The post-generation secret scan: every file this run wrote; on a finding, report it masked
and remove what this run created (never what was there before)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from alltkn_hooks import answer, secret_scan
from alltkn_hooks.cruft_file import CRUFT_FILE
from alltkn_hooks.manifest import Manifest, remove_created
from alltkn_hooks.secret_scan import Finding


def written_files(project_dir: Path, kept: set[str]) -> list[Path]:
    """The files this run wrote: everything the scanner would scan, less the untouched ones."""
    return [
        path
        for path in secret_scan.iter_files(project_dir)
        if path.relative_to(project_dir).as_posix() not in kept
    ]


def answers_containing(answers: Mapping[str, object], value: str) -> list[str]:
    """Names of the (public) answers whose text contains `value`."""
    return sorted(
        name
        for name, answer in answers.items()
        if not name.startswith("_") and isinstance(answer, str) and value in answer
    )


def finding_lines(findings: Sequence[Finding]) -> list[str]:
    return [
        f"error: secret found in generated file {f.path}:{f.line} ({f.kind}: {f.masked})"
        for f in findings
    ]


def removal_line(
    answers: Mapping[str, object], findings: Sequence[Finding], overwritten: Sequence[str]
) -> str:
    """The closing line: what was removed, what was not, and how to fix the answers."""
    names = sorted({name for f in findings for name in answers_containing(answers, f.value)})
    source = f"the answer(s) {', '.join(names)}" if names else "your answers or the template"
    outcome = "the files this run created were removed"
    if overwritten:
        outcome += (
            f"; {len(overwritten)} file(s) that existed before were overwritten and still hold "
            f"it ({', '.join(overwritten)}): restore them from version control or edit them"
        )
    key_var = answers.get("api_key_env_var", "the key environment variable")
    return (
        f"error: {outcome}. Remove the secret from {source} and generate again; "
        f"API keys belong only in the {key_var} environment variable. "
        "If it was a real key, rotate it"
    )


def fail_on_secrets(
    project_dir: Path,
    answers: Mapping[str, object],
    environ: Mapping[str, str],
    manifest: Manifest | None,
    kept: set[str],
) -> list[str]:
    """Scan what this run wrote; on findings remove what it created and return the error
    lines, else []."""
    live = secret_scan.live_values(answer(answers, "api_key_env_var"), environ)
    # .cruft.json repeats the answers: report a secret where the template put it first.
    files = sorted(written_files(project_dir, kept), key=lambda p: p.name == CRUFT_FILE)
    findings = secret_scan.scan_files(project_dir, files, literals=live)
    if not findings:
        return []
    before = manifest.files if manifest else {}
    overwritten = sorted({f.path for f in findings if f.path in before})
    remove_created(project_dir, manifest)
    return [*finding_lines(findings), removal_line(answers, findings, overwritten)]
