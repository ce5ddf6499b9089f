"""Compaction of finished sweeps: one Parquet file per (table, method, sweep) instead of one per trial.

A store of 10,000 one-row trial files is slow to read (DuckDB opens and parses every file's footer, twice: once to
union the schemas, once to read); 100 compacted files are not (``benchmarks/store_scale.py`` measures both).
:func:`compact_sweep` runs when a sweep finishes (:mod:`raysel.orchestration.pipeline`), and
``python -m raysel.store.compaction`` compacts older stores.

Steps, per method partition of a sweep, each safe to be killed at (``tests/test_store.py`` kills a real process at
each one with SIGKILL, then checks every row is read exactly once and that a rerun completes):

1. read the per-key files and the existing compacted file (minus the rows the per-key files override);
2. write the merged rows to a temporary file, fsync, ``os.replace`` it over ``<sweep_id>.parquet`` (a reader sees
   the old compacted file or the new one; the per-key files still override the rows they hold, identical ones);
3. delete the per-key files that were merged, each only if it is still the file that was read (same inode and
   modification time), so a row written again meanwhile is kept and keeps overriding.

A rerun after a kill at any point starts again from step 1 and converges to one file per sweep.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel.errors import exits_cleanly_on_user_error
from raysel.store.results import (PARQUET_SUFFIX, TABLES, ResultStore, _existing_root, _fsync_directory, _key_of,
                                  is_compacted, key_column, write_table_atomically)

__all__ = [
    "KILL_AT_ENV", "compact_partition", "compact_sweep", "compact_store",
]

# Test hook: SIGKILL this process at a named step ("before_replace", "after_replace", "after_first_delete"),
# so the crash-safety test kills a real compaction exactly there.
KILL_AT_ENV = "RAYSEL_TEST_KILL_COMPACTION_AT"


def _kill_point(step: str) -> None:
    """SIGKILL the current process when the test hook names ``step`` (no-op otherwise)."""
    if os.environ.get(KILL_AT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_ino, status.st_mtime_ns


def _merged_rows(table: str, compacted: Path, per_key: list[Path]) -> pa.Table:
    """The compacted rows the per-key files do not override, plus the per-key rows, sorted by key."""
    key = key_column(table)
    parts = [pq.read_table(path) for path in per_key]
    if compacted.is_file():
        previous = pq.read_table(compacted)
        overridden = pa.array([_key_of(path)[1] for path in per_key], type=pa.string())
        parts.insert(0, previous.filter(pc.invert(pc.is_in(previous[key], value_set=overridden))))
    merged = pa.concat_tables(parts, promote_options="permissive")
    # Rows in the order of the per-key file names, so a query without ORDER BY prints the same rows in the same order.
    order = pc.sort_indices(pc.binary_join_element_wise(merged[key], PARQUET_SUFFIX, ""))
    merged = merged.take(order)
    if len(set(merged[key].to_pylist())) != merged.num_rows:  # pragma: no cover - guards the invariant
        raise RuntimeError(f"compaction of {compacted} would duplicate a key; nothing was changed")
    return merged


def compact_partition(table: str, compacted: Path, per_key: list[Path]) -> int:
    """Merge ``per_key`` files (one sweep, one method partition) into ``compacted``; return the files removed."""
    identities = {path: _identity(path) for path in per_key}
    merged = _merged_rows(table, compacted, per_key)
    write_table_atomically(merged, compacted, before_replace=lambda: _kill_point("before_replace"))
    _kill_point("after_replace")
    removed = 0
    for path in per_key:
        try:
            if _identity(path) == identities[path]:  # not written again since it was read
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
        if removed == 1:
            _kill_point("after_first_delete")
    _fsync_directory(compacted.parent)
    return removed


def compact_sweep(store: ResultStore, sweep_id: str) -> int:
    """Compact every per-key trial and selection file of ``sweep_id``; return how many files were merged away.

    Run it when the sweep has finished: a trial written meanwhile is kept (it overrides its compacted row) but is
    not compacted until the next run.
    """
    removed = 0
    for table in TABLES:
        groups: dict[Path, list[Path]] = {}
        for path in store.files(table, sweep_id=sweep_id):
            if not is_compacted(path):
                groups.setdefault(path.parent, []).append(path)
        for partition, per_key in groups.items():
            removed += compact_partition(table, partition / f"{sweep_id}{PARQUET_SUFFIX}", per_key)
    return removed


def compact_store(root: Path | str | None = None, sweep_ids: Sequence[str] | None = None) -> dict[str, int]:
    """Compact the given sweeps (default: every sweep in the store); return files merged away per sweep."""
    store = ResultStore(_existing_root(root))
    return {sweep_id: compact_sweep(store, sweep_id) for sweep_id in (sweep_ids or store.sweeps())}


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m raysel.store.compaction [--results DIR] [--sweep ID ...]``: compact finished sweeps."""
    parser = argparse.ArgumentParser(prog="python -m raysel.store.compaction",
                                     description="Merge each finished sweep's one-row Parquet files into one file per "
                                     "sweep and method, so queries over large stores stay fast. Safe to interrupt "
                                     "and rerun; do not run it on a sweep that is still writing trials.")
    parser.add_argument("--results", type=Path, default=None,
                        help="result store folder (default: $RAYSEL_RESULTS, else ./results)")
    parser.add_argument("--sweep", dest="sweeps", action="append", default=None,
                        help="sweep id to compact (repeatable; default: every sweep in the store)")
    args = parser.parse_args(argv)
    merged = compact_store(args.results, args.sweeps)
    print(f"compacted {len(merged)} sweep(s): {sum(merged.values())} per-trial/selection file(s) merged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
