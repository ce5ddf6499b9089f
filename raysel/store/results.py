"""The Parquet result store: one small file per trial and per selection decision, written atomically, read with DuckDB.

Layout under the results root (Hive-style partitions, so DuckDB/pyarrow/Spark read it as a partitioned dataset)::

    trials/method=hiast/<sweep_id>__<trial_id>.parquet          one row: one trial
    selections/method=hiast/<sweep_id>__<selection_id>.parquet  one row: one selection decision

Decisions:

* **One file per key while a sweep runs.** The key of a trial is (sweep_id, trial_id), of a selection (sweep_id,
  selection_id). The key *is* the file name, so a resumed sweep that writes a trial again replaces its file: rows are
  never duplicated. ``sweep_id`` may not contain ``__`` (the separator), which keeps the mapping from file name to
  key unambiguous.
* **One file per finished sweep.** :mod:`raysel.store.compaction` merges a finished sweep's per-key files of one
  method into ``<sweep_id>.parquet`` (no separator: 100 files, not 10,000, for 10,000 trials). A per-key file written
  later (a trial re-run or re-scored) *overrides* the compacted row of its key in every reader here, so each key is
  read once at every step of a compaction and after it.
* **The method lives in the path only** (``method=...``), as Hive partition columns do; storing it in the files too
  makes ``pyarrow``/``pandas.read_parquet(trials/)`` fail with "Field method has incompatible types". Every reader here
  adds it back from the path.
* **Atomic writes**: the row is written to ``.<name>.tmp-<pid>`` in the target directory, fsynced, then
  ``os.replace``-d over the final name and the directory is fsynced. Readers only list ``*.parquet`` names that do not
  start with ``.``, so a writer killed at any point leaves either the old file or the new one, never a partial file.
* **Typed columns**: every hyperparameter is its own column ``hp_<name>``, typed from the method's config dataclass
  when given (``int`` -> int64, ``float`` -> float64, ``bool`` -> bool, ``str`` -> string, ``tuple[int, ...]`` ->
  list<int64>), else from the Python value. Selector scores are ``score_<selector>`` float64 columns. Files of
  different methods therefore have different columns; reading unions them by name (DuckDB ``union_by_name``), a
  column missing from a file reads as NULL.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
import typing
import uuid
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from raysel.conventions import RESULTS_ENV, default_results_root
from raysel.errors import ConfigError, DataError, UserError
from raysel.store.schema import (KEY_SEPARATOR, SELECTION_FIXED_COLUMNS, TIMESTAMP, TRIAL_FIXED_COLUMNS, _coerce_value,
                                 _score_column, column_order, selection_table, trial_table)

if typing.TYPE_CHECKING:  # pragma: no cover
    import pandas

__all__ = ["ResultStore", "load", "sql", "sql_arrow", "to_pandas", "open_connection", "default_results_root",
           "write_table_atomically", "is_compacted", "key_column", "TABLES", "PARQUET_SUFFIX", "RESULTS_ENV"]

TABLES = ("trials", "selections")
PARQUET_SUFFIX = ".parquet"
SOURCE_FILE_COLUMN = "__raysel_source_file"  # read_parquet's file-name column, only to drop overridden rows

# Errors that mean "this location cannot take a write" (full disk, read-only mount, permissions, a file in the way):
# they become a UserError naming the path. Anything else is a bug and keeps its traceback.
UNWRITABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                               errno.EEXIST, errno.EISDIR})


# --------------------------------------------------------------------------------------------------------------
# Atomic file writes
# --------------------------------------------------------------------------------------------------------------


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (best effort: some file systems refuse fsync on a directory)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _unwritable(path: Path, error: OSError) -> UserError:
    return UserError(f"cannot write result file {path}: {error.strerror or error}; nothing already written was "
                     f"touched (any previous version of this file is intact)")


def write_table_atomically(table: pa.Table, path: Path, before_replace: Callable[[], None] | None = None) -> Path:
    """Write ``table`` to ``path`` so readers see the old file or the complete new one, never a partial file.
    ``before_replace`` runs once the temporary file is complete (a test hook of compaction)."""
    # pid plus a random suffix: two threads of one process writing the same key never share a temp file.
    temporary = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(temporary, path)
    except OSError as error:
        _remove_quietly(temporary)
        if error.errno in UNWRITABLE_ERRNOS:
            raise _unwritable(path, error) from None
        raise
    except BaseException:  # interrupted (KeyboardInterrupt, a bug): never leave the temp file behind
        _remove_quietly(temporary)
        raise
    _fsync_directory(path.parent)
    return path


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _is_visible_parquet(path: Path) -> bool:
    """Readers see only finished files: ``*.parquet`` names not starting with '.' (temporary files do)."""
    return path.name.endswith(PARQUET_SUFFIX) and not path.name.startswith(".") and path.is_file()


# --------------------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------------------


class ResultStore:
    """A results folder holding the ``trials`` and ``selections`` Parquet datasets (see the module docstring)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        """The folder of one dataset (``trials`` or ``selections``)."""
        return self.root / _check_table(table)

    def trial_path(self, method: str, sweep_id: str, trial_id: str) -> Path:
        """Where the row of (sweep_id, trial_id) of ``method`` lives."""
        return self.table_dir("trials") / f"method={method}" / f"{sweep_id}{KEY_SEPARATOR}{trial_id}{PARQUET_SUFFIX}"

    def selection_path(self, method: str, sweep_id: str, selection_id: str) -> Path:
        """Where the row of (sweep_id, selection_id) of ``method`` lives."""
        return (self.table_dir("selections") / f"method={method}" /
                f"{sweep_id}{KEY_SEPARATOR}{selection_id}{PARQUET_SUFFIX}")

    def files(self, table: str = "trials", method: str | None = None, sweep_id: str | None = None) -> list[Path]:
        """The visible Parquet files of a dataset, optionally of one method and/or one sweep, sorted."""
        directory = self.table_dir(table)
        if not directory.is_dir():
            return []
        partitions = [directory / f"method={method}"] if method else sorted(directory.glob("method=*"))
        found: list[Path] = []
        for partition in partitions:
            if not partition.is_dir():
                continue
            for path in partition.iterdir():
                if _is_visible_parquet(path) and (sweep_id is None or _key_of(path)[0] == sweep_id):
                    found.append(path)
        return sorted(found, key=_file_order)

    def compacted_path(self, table: str, method: str, sweep_id: str) -> Path:
        """Where the compacted rows of ``sweep_id`` (one method) live: ``<table>/method=<m>/<sweep_id>.parquet``."""
        return self.table_dir(table) / f"method={method}" / f"{sweep_id}{PARQUET_SUFFIX}"

    # -- writing -------------------------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Fail early, before any trial runs, when the results folder cannot be created or written.

        Creates ``trials/`` and ``selections/`` and writes, fsyncs and removes a hidden probe file in each.
        """
        for directory in (self.root, *(self.table_dir(table) for table in TABLES)):
            if directory.exists() and not directory.is_dir():
                raise UserError(f"results path {self.root} is not writable: {directory} is a file, not a folder")
        for directory in (self.table_dir(table) for table in TABLES):
            probe = directory / f".raysel-write-probe-{os.getpid()}"
            try:
                directory.mkdir(parents=True, exist_ok=True)
                descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(descriptor, b"raysel")
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
            except OSError as error:
                raise UserError(f"results path {self.root} is not writable: {error.strerror or error}"
                                f" ({directory})") from None
            finally:
                _remove_quietly(probe)

    def write_trial(self, row: dict[str, Any], hyperparameter_types: Any = None) -> Path:
        """Write (or replace) the row of one trial; ``hyperparameter_types``: the config dataclass or name -> type."""
        method, table = trial_table(row, hyperparameter_types)
        sweep_id, trial_id = table["sweep_id"][0].as_py(), table["trial_id"][0].as_py()
        path = write_table_atomically(table, self.trial_path(method, sweep_id, trial_id))
        self._remove_other_partitions("trials", path)
        return path

    def write_selection(self, row: dict[str, Any]) -> Path:
        """Write (or replace) one selection decision (keyed by sweep_id, selection_id)."""
        method, table = selection_table(row)
        sweep_id, selection_id = table["sweep_id"][0].as_py(), table["selection_id"][0].as_py()
        path = write_table_atomically(table, self.selection_path(method, sweep_id, selection_id))
        self._remove_other_partitions("selections", path)
        return path

    def update_trial_scores(self, sweep_id: str, trial_id: str, scores: dict[str, float | None]) -> Path:
        """Set ``score_<selector>`` columns on a stored trial (atomic rewrite of its file); other columns unchanged."""
        path, table = self._read_row("trials", sweep_id, trial_id)
        for selector, value in scores.items():
            column = _score_column(selector)
            array = pa.array([_coerce_value(column, value, pa.float64())], type=pa.float64())
            if column in table.column_names:
                table = table.set_column(table.column_names.index(column), column, array)
            else:
                table = table.append_column(column, array)
        return write_table_atomically(table, path)

    def update_trial_columns(self, sweep_id: str, trial_id: str, values: dict[str, Any]) -> Path:
        """Set columns of a stored trial, keeping their types (atomic rewrite); e.g. a re-computed ``predictions_path``.
        A fixed column an older row lacks (``estimate_*``) is added; another missing column raises ValueError."""
        path, table = self._read_row("trials", sweep_id, trial_id)
        for column, value in values.items():
            if column not in table.column_names and column not in TRIAL_FIXED_COLUMNS:
                raise ValueError(f"trial {trial_id!r} of sweep {sweep_id!r} has no column {column!r} to update")
            if column not in table.column_names:  # a fixed column newer than the row: added NULL, set below
                table = table.append_column(column, pa.nulls(1, TRIAL_FIXED_COLUMNS[column]))
            arrow_type = table.schema.field(column).type
            array = pa.array([_coerce_value(column, value, arrow_type)], type=arrow_type)
            table = table.set_column(table.column_names.index(column), column, array)
        return write_table_atomically(table, path)

    def _remove_other_partitions(self, table: str, path: Path) -> None:
        """Keep one file per key even if a key was first written under another method (never expected, but cheap)."""
        for other in self.table_dir(table).glob(f"method=*/{_glob_escape(path.name)}"):
            if other != path:
                _remove_quietly(other)

    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> list[Path]:
        """Delete temp files that killed writers left behind (age-based, so safe with writers on other hosts)."""
        cutoff = time.time() - older_than_s
        removed = []
        for table in TABLES:
            for path in self.table_dir(table).glob("method=*/.*.tmp-*"):
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed.append(path)
                except OSError:  # gone already, or not ours to delete: readers ignore it anyway
                    pass
        return removed

    # -- reading -------------------------------------------------------------------------------------------------
    def _read_row(self, table: str, sweep_id: str, key: str) -> tuple[Path, pa.Table]:
        """(the key's per-key file path, its one-row table) from that file, else from the compacted sweep file (the
        row is then rewritten to the per-key path, which overrides the compacted row). DataError when none has it."""
        name = f"{sweep_id}{KEY_SEPARATOR}{key}{PARQUET_SUFFIX}"
        for candidate in (name, f"{sweep_id}{PARQUET_SUFFIX}"):
            paths = sorted(self.table_dir(table).glob(f"method=*/{_glob_escape(candidate)}"))
            for path in filter(_is_visible_parquet, paths):
                rows = pq.read_table(path)
                keys = rows[key_column(table)].to_pylist()
                if key in keys:  # the per-key file, or the key's row of the compacted file
                    return path.parent / name, rows.slice(keys.index(key), 1)
        raise DataError(f"no {table[:-1]} {key!r} of sweep {sweep_id!r} in the result store {self.root}")

    def read_trial(self, sweep_id: str, trial_id: str) -> dict[str, Any] | None:
        """The stored row of one trial as a dict (``method`` included), or None when it was never written."""
        try:
            path, table = self._read_row("trials", sweep_id, trial_id)
        except DataError:
            return None
        (record,) = table.to_pylist()
        return {"method": _method_of(path), **record}

    def trial_ids(self, sweep_id: str, status: str | None = None) -> set[str]:
        """Trial ids that have a row in ``sweep_id`` (any status, or only ``status`` when given)."""
        paths = self.files("trials", sweep_id=sweep_id)
        per_key = {_key_of(path)[1]: path for path in paths if not is_compacted(path)}
        found = {key for key, path in per_key.items()
                 if status is None or pq.read_table(path, columns=["status"])["status"][0].as_py() == status}
        for path in filter(is_compacted, paths):  # rows a per-key file overrides are not counted twice
            table = pq.read_table(path, columns=["trial_id", "status"])
            found |= {trial for trial, state in zip(table["trial_id"].to_pylist(), table["status"].to_pylist())
                      if trial not in per_key and (status is None or state == status)}
        return found

    def sweeps(self) -> list[str]:
        """Every sweep id with at least one trial or selection row, sorted."""
        return sorted({_key_of(path)[0] for table in TABLES for path in self.files(table)})

    def load(self, table: str = "trials", method: str | None = None, sweep_id: str | None = None) -> "pandas.DataFrame":
        """One dataset as a DataFrame (columns unioned by name across methods; see :func:`load`)."""
        return load(self.root, table=table, method=method, sweep_id=sweep_id)

    def load_sweep(self, sweep_id: str) -> "pandas.DataFrame":
        """The trials of one sweep as a DataFrame."""
        return self.load("trials", sweep_id=sweep_id)

    def sql(self, query: str) -> "pandas.DataFrame":
        """Run DuckDB SQL over the ``trials`` and ``selections`` views of this store."""
        return sql(query, self.root)


def _check_table(table: str) -> str:
    if table not in TABLES:
        raise ConfigError(f"unknown result table {table!r}; valid: {', '.join(TABLES)}")
    return table


def is_compacted(path: Path) -> bool:
    """Whether ``path`` is a compacted sweep file (``<sweep_id>.parquet``: no key separator in the name)."""
    return KEY_SEPARATOR not in path.name


def key_column(table: str) -> str:
    """The column that keys a row within its sweep: ``trial_id`` or ``selection_id``."""
    return "trial_id" if _check_table(table) == "trials" else "selection_id"


def _file_order(path: Path) -> tuple[str, str]:
    """Sort key of a store file: a compacted sweep file just before its sweep's per-key files (same row order)."""
    name = f"{path.name[: -len(PARQUET_SUFFIX)]}{KEY_SEPARATOR}" if is_compacted(path) else path.name
    return str(path.parent), name


def _key_of(path: Path) -> tuple[str, str]:
    """(sweep_id, trial_or_selection_id) from a file name; sweep ids contain no separator, so the first one splits.
    A compacted sweep file gives (sweep_id, "")."""
    stem = path.name[: -len(PARQUET_SUFFIX)]
    sweep_id, _, key = stem.partition(KEY_SEPARATOR)
    return sweep_id, key


def _method_of(path: Path) -> str:
    return path.parent.name.partition("=")[2]


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


# --------------------------------------------------------------------------------------------------------------
# Reading with DuckDB
# --------------------------------------------------------------------------------------------------------------


def _existing_root(root: Path | str | None) -> Path:
    path = Path(root) if root is not None else default_results_root()
    if not path.exists():
        raise DataError(f"no result store at {path} (run a sweep first, or pass the results folder / set {RESULTS_ENV})")
    if not path.is_dir():
        raise DataError(f"result store path {path} is a file, not a folder")
    return path


def _empty_select(table: str) -> str:
    """A zero-row SELECT with the fixed columns of ``table``: what an empty store's view returns."""
    fixed = TRIAL_FIXED_COLUMNS if table == "trials" else SELECTION_FIXED_COLUMNS
    duck_types = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN",
                  TIMESTAMP: "TIMESTAMPTZ", pa.list_(pa.float64()): "DOUBLE[]", pa.list_(pa.string()): "VARCHAR[]"}
    columns = {"method": pa.string(), **fixed}
    ordered = [name for name in columns if name in ("sweep_id", "trial_id", "selection_id")]
    ordered += [name for name in columns if name not in ordered]
    parts = [f"CAST(NULL AS {duck_types[columns[name]]}) AS {name}" for name in ordered]
    return f"SELECT {', '.join(parts)} WHERE false"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _overridden_rows(table: str, files: list[Path]) -> str | None:
    """A WHERE condition dropping the compacted rows that a per-key file overrides; None when none is overridden
    (the usual case: then no condition and no source-file column slow the read down)."""
    compacted = {(path.parent, _key_of(path)[0]): path for path in files if is_compacted(path)}
    overridden: dict[Path, list[str]] = {}
    for path in files:
        sweep_id, key = _key_of(path)
        if not is_compacted(path) and (path.parent, sweep_id) in compacted:
            overridden.setdefault(compacted[(path.parent, sweep_id)], []).append(key)
    if not overridden:
        return None
    parts = [f"({SOURCE_FILE_COLUMN} = {_quote(str(path))} AND {key_column(table)} IN "
             f"({', '.join(_quote(key) for key in keys)}))" for path, keys in overridden.items()]
    return f"NOT ({' OR '.join(parts)})"


def _select_files(connection: Any, table: str, files: list[Path]) -> str:
    """A SELECT reading ``files`` unioned by name, columns in a stable, readable order (see :func:`column_order`);
    a compacted row that a per-key file overrides is left out (each key once)."""
    if not files:
        return _empty_select(table)
    listed = ", ".join(_quote(str(path)) for path in files)
    condition = _overridden_rows(table, files)
    source_file = f", filename = {_quote(SOURCE_FILE_COLUMN)}" if condition else ""
    source = (f"read_parquet([{listed}], union_by_name = true, hive_partitioning = true, "
              f"hive_types = {{'method': VARCHAR}}{source_file})")
    names = [row[0] for row in connection.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
             if row[0] != SOURCE_FILE_COLUMN]
    ordered = ", ".join('"' + name.replace('"', '""') + '"' for name in column_order(table, names))
    return f"SELECT {ordered} FROM {source}" + (f" WHERE {condition}" if condition else "")


def _connect() -> Any:
    import duckdb  # lazy: writing trial rows (every Ray worker) needs only pyarrow, reading needs DuckDB

    connection = duckdb.connect(":memory:")
    connection.execute("SET TimeZone = 'UTC'")  # timestamps come back in UTC, whatever the machine's zone
    connection.execute("SET parquet_metadata_cache = true")  # the views' DESCRIBE parsed the footers: reuse them
    return connection


def _user_sql_error(error: Exception) -> UserError:
    """DuckDB's message, first line only (it continues with the query and a caret), as a UserError."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return UserError(f"SQL error: {lines[0] if lines else type(error).__name__}")


def open_connection(root: Path | str | None = None, query: str | None = None) -> Any:
    """A DuckDB connection with views ``trials`` and ``selections`` over the store (empty views for no files); with
    ``query``, only the views its text names (each view reads every file's schema, so a skipped one saves that)."""
    store = ResultStore(_existing_root(root))
    connection = _connect()
    for table in (name for name in TABLES if query is None or name in query.lower()):
        connection.execute(f"CREATE VIEW {table} AS {_select_files(connection, table, store.files(table))}")
    return connection


def sql(query: str, root: Path | str | None = None) -> "pandas.DataFrame":
    """Run DuckDB SQL over the store's ``trials`` and ``selections`` views; a bad query raises UserError."""
    return to_pandas(sql_arrow(query, root))


def sql_arrow(query: str, root: Path | str | None = None) -> pa.Table:
    """Like :func:`sql` but returns a pyarrow Table (exact types; used by the query CLI's formatters)."""
    import duckdb  # lazy: see _connect

    connection = open_connection(root, query)
    try:
        relation = connection.sql(query)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as error:
        raise _user_sql_error(error) from None
    finally:
        connection.close()


def to_pandas(table: pa.Table) -> "pandas.DataFrame":
    """Arrow -> pandas keeping integers and booleans exact: always pandas' nullable ``Int64``/``boolean`` dtypes.

    (Plain numpy dtypes would turn an integer column into float64 as soon as one method lacks it.)
    """
    import pandas  # lazy: ~0.7 s to import, and writing trial rows (every Ray worker) needs only pyarrow

    exact = {pa.int8(): pandas.Int8Dtype(), pa.int16(): pandas.Int16Dtype(), pa.int32(): pandas.Int32Dtype(),
             pa.int64(): pandas.Int64Dtype(), pa.uint8(): pandas.UInt8Dtype(), pa.uint16(): pandas.UInt16Dtype(),
             pa.uint32(): pandas.UInt32Dtype(), pa.uint64(): pandas.UInt64Dtype(), pa.bool_(): pandas.BooleanDtype()}
    return table.to_pandas(types_mapper=exact.get)


def load(root: Path | str | None = None, table: str = "trials", method: str | None = None,
         sweep_id: str | None = None) -> "pandas.DataFrame":
    """One dataset of the store as a pandas DataFrame: methods' different hyperparameter columns unioned by name.

    ``root`` defaults to ``$RAYSEL_RESULTS`` or ``./results``. Integer and boolean columns are pandas' nullable
    ``Int64``/``boolean`` (a hyperparameter another method lacks is ``<NA>`` there, and stays integer).
    """
    store = ResultStore(_existing_root(root))
    files = store.files(_check_table(table), method=method, sweep_id=sweep_id)
    connection = _connect()
    try:
        return to_pandas(connection.sql(_select_files(connection, table, files)).to_arrow_table())
    finally:
        connection.close()
