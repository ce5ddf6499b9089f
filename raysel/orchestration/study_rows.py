"""A study's evidence in one small Parquet file that outlives the machine: the rows of its finished sweeps.

:func:`export_plan_rows` writes the trial and selection-decision rows of a study's finished sweeps to one file, one
row per stored row, with a ``row_kind`` column (``trial`` or ``selection``) and the columns of both tables (a
column the other table lacks is null). Checkpoints and prediction caches stay behind: ``checkpoint_path`` and
``predictions_path`` are null. The file's schema metadata (key ``raysel.orchestration.study_rows``) holds the study's name, each
exported sweep's checked request and expected trials, and each table's columns, so :func:`read_study_rows` splits
it back exactly. Commit it (e.g. under ``benchmarks/results/``) and read it with DuckDB::

    SELECT sweep_id, trial_id, heldout_accuracy FROM 'study.parquet' WHERE row_kind = 'trial'

:func:`import_plan_rows` loads a rows file into a results folder that lacks those sweeps: each one gets its rows (as
compacted store files), its ``sweep.json`` and its ``finished.json``, so a study on a new machine reuses it instead of
running it, and every raysel reader (query, status, report tables, benchmark tables) sees it. Selectors that need the
prediction caches cannot re-score imported sweeps.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysel import __version__
from raysel.errors import UserError
from raysel.request import (SETTINGS_FILE, SweepRequest, mark_finished, request_differences, save_request)
from raysel.store import ResultStore, sql_arrow, write_table_atomically
from raysel.store.schema import SELECTION_FIXED_COLUMNS, TRIAL_FIXED_COLUMNS
from raysel.study_state import PlannedSweep, StudyPlan, study_state

__all__ = ["ROWS_FORMAT", "METADATA_KEY", "ROW_KIND", "PATH_COLUMNS", "ExportSummary", "StudyRows",
           "export_plan_rows", "read_study_rows", "import_plan_rows"]

ROWS_FORMAT = 1
METADATA_KEY = b"raysel.orchestration.study_rows"
ROW_KIND = "row_kind"  # "trial" or "selection"
KINDS = {"trials": "trial", "selections": "selection"}  # store table -> row_kind value
PATH_COLUMNS = ("checkpoint_path", "predictions_path")  # nulled: the files they name stay on the old machine


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: the file, the sweeps exported, the unfinished ones left out, and the row counts."""

    path: str
    sweeps: tuple[str, ...]
    skipped: tuple[str, ...]
    trials: int
    selections: int

    def line(self) -> str:
        """One line for the command's output."""
        skipped = f"; not finished, not exported: {', '.join(self.skipped)}" if self.skipped else ""
        return (f"exported {self.trials} trial and {self.selections} selection rows of {len(self.sweeps)} finished "
                f"sweep(s) to {self.path}{skipped}")


@dataclass(frozen=True)
class StudyRows:
    """A rows file read back: the study's name, its exported sweeps (request and expected trials), and the two tables
    as the store holds them (with ``method``)."""

    study: str
    sweeps: tuple[PlannedSweep, ...]
    trials: pa.Table
    selections: pa.Table

    def table(self, name: str) -> pa.Table:
        """``trials`` or ``selections``."""
        return self.trials if name == "trials" else self.selections


# --------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------


def export_plan_rows(plan: StudyPlan, path: str | Path) -> ExportSummary:
    """Write the rows of the plan's finished sweeps to ``path`` (atomically); a UserError when none has finished."""
    state = study_state(plan)
    done = [sweep.sweep_id for sweep in state.sweeps if sweep.finished]
    skipped = tuple(sweep.sweep_id for sweep in state.sweeps if not sweep.finished)
    if not done:
        raise UserError(f"study {plan.name}: no finished sweep to export under {plan.results} (run the study first)")
    tables = {name: _stored_rows(name, plan.results, done) for name in KINDS}
    tables["trials"] = _without_paths(tables["trials"])
    planned = {sweep.sweep_id: sweep for sweep in plan.sweeps}
    metadata = {"format": ROWS_FORMAT, "study": plan.name, "raysel_version": __version__,
                "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "columns": {name: table.column_names for name, table in tables.items()},
                "sweeps": [{"sweep_id": sweep_id, "method": planned[sweep_id].method,
                            "expected_trials": planned[sweep_id].expected_trials,
                            "request": dict(planned[sweep_id].request)} for sweep_id in done]}
    parts = [table.append_column(ROW_KIND, pa.array([KINDS[name]] * table.num_rows, pa.string()))
             for name, table in tables.items()]
    combined = pa.concat_tables(parts, promote_options="permissive")
    combined = combined.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, default=str).encode()})
    target = Path(path)
    write_table_atomically(combined, target)
    return ExportSummary(str(target), tuple(done), skipped, tables["trials"].num_rows, tables["selections"].num_rows)


def _stored_rows(table: str, results: str, sweep_ids: list[str]) -> pa.Table:
    """The store's rows of ``sweep_ids`` in one table (DuckDB, exact Arrow types), without the columns that only
    other sweeps of the store fill (every one of them null here)."""
    listed = ", ".join("'" + sweep_id.replace("'", "''") + "'" for sweep_id in sweep_ids)
    rows = sql_arrow(f"SELECT * FROM {table} WHERE sweep_id IN ({listed}) ORDER BY sweep_id", results)
    fixed = {"method", *(TRIAL_FIXED_COLUMNS if table == "trials" else SELECTION_FIXED_COLUMNS)}
    keep = [name for name in rows.column_names
            if name in fixed or rows.column(name).null_count < rows.num_rows]
    return rows.select(keep)


def _without_paths(trials: pa.Table) -> pa.Table:
    """The trials with their checkpoint and prediction paths null (those files are not exported)."""
    for name in PATH_COLUMNS:
        if name in trials.column_names:
            index = trials.column_names.index(name)
            trials = trials.set_column(index, name, pa.nulls(trials.num_rows, trials.schema.field(name).type))
    return trials


# --------------------------------------------------------------------------------------------------------------
# Reading and import
# --------------------------------------------------------------------------------------------------------------


def read_study_rows(path: str | Path) -> StudyRows:
    """A rows file written by :func:`export_plan_rows`; a UserError naming the file when it is not one."""
    try:
        combined = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise UserError(f"cannot read the rows file {path}: {' '.join(str(error).split())}") from None
    raw = (combined.schema.metadata or {}).get(METADATA_KEY)
    try:
        metadata = json.loads(raw)
        if metadata.get("format") != ROWS_FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}, this raysel reads format {ROWS_FORMAT}")
        sweeps = tuple(PlannedSweep(item["sweep_id"], item["method"], int(item["expected_trials"]), item["request"])
                       for item in metadata["sweeps"])
        tables = {name: combined.filter(pc.equal(combined[ROW_KIND], kind)).select(metadata["columns"][name])
                  for name, kind in KINDS.items()}
    except (TypeError, ValueError, KeyError) as error:
        raise UserError(f"{path} is not a raysel study rows file ({type(error).__name__}: {error}); write one with "
                        "`raysel study FILE --export PATH`") from None
    return StudyRows(metadata["study"], sweeps, tables["trials"], tables["selections"])


def import_plan_rows(plan: StudyPlan, path: str | Path, *, where: str | None = None) -> tuple[str, ...]:
    """Import the sweeps of ``plan`` that the rows file holds and the results folder lacks (no ``sweep.json``, no
    row); returns their ids. Every candidate's exported request is compared with the plan's first (as a stored one
    would be), and nothing is written when one differs."""
    where = where or f"study {plan.name}"
    rows = read_study_rows(path)
    exported = {sweep.sweep_id: sweep for sweep in rows.sweeps}
    store = ResultStore(plan.results)
    candidates = [sweep for sweep in plan.sweeps
                  if sweep.sweep_id in exported and not _present(store, sweep.sweep_id)]
    differing = []
    for sweep in candidates:
        differences = request_differences(SweepRequest.from_dict(exported[sweep.sweep_id].request),
                                          SweepRequest.from_dict(sweep.request))
        if differences:
            differing.append(f"{sweep.sweep_id}: {', '.join(differences)}")
    if differing:
        raise UserError(f"{where}: {len(differing)} sweep(s) in the rows file {path} were run with other requests than "
                        f"the file's entries: {'; '.join(differing)}. Change the entries back or give the sweeps "
                        "other names")
    for sweep in candidates:
        _write_sweep(store, sweep, rows, path)
    return tuple(sweep.sweep_id for sweep in candidates)


def _present(store: ResultStore, sweep_id: str) -> bool:
    """Whether the results folder has the sweep already (its request or any row): then it is not imported."""
    return (store.root / "sweeps" / sweep_id / SETTINGS_FILE).is_file() or bool(
        store.files("trials", sweep_id=sweep_id) or store.files("selections", sweep_id=sweep_id))


def _write_sweep(store: ResultStore, sweep: PlannedSweep, rows: StudyRows, path: str | Path) -> None:
    """One imported sweep: its rows as compacted files per method, then its request, then its finished marker (a
    kill in between leaves rows without the marker, which the next study run sees as present, not imported)."""
    stored = 0
    for name in KINDS:
        table = rows.table(name)
        own = table.filter(pc.equal(table["sweep_id"], sweep.sweep_id))
        for method in sorted(set(own["method"].to_pylist())):
            part = own.filter(pc.equal(own["method"], method)).drop_columns(["method"])
            write_table_atomically(part, store.compacted_path(name, method, sweep.sweep_id))
        stored += own.num_rows if name == "trials" else 0
    request = SweepRequest.from_dict(sweep.request)
    save_request(request)
    mark_finished(request.sweep_dir, {"imported_from": str(path), "trials_stored": stored,
                                      "expected_trials": sweep.expected_trials})
