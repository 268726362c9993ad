"""The template's README and docs/: short for a newcomer, complete through docs/, never stale.

- The README is at most 150 lines and links every page of `docs/`, and every relative link of
  the README and the docs points at a file that exists.
- `mkdocs.yml`'s nav is exactly the pages of `docs/`, and `mkdocs build --strict` passes (a
  broken link or a page left out of the nav fails it).
- The README's options table and `docs/options.md`'s name every variable cookiecutter prompts
  for, and each choice's default (its first); the README's transcript counts as many prompts,
  with the Python versions in cookiecutter's order.
- The README's `--no-input` command, with the template's path for `gh:OWNER/REPO`, generates a
  project, and each `make` target of its "Try it without a key" is one of the generated
  Makefile's (whose README runs them in its own tests).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import TEMPLATE_DIR, out_dir, run_cookiecutter

README = TEMPLATE_DIR / "README.md"
DOCS = TEMPLATE_DIR / "docs"
MAX_README_LINES = 150
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def pages() -> list[str]:
    return sorted(path.name for path in DOCS.glob("*.md"))


def prompted() -> dict[str, object]:
    """The variables cookiecutter asks for, in order, with their raw values."""
    raw = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
    return {name: value for name, value in raw.items() if not name.startswith("_")}


def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_readme_is_short() -> None:
    lines = readme().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_the_readme_links_every_docs_page() -> None:
    assert {"index.md", "options.md", "contract.md", "performance.md"} <= set(pages())
    linked = set(LINK.findall(readme()))
    missing = [page for page in pages() if f"docs/{page}" not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_every_relative_link_points_at_a_file() -> None:
    for document in [README, *DOCS.glob("*.md")]:
        for target in LINK.findall(document.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (document.parent / target).exists(), f"{document.name}: {target}"


def test_the_mkdocs_nav_is_the_docs_pages() -> None:
    config = (TEMPLATE_DIR / "mkdocs.yml").read_text(encoding="utf-8")
    nav = re.findall(r"^\s+- [^:\n]+: (\S+\.md)$", config, re.MULTILINE)
    assert sorted(nav) == pages()
    assert len(nav) == len(set(nav))


def test_mkdocs_builds_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=TEMPLATE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "options" / "index.html").is_file()


def table_variables(markdown: str) -> set[str]:
    """Every `name` in the first cell of a table row."""
    found: set[str] = set()
    for line in markdown.splitlines():
        if line.startswith("| `"):
            found.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return found


def test_the_options_tables_name_every_prompted_variable() -> None:
    options = (DOCS / "options.md").read_text(encoding="utf-8")
    for where, text in (("README.md", readme()), ("docs/options.md", options)):
        missing = set(prompted()) - table_variables(text)
        assert not missing, f"{where}'s options table misses {sorted(missing)}"


def test_the_options_tables_give_each_choice_its_default() -> None:
    """The first choice is what Enter and `--no-input` take: both tables say so."""
    options = (DOCS / "options.md").read_text(encoding="utf-8")
    for where, text in (("README.md", readme()), ("docs/options.md", options)):
        rows = {
            row.split("|")[1].strip(): row.split("|")[2]
            for row in text.splitlines()
            if row.startswith("| `")
        }
        for name, value in prompted().items():
            if isinstance(value, list):
                assert f"`{value[0]}`" in rows[f"`{name}`"], (
                    f"{where}: {name} defaults to {value[0]}"
                )


def test_the_readme_transcript_matches_the_prompts() -> None:
    transcript = re.search(r"```text\n(.*?)```", readme(), re.DOTALL)
    assert transcript, "README.md: the prompts' transcript (a ```text block) is missing"
    counts = {int(total) for total in re.findall(r"\[\d+/(\d+)\]", transcript.group(1))}
    assert counts == {len(prompted())}
    numbered = re.findall(r"^ +\d+ - (\S+)$", transcript.group(1), re.MULTILINE)
    versions = [value for value in numbered if re.fullmatch(r"3\.\d+", value)]
    assert versions == prompted()["python_version"]


def test_the_readme_no_input_command_generates_a_project(tmp_path: Path) -> None:
    command = re.search(r"`cookiecutter --no-input gh:OWNER/REPO ([^`]*)`", readme())
    assert command, "README.md: the --no-input example is missing"
    done = run_cookiecutter(tmp_path, ["--no-input"], command.group(1).split())
    assert done.returncode == 0, done.stderr
    assert (out_dir(tmp_path) / "alltkn-service" / "pyproject.toml").is_file()


def test_the_readme_try_it_targets_are_the_generated_makefiles() -> None:
    section = readme().split("## Try it without a key", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README.md: the try-it commands are missing"
    targets = re.findall(r"^make ([\w-]+)", block.group(1), re.MULTILINE)
    assert targets == ["dev", "fake", "try"]
    makefile = (TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "Makefile").read_text("utf-8")
    for target in targets:
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"no make {target}"
