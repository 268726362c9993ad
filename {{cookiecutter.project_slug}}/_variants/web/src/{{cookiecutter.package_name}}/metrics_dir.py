"""The directory where every worker process counts, so that `/metrics` adds them all up:
prometheus_client's multiprocess mode, each process writing `<type>_<pid>.db` files that a scrape
sums (`prometheus.py`). Only counters and histograms: gauges would need its live-sum modes.

- Named before prometheus_client is imported (it picks its mode then) by the process that starts
  the workers, `serve` or gunicorn.conf.py: `PROMETHEUS_MULTIPROC_DIR`, else a private temporary
  directory, exported to the workers and removed at exit. Emptied at start: totals are per run.
  One process that lives as long as the server (`serve` with one worker) may count in memory.
- Bounded: the files of a dead process (a worker gunicorn recycles, one that crashed) are added
  into one `<type>_merged.db` per type, which the scrape reads like the others, and deleted; at
  each scrape and, under gunicorn, whenever a worker exits. A process is dead when `os.kill(pid,
  0)` says so (no /proc needed: macOS too); on Windows nothing is merged.
- Exact: merging holds an exclusive lock (`merge.lock`) that the scrape holds too while it reads,
  so no scrape sees a half-merged directory. The new merged files are written aside
  (`*.db.tmp`, which the scrape does not read); then a journal naming them and the dead files is
  renamed into place: that commits the merge. The merged files are then renamed over the old
  ones, the dead files deleted, the journal last. A merge killed before the commit leaves only
  `.tmp` files, deleted by the next one; after it, the next one finishes it from the journal. So
  every count is in exactly one file the scrape reads, whatever moment a process dies at.
  (Process deaths only: the directory does not outlive a machine's restart.)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no merging
    fcntl = None  # type: ignore[assignment]

ENV = "PROMETHEUS_MULTIPROC_DIR"
TYPES = ("counter", "histogram")
LOCK, JOURNAL = "merge.lock", "merge.journal"
_private: Path | None = None  # the directory made here, removed at exit


def prepare() -> Path:
    """The directory PROMETHEUS_MULTIPROC_DIR names, made if it is missing; unset, a new private
    one, exported (the workers inherit it)."""
    global _private
    if named := os.environ.get(ENV, "").strip():
        directory = Path(named)
        directory.mkdir(parents=True, exist_ok=True)
        return directory
    _private = Path(tempfile.mkdtemp(prefix=f"{__package__}-metrics-"))
    os.environ[ENV] = str(_private)
    return _private


def empty(directory: Path) -> None:
    """Delete the counts of an earlier run (before any worker starts)."""
    for path in directory.iterdir():
        if path.name.endswith((".db", ".tmp")) or path.name == JOURNAL:
            path.unlink()


def remove_private() -> None:
    if _private is not None:
        shutil.rmtree(_private, ignore_errors=True)


def merge_dead(directory: Path) -> None:
    """Merge now, unless a scrape or another merge holds the lock (and merges): never waits, so
    gunicorn's master is not held up when a worker exits."""
    if fcntl is None:
        return
    with (directory / LOCK).open("a") as lock:
        try:  # held until the file closes
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        _finish(directory)
        _merge(directory)


@contextmanager
def merged(directory: Path) -> Iterator[None]:
    """Under the lock: dead processes' files merged; the caller reads the directory inside."""
    if fcntl is None:
        yield
        return
    with (directory / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the file closes
        _finish(directory)
        _merge(directory)
        yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _merge(directory: Path) -> None:
    dead: dict[str, list[Path]] = defaultdict(list)
    for path in directory.glob("*_*.db"):
        kind, _, pid = path.stem.partition("_")
        if kind in TYPES and pid.isdigit() and not _alive(int(pid)):
            dead[kind].append(path)
    if not dead:
        return
    # Imported here: this module runs before prometheus_client may be imported.
    from prometheus_client.mmap_dict import MmapedDict

    renames: dict[str, str] = {}
    for kind, paths in dead.items():
        target = directory / f"{kind}_merged.db"
        totals: dict[str, float] = defaultdict(float)
        for path in files([target, *paths]):
            for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
                totals[key] += value  # raw samples: a histogram's buckets are not cumulative
        aside = target.with_name(target.name + ".tmp")
        written = MmapedDict(str(aside))
        for key, value in totals.items():
            written.write_value(key, value, 0.0)
        written.close()
        renames[aside.name] = target.name
    journal = {"renames": renames, "deletes": [p.name for paths in dead.values() for p in paths]}
    pending = directory / (JOURNAL + ".tmp")
    pending.write_text(json.dumps(journal), encoding="utf-8")
    pending.replace(directory / JOURNAL)  # the commit
    _finish(directory)


def files(paths: Iterable[Path]) -> list[Path]:
    """Those of `paths` with counts to read: not missing, nor just created by a process and not
    yet sized (prometheus_client fails on an empty file)."""
    return [path for path in paths if path.exists() and path.stat().st_size]


def _finish(directory: Path) -> None:
    """Complete a committed merge from its journal; drop what an uncommitted one wrote."""
    journal = directory / JOURNAL
    if not journal.exists():
        for path in directory.glob("*.tmp"):
            path.unlink()
        return
    steps = json.loads(journal.read_text(encoding="utf-8"))
    for aside, target in steps["renames"].items():
        if (directory / aside).exists():  # not yet renamed
            (directory / aside).replace(directory / target)
    for name in steps["deletes"]:
        (directory / name).unlink(missing_ok=True)
    journal.unlink()
