"""Generate an embedded benchmark tree once per data root: atomic, locked across processes, versioned.

A tree is complete exactly when its marker file exists; the marker is written into the temporary folder last,
and the folder is renamed into place in one step, so readers never see a half-written tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from raysel.errors import DataError

__all__ = [
    "MARKER", "read_marker", "exclusive_lock", "generate_tree", "read_marker_matches", "ensure_generated",
]

MARKER = ".raysel_generated.json"


def read_marker(directory: Path) -> dict | None:
    """The marker of a generated tree, or None when absent/unreadable (an incomplete tree never has one)."""
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on a file: one generator at a time across processes sharing the data root."""
    try:
        handle = open(path, "a+")
    except OSError as error:
        raise DataError(f"cannot create lock file {path}: {error}") from error
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def generate_tree(root: Path, folder: str, content: dict, write: Callable[[Path], dict]) -> Path:
    """Generate ``<root>/<folder>`` once: under a lock, into a temp dir, marker last, then an atomic rename.

    Concurrent callers block on the lock and then find the finished tree. A tree with a different marker (other
    version/config) is replaced. A killed generator leaves only a ``.tmp`` folder, cleaned by the next run.
    """
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create data root {root}: {error}") from error
    final = root / folder
    if read_marker_matches(final, content):
        return final
    with exclusive_lock(root / f".{folder}.lock"):
        if read_marker_matches(final, content):
            return final
        for stale in root.glob(f".{folder}.tmp-*"):  # leftovers of killed runs (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{folder}.tmp-", dir=root))
        try:
            started = time.perf_counter()
            details = write(temporary)
            (temporary / MARKER).write_text(json.dumps(
                dict(content, generated=details, seconds=round(time.perf_counter() - started, 2)), indent=1))
            old = None
            if final.exists():
                old = root / f".{folder}.tmp-old-{os.getpid()}"
                final.rename(old)
            temporary.rename(final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as error:  # disk full, permissions: the user can fix these
            shutil.rmtree(temporary, ignore_errors=True)
            raise DataError(f"cannot generate {folder} under {root}: {error}") from error
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    return final


def read_marker_matches(final: Path, content: dict) -> bool:
    """Whether a tree's marker records exactly this generator content (extra keys ignored)."""
    marker = read_marker(final)
    return marker is not None and all(marker.get(key) == value for key, value in content.items())


def ensure_generated(root: Path, prepare: Callable[[Path], Path], folder: str, version: int) -> Path:
    """The generated tree under root: any complete tree of the current version is used (whatever its config,
    e.g. a small test tree); otherwise the default one is generated first."""
    final = Path(root).expanduser() / folder
    marker = read_marker(final)
    if marker is not None and marker.get("version") == version:
        return final
    return prepare(root)
