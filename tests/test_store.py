"""The Parquet result store: real files in tmp_path, read back with DuckDB and pyarrow."""

from __future__ import annotations

import dataclasses
import datetime
import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow.dataset as pa_dataset
import pyarrow.parquet as pq
import pytest

from raysel.errors import ConfigError, DataError, UserError
from raysel.store import ResultStore, load, sql
from raysel.store import compaction
from raysel.store import results as store_module
from raysel.store.compaction import compact_store

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class HiastLikeConfig:
    alpha: float = 0.5
    k: int = 4
    use_ias: bool = True
    rounds: tuple[int, ...] = (1, 2)


@dataclasses.dataclass
class GsdaLikeConfig:
    alpha: float = 0.1
    num_groups: int = 3


def trial_row(trial_id: str = "t_00000", *, sweep_id: str = "sweep-a", method: str = "hiast",
              status: str = "finished", **changes) -> dict:
    row = {
        "sweep_id": sweep_id, "trial_id": trial_id, "method": method, "task": "segmentation",
        "dataset": "street_scenes", "source": "game", "target": "day_city", "model": "small_segnet", "seed": 0,
        "status": status, "error": None, "retries": 0, "wall_time_s": 12.5,
        "started_at": 1_700_000_000.0, "finished_at": 1_700_000_012.5,
        "heldout_miou": 0.42, "heldout_iou": [0.9, float("nan"), 0.1], "heldout_accuracy": 0.8,
        "checkpoint_path": f"/ckpt/{trial_id}", "predictions_path": None,
        "raysel_version": "0.1.0", "ray_version": "2.60.0", "torch_version": "2.14.1",
        "hyperparameters": {"alpha": 0.35, "k": 5, "use_ias": False, "rounds": (1, 2, 3)},
    }
    row.update(changes)
    return row


def duck_types(path: Path) -> dict[str, str]:
    """Column -> DuckDB type of one Parquet file, read by DuckDB itself."""
    rows = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{path}', hive_partitioning = false)").fetchall()
    return {name: kind for name, kind, *_ in rows}


def visible_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------------------------
# Schema and types
# --------------------------------------------------------------------------------------------------------------


def test_trial_file_layout_and_typed_columns_from_the_dataclass(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    row = trial_row(hyperparameters={"alpha": 0.35, "k": 5.0, "use_ias": False, "rounds": (1, 2, 3)}, train_time_s=3.0)
    path = store.write_trial(row, HiastLikeConfig)

    assert path == tmp_path / "trials" / "method=hiast" / "sweep-a__t_00000.parquet"
    types = duck_types(path)
    assert types["hp_alpha"] == "DOUBLE"
    assert types["hp_k"] == "BIGINT"  # 5.0 from a float-typed source still lands in the int64 column
    assert types["hp_use_ias"] == "BOOLEAN"
    assert types["hp_rounds"] == "BIGINT[]"
    assert types["heldout_iou"] == "DOUBLE[]"
    assert types["started_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["retries"] == "BIGINT" and types["seed"] == "BIGINT"
    assert types["train_time_s"] == "DOUBLE"
    assert "method" not in types  # the method lives in the Hive path only


def test_hyperparameter_types_from_values_and_declared_but_missing(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    path = store.write_trial(trial_row(hyperparameters={"alpha": 0.2, "k": 3, "use_ias": True}))
    assert duck_types(path)["hp_k"] == "BIGINT" and duck_types(path)["hp_use_ias"] == "BOOLEAN"
    # A declared hyperparameter the row lacks is still a typed (NULL) column.
    path = store.write_trial(trial_row("t_1", hyperparameters={"alpha": 0.2}), {"alpha": float, "k": int})
    assert duck_types(path)["hp_k"] == "BIGINT"
    assert store.read_trial("sweep-a", "t_1")["hp_k"] is None


def test_values_of_the_wrong_type_and_bad_keys_are_refused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError, match="hp_k"):
        store.write_trial(trial_row(hyperparameters={"k": 2.5}), HiastLikeConfig)
    with pytest.raises(ValueError, match="status"):
        store.write_trial(trial_row(status="done"))
    with pytest.raises(ConfigError, match="__"):
        store.write_trial(trial_row(sweep_id="a__b"))
    with pytest.raises(ConfigError, match="trial_id"):
        store.write_trial(trial_row("../escape"))
    assert visible_files(tmp_path) == []


def test_read_trial_round_trips_values(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_trial(trial_row(), HiastLikeConfig)
    record = store.read_trial("sweep-a", "t_00000")
    assert record["method"] == "hiast" and record["status"] == "finished"
    assert record["hp_k"] == 5 and record["hp_use_ias"] is False and record["hp_rounds"] == [1, 2, 3]
    assert record["started_at"] == datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc)
    assert record["heldout_iou"][0] == 0.9 and record["heldout_iou"][1] != record["heldout_iou"][1]  # NaN kept
    assert store.read_trial("sweep-a", "missing") is None


# --------------------------------------------------------------------------------------------------------------
# Keys, resume, atomicity
# --------------------------------------------------------------------------------------------------------------


def test_rewriting_a_trial_replaces_its_row(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_trial(trial_row(status="failed", error="RuntimeError: boom", heldout_miou=None), HiastLikeConfig)
    store.write_trial(trial_row(status="finished", retries=1), HiastLikeConfig)  # the resumed sweep's rewrite
    store.write_trial(trial_row("t_00001"), HiastLikeConfig)

    rows = sql("SELECT trial_id, status, retries, error FROM trials ORDER BY trial_id", tmp_path)
    assert rows["trial_id"].tolist() == ["t_00000", "t_00001"]
    assert rows["status"].tolist() == ["finished", "finished"] and rows["retries"].tolist() == [1, 0]
    assert len(list((tmp_path / "trials").rglob("*.parquet"))) == 2
    assert store.trial_ids("sweep-a") == {"t_00000", "t_00001"}


def test_leftover_temp_file_of_a_crashed_writer_is_ignored(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_trial(trial_row(), HiastLikeConfig)
    partition = tmp_path / "trials" / "method=hiast"
    (partition / ".sweep-a__t_00009.parquet.tmp-4242").write_bytes(b"PAR1 half a file")
    assert len(load(tmp_path)) == 1
    assert len(sql("SELECT * FROM trials", tmp_path)) == 1
    assert store.trial_ids("sweep-a") == {"t_00000"}
    assert store.remove_stale_temp_files(older_than_s=3600) == []  # young: a live writer may still own it
    os.utime(partition / ".sweep-a__t_00009.parquet.tmp-4242", (0, 0))
    assert [p.name for p in store.remove_stale_temp_files(older_than_s=3600)] == [".sweep-a__t_00009.parquet.tmp-4242"]
    assert [p.name for p in partition.iterdir()] == ["sweep-a__t_00000.parquet"]


def test_writer_killed_before_the_rename_leaves_the_old_file(tmp_path: Path) -> None:
    """A real SIGKILL of a writer process between writing the temp file and os.replace."""
    store = ResultStore(tmp_path)
    path = store.write_trial(trial_row(status="failed"), HiastLikeConfig)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, sys
        from tests.test_store import trial_row, HiastLikeConfig
        from raysel.store import ResultStore
        os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # die right before the rename
        ResultStore({str(tmp_path)!r}).write_trial(trial_row(status="finished"), HiastLikeConfig)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, cwd=REPO)
    assert result.returncode == -9, result.stderr.decode()
    leftovers = list(path.parent.glob(".*.tmp-*"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the complete-but-unrenamed new version
    assert path.read_bytes() == before
    assert store.read_trial("sweep-a", "t_00000")["status"] == "failed"
    assert len(load(tmp_path)) == 1


def test_interrupted_write_removes_its_temp_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch) -> None:
    store = ResultStore(tmp_path)
    path = store.write_trial(trial_row(status="failed"), HiastLikeConfig)
    before = path.read_bytes()

    def interrupted(table, where, **kwargs):
        where.write(b"PAR1 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module.pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.write_trial(trial_row(status="finished"), HiastLikeConfig)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_full_or_read_only_disk_is_a_user_error_that_touches_nothing(tmp_path: Path, monkeypatch, code: int) -> None:
    """Simulated: os.fsync of the new file fails with ``code`` (no small full file system is available in tests)."""
    store = ResultStore(tmp_path)
    path = store.write_trial(trial_row(status="failed"), HiastLikeConfig)
    before = {p: p.read_bytes() for p in visible_files(tmp_path)}

    def failing_fsync(descriptor: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store_module.os, "fsync", failing_fsync)
    with pytest.raises(UserError, match="nothing already written was touched") as caught:
        store.write_trial(trial_row(status="finished"), HiastLikeConfig)
    assert str(path) in str(caught.value) and os.strerror(code) in str(caught.value)
    assert {p: p.read_bytes() for p in visible_files(tmp_path)} == before  # no temp file, old row intact


# --------------------------------------------------------------------------------------------------------------
# Writability checks
# --------------------------------------------------------------------------------------------------------------


def test_check_writable_creates_the_store_and_leaves_no_probe(tmp_path: Path) -> None:
    root = tmp_path / "new" / "results"
    ResultStore(root).check_writable()
    assert (root / "trials").is_dir() and (root / "selections").is_dir()
    assert visible_files(root) == []


def test_check_writable_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"results path .*results is not writable: .*file, not a folder"):
        ResultStore(blocker).check_writable()
    # A path whose parent is a regular file cannot be created at all (ENOTDIR): what a root user hits too.
    with pytest.raises(UserError, match=r"results path .*results/sub is not writable: Not a directory"):
        ResultStore(blocker / "sub").check_writable()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "trials").write_text("in the way")
    with pytest.raises(UserError, match="trials is a file"):
        ResultStore(tmp_path / "other").check_writable()


def test_check_writable_refuses_a_read_only_folder(tmp_path: Path) -> None:
    """chmod 0o555: a real permission error for normal users. root ignores mode bits, so there this is skipped
    (the ENOTDIR test above then shows the same error path with a real, unmocked OSError)."""
    root = tmp_path / "readonly"
    root.mkdir()
    root.chmod(0o555)
    try:
        probe = root / "probe"
        try:
            probe.write_text("x")
            probe.unlink()
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 0o555 does not stop writes here")
        except PermissionError:
            pass
        with pytest.raises(UserError, match=r"results path .*readonly is not writable: Permission denied"):
            ResultStore(root).check_writable()
    finally:
        root.chmod(0o755)


# --------------------------------------------------------------------------------------------------------------
# Reading: union across methods, filters, scores, selections, SQL
# --------------------------------------------------------------------------------------------------------------


def write_two_methods(root: Path) -> ResultStore:
    store = ResultStore(root)
    store.write_trial(trial_row("t_0"), HiastLikeConfig)
    store.write_trial(trial_row("t_1", hyperparameters={"alpha": 0.65, "k": 7, "use_ias": True}), HiastLikeConfig)
    store.write_trial(trial_row("g_0", sweep_id="sweep-b", method="gsda", task="classification",
                                hyperparameters={"alpha": 0.3, "num_groups": 4}), GsdaLikeConfig)
    return store


def test_load_unions_methods_with_different_hyperparameter_columns(tmp_path: Path) -> None:
    write_two_methods(tmp_path)
    frame = load(tmp_path).sort_values("trial_id").reset_index(drop=True)
    assert frame["trial_id"].tolist() == ["g_0", "t_0", "t_1"]
    assert frame["method"].tolist() == ["gsda", "hiast", "hiast"]
    assert list(frame.columns[:3]) == ["sweep_id", "trial_id", "method"]
    assert frame["hp_alpha"].tolist() == [0.3, 0.35, 0.65]
    assert frame["hp_num_groups"].isna().tolist() == [False, True, True]
    assert frame.loc[0, "hp_num_groups"] == 4
    # Integer and boolean columns stay integer/boolean (nullable, since the other method lacks them).
    assert str(frame["hp_k"].dtype) == "Int64" and str(frame["hp_use_ias"].dtype) == "boolean"
    assert str(frame["seed"].dtype) == "Int64" and frame["hp_alpha"].dtype == "float64"
    assert frame.loc[1, "hp_k"] == 5 and not frame.loc[1, "hp_use_ias"]
    # Hyperparameter columns come right after the identity columns, whatever file was read first.
    columns = list(frame.columns)
    assert columns.index("seed") < columns.index("hp_alpha") < columns.index("status")

    only_hiast = load(tmp_path, method="hiast")
    assert set(only_hiast["trial_id"]) == {"t_0", "t_1"} and "hp_num_groups" not in only_hiast
    assert load(tmp_path, sweep_id="sweep-b")["trial_id"].tolist() == ["g_0"]
    # DuckDB's own reader over the whole store agrees on the types.
    described = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{tmp_path}/trials/*/*.parquet', "
                           "union_by_name = true, hive_partitioning = true)").fetchall()
    types = {name: kind for name, kind, *_ in described}
    assert types["hp_k"] == "BIGINT" and types["hp_use_ias"] == "BOOLEAN" and types["method"] == "VARCHAR"


def test_plain_pyarrow_reads_a_partition_as_a_hive_dataset(tmp_path: Path) -> None:
    """Because ``method`` is not duplicated inside the files, standard Hive readers work on the store."""
    write_two_methods(tmp_path)
    table = pa_dataset.dataset(tmp_path / "trials" / "method=hiast", format="parquet").to_table()
    assert table.num_rows == 2
    table = pq.read_table(tmp_path / "trials", partitioning="hive", filters=[("method", "=", "gsda")])
    assert table.num_rows == 1 and table["method"].to_pylist() == ["gsda"]


def test_load_reads_the_default_root_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    write_two_methods(tmp_path)
    monkeypatch.setenv("RAYSEL_RESULTS", str(tmp_path))
    assert len(load()) == 3
    monkeypatch.setenv("RAYSEL_RESULTS", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no result store at .*missing"):
        load()
    with pytest.raises(ConfigError, match="unknown result table 'trial'"):
        load(tmp_path, table="trial")


def test_update_trial_scores_rewrites_only_the_score_columns(tmp_path: Path) -> None:
    store = write_two_methods(tmp_path)
    store.update_trial_scores("sweep-a", "t_0", {"fmiou": 0.61, "entropy": -1.5})
    store.update_trial_scores("sweep-a", "t_0", {"fmiou": 0.63})
    store.update_trial_scores("sweep-a", "t_1", {"score_fmiou": 0.58})
    frame = sql("SELECT trial_id, hp_k, score_fmiou, score_entropy FROM trials WHERE method = 'hiast' "
                "ORDER BY trial_id", tmp_path)
    assert frame["score_fmiou"].tolist() == [0.63, 0.58]
    assert frame["score_entropy"].iloc[0] == -1.5 and frame["score_entropy"].isna().iloc[1]
    assert frame["hp_k"].tolist() == [5, 7]
    assert len(load(tmp_path)) == 3
    with pytest.raises(DataError, match="no trial 'nope' of sweep 'sweep-a'"):
        store.update_trial_scores("sweep-a", "nope", {"fmiou": 0.1})


def test_selections_are_keyed_and_queryable(tmp_path: Path) -> None:
    store = write_two_methods(tmp_path)
    decision = {"sweep_id": "sweep-a", "method": "hiast", "target": "day_city", "selector": "fmiou",
                "selected_trial_id": "t_0", "score": 0.61, "num_candidates": 2}
    path = store.write_selection(decision)
    assert path == tmp_path / "selections" / "method=hiast" / "sweep-a__day_city-fmiou.parquet"
    store.write_selection({**decision, "selected_trial_id": "t_1", "heldout_regret": 1.25})  # replaces
    frame = load(tmp_path, table="selections")
    assert len(frame) == 1 and frame.loc[0, "selected_trial_id"] == "t_1"
    assert frame.loc[0, "heldout_regret"] == 1.25 and frame.loc[0, "num_candidates"] == 2
    assert str(frame["created_at"].dtype).startswith("datetime64")
    joined = sql("SELECT s.selector, t.heldout_miou FROM selections s JOIN trials t "
                 "ON s.sweep_id = t.sweep_id AND s.selected_trial_id = t.trial_id", tmp_path)
    assert joined.to_dict("records") == [{"selector": "fmiou", "heldout_miou": 0.42}]
    assert store.sweeps() == ["sweep-a", "sweep-b"]


def test_trial_ids_by_status(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_trial(trial_row("t_0", status="finished"))
    store.write_trial(trial_row("t_1", status="failed", error="boom"))
    store.write_trial(trial_row("t_2", sweep_id="sweep-a-2"))  # a sweep id that is a prefix of another
    assert store.trial_ids("sweep-a") == {"t_0", "t_1"}
    assert store.trial_ids("sweep-a", status="finished") == {"t_0"}
    assert store.trial_ids("nope") == set()


def test_sql_on_an_empty_store_returns_zero_rows_with_the_fixed_columns(tmp_path: Path) -> None:
    ResultStore(tmp_path).check_writable()
    frame = sql("SELECT * FROM trials", tmp_path)
    assert len(frame) == 0 and {"sweep_id", "trial_id", "method", "status", "heldout_miou"} <= set(frame.columns)
    assert len(sql("SELECT selector, score FROM selections", tmp_path)) == 0
    assert len(load(tmp_path)) == 0


def test_sql_errors_are_user_errors(tmp_path: Path) -> None:
    write_two_methods(tmp_path)
    with pytest.raises(UserError, match=r"^SQL error: Parser Error: syntax error") as caught:
        sql("SELEC 1", tmp_path)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="no_such_column"):
        sql("SELECT no_such_column FROM trials", tmp_path)
    with pytest.raises(DataError, match="no result store"):
        sql("SELECT 1", tmp_path / "missing")


# --------------------------------------------------------------------------------------------------------------
# Compaction: one file per finished sweep, crash-safe
# --------------------------------------------------------------------------------------------------------------


def write_compactable_store(root: Path) -> ResultStore:
    """Two sweeps of one method (one a prefix of the other's id), a second method, and a selection per sweep."""
    store = write_two_methods(root)
    store.write_trial(trial_row("t_2", status="failed", error="boom", heldout_miou=None), HiastLikeConfig)
    store.write_trial(trial_row("t_0", sweep_id="sweep-a1"), HiastLikeConfig)
    for sweep_id in ("sweep-a", "sweep-a1"):
        store.write_selection({"sweep_id": sweep_id, "method": "hiast", "target": "day_city", "selector": "fmiou",
                               "selected_trial_id": "t_0", "score": 0.61, "num_candidates": 2})
    return store


def snapshot(root: Path) -> tuple[list[tuple], list[tuple]]:
    """Every row of both views, in the order a query without ORDER BY returns them, with column names."""
    trials = sql_arrow_rows("SELECT * FROM trials", root)
    selections = sql_arrow_rows("SELECT * FROM selections", root)
    return trials, selections


def sorted_snapshot(root: Path) -> list[list[tuple]]:
    return [[rows[0], *sorted(rows[1:])] for rows in snapshot(root)]


def sql_arrow_rows(query: str, root: Path) -> list[tuple]:
    table = store_module.sql_arrow(query, root)
    return [tuple(table.column_names)] + [tuple(str(value) for value in row.values()) for row in table.to_pylist()]


def test_compaction_keeps_every_row_column_type_and_the_row_order(tmp_path: Path) -> None:
    store = write_compactable_store(tmp_path)
    before, before_types = snapshot(tmp_path), duckdb_types_of_view(tmp_path)
    assert compact_store(tmp_path) == {"sweep-a": 4, "sweep-a1": 2, "sweep-b": 1}
    names = sorted(path.relative_to(tmp_path).as_posix() for path in visible_files(tmp_path))
    assert names == ["selections/method=hiast/sweep-a.parquet", "selections/method=hiast/sweep-a1.parquet",
                     "trials/method=gsda/sweep-b.parquet", "trials/method=hiast/sweep-a.parquet",
                     "trials/method=hiast/sweep-a1.parquet"]
    assert snapshot(tmp_path) == before and duckdb_types_of_view(tmp_path) == before_types
    assert store.trial_ids("sweep-a") == {"t_0", "t_1", "t_2"} and store.trial_ids("sweep-a", "failed") == {"t_2"}
    assert store.sweeps() == ["sweep-a", "sweep-a1", "sweep-b"]
    assert store.read_trial("sweep-a", "t_1")["hp_k"] == 7 and store.read_trial("sweep-a", "nope") is None
    assert list(load(tmp_path, sweep_id="sweep-a")["trial_id"]) == ["t_0", "t_1", "t_2"]
    assert compact_store(tmp_path) == {"sweep-a": 0, "sweep-a1": 0, "sweep-b": 0}  # nothing left to merge


def duckdb_types_of_view(root: Path) -> list[tuple]:
    return sql_arrow_rows("SELECT column_name, column_type FROM (DESCRIBE trials)", root)


def test_a_row_written_after_compaction_overrides_the_compacted_row_until_the_next_compaction(tmp_path: Path) -> None:
    store = write_compactable_store(tmp_path)
    compact_store(tmp_path)
    store.update_trial_scores("sweep-a", "t_1", {"fmiou": 0.58})  # a re-selection after the sweep was compacted
    store.write_trial(trial_row("t_2", status="finished"), HiastLikeConfig)  # a resumed trial, written again
    expected = [("t_0", None, "finished"), ("t_1", 0.58, "finished"), ("t_2", None, "finished")]
    query = "SELECT trial_id, score_fmiou, status FROM trials WHERE sweep_id = 'sweep-a' ORDER BY trial_id"
    assert sql(query, tmp_path).astype(object).where(lambda f: f.notna(), None).values.tolist() == \
        [list(row) for row in expected]
    assert store.trial_ids("sweep-a", "failed") == set() and len(load(tmp_path, sweep_id="sweep-a")) == 3
    assert store.read_trial("sweep-a", "t_1")["score_fmiou"] == 0.58
    assert compact_store(tmp_path, ["sweep-a"]) == {"sweep-a": 2}
    assert sql(query, tmp_path).astype(object).where(lambda f: f.notna(), None).values.tolist() == \
        [list(row) for row in expected]
    assert sorted(p.name for p in (tmp_path / "trials" / "method=hiast").iterdir()) == ["sweep-a.parquet",
                                                                                       "sweep-a1.parquet"]


@pytest.mark.parametrize("step", ["before_replace", "after_replace", "after_first_delete"])
def test_compaction_killed_half_way_loses_and_duplicates_nothing_and_a_rerun_completes(tmp_path: Path,
                                                                                     step: str) -> None:
    """A real compaction process SIGKILLed at ``step``; then every row is read once, and a rerun finishes the job."""
    store = write_compactable_store(tmp_path)
    store.update_trial_scores("sweep-a", "t_0", {"fmiou": 0.5})
    compact_store(tmp_path, ["sweep-a"])
    store.update_trial_scores("sweep-a", "t_1", {"fmiou": 0.7})  # a per-trial file overriding a compacted row
    before = sorted_snapshot(tmp_path)  # a half-compacted sweep promises each row once, not the row order
    command = [sys.executable, "-m", "raysel.store.compaction", "--results", str(tmp_path)]
    environment = {**os.environ, "PYTHONPATH": str(REPO), compaction.KILL_AT_ENV: step}
    killed = subprocess.run(command, capture_output=True, timeout=120, cwd=REPO, env=environment)
    assert killed.returncode == -9, killed.stderr.decode()
    assert bool(list(tmp_path.glob("*/method=*/.*.tmp-*"))) == (step == "before_replace")
    assert sorted_snapshot(tmp_path) == before
    assert store.trial_ids("sweep-a") == {"t_0", "t_1", "t_2"}
    del environment[compaction.KILL_AT_ENV]
    rerun = subprocess.run(command, capture_output=True, timeout=120, cwd=REPO, env=environment, text=True)
    assert rerun.returncode == 0 and rerun.stdout.startswith("compacted 3 sweep(s)"), rerun.stderr
    assert sorted_snapshot(tmp_path) == before
    assert all(store_module.is_compacted(path) for path in tmp_path.glob("*/method=*/*.parquet"))
