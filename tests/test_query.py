"""`python -m raysel.query`: real subprocesses over a real store in tmp_path."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raysel.query import format_table, table_cell
from raysel.store import ResultStore

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Config:
    alpha: float = 0.5
    k: int = 4


def run_query(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raysel.query", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    store = ResultStore(tmp_path / "results")
    for index, (alpha, miou) in enumerate([(0.2, 0.412345678), (0.5, 0.5), (0.8, None)]):
        store.write_trial({
            "sweep_id": "s1", "trial_id": f"t_{index}", "method": "hiast", "task": "segmentation",
            "dataset": "street_scenes", "source": "game", "target": "day_city", "seed": 0,
            "status": "finished" if miou is not None else "failed", "error": None if miou is not None else "boom",
            "wall_time_s": 10.0 + index, "started_at": 1_700_000_000 + index, "finished_at": 1_700_000_010 + index,
            "heldout_miou": miou, "heldout_iou": [0.25, float("nan")], "hyperparameters": {"alpha": alpha, "k": 4 + index},
        }, Config)
    return tmp_path / "results"


def test_table_output_is_aligned_with_four_significant_digits(results: Path) -> None:
    result = run_query("SELECT trial_id, hp_alpha, hp_k, heldout_miou, status FROM trials ORDER BY trial_id",
                       "--results", str(results))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["trial_id", "hp_alpha", "hp_k", "heldout_miou", "status"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["t_0", "0.2", "4", "0.4123", "finished"]
    assert lines[4].split() == ["t_2", "0.8", "6", "NULL", "failed"]
    assert lines[-1] == "(3 rows)"
    # Columns line up: every data row places the status column where the header does.
    status_column = lines[0].index("status")
    assert all(line[status_column:].split()[0] in ("finished", "failed") for line in lines[2:5])


def test_csv_and_json_keep_full_precision(results: Path) -> None:
    query = "SELECT trial_id, heldout_miou, heldout_iou, started_at FROM trials ORDER BY trial_id"
    result = run_query(query, "--results", str(results), "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows[0]["heldout_miou"] == "0.412345678" and rows[2]["heldout_miou"] == ""
    assert json.loads(rows[0]["heldout_iou"]) == [0.25, None]

    result = run_query(query, "--results", str(results), "--format", "json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["trial_id"] for r in records] == ["t_0", "t_1", "t_2"]
    assert records[0]["heldout_miou"] == 0.412345678 and records[2]["heldout_miou"] is None
    assert records[0]["heldout_iou"] == [0.25, None]  # NaN -> null: JSON has no NaN
    assert datetime.datetime.fromisoformat(records[0]["started_at"]) == datetime.datetime(
        2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc)


def test_bad_sql_is_one_line_and_exit_2(results: Path) -> None:
    result = run_query("SELEC * FROM trials", "--results", str(results))
    assert result.returncode == 2
    assert result.stderr.startswith("error: SQL error: Parser Error") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and result.stdout == ""

    result = run_query("SELECT no_such_column FROM trials", "--results", str(results))
    assert result.returncode == 2 and "no_such_column" in result.stderr


def test_missing_results_folder_is_explained(tmp_path: Path) -> None:
    result = run_query("SELECT * FROM trials", "--results", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert f"no result store at {tmp_path / 'nowhere'}" in result.stderr and "Traceback" not in result.stderr


def test_empty_store_and_environment_default(tmp_path: Path) -> None:
    ResultStore(tmp_path / "empty").check_writable()
    result = run_query("SELECT sweep_id, trial_id, heldout_miou FROM trials", env={"RAYSEL_RESULTS": str(tmp_path / "empty")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["sweep_id", "trial_id", "heldout_miou"]
    assert result.stdout.splitlines()[-1] == "(0 rows)"


def test_help_explains_views_and_gives_an_example() -> None:
    result = run_query("--help")
    assert result.returncode == 0
    assert "python -m raysel.query \"SELECT" in result.stdout and "selections" in result.stdout
    assert "--format" in result.stdout and "RAYSEL_RESULTS" in result.stdout


def test_table_cells_and_alignment() -> None:
    assert table_cell(0.123456) == "0.1235" and table_cell(12345.678) == "1.235e+04" and table_cell(None) == "NULL"
    assert table_cell([0.5, float("nan")]) == "[0.5, nan]" and table_cell(True) == "True"
    text = format_table(["name", "value"], [("a", 1.0), ("longer", 22.5), ("c", None)])
    lines = text.splitlines()
    assert lines[2] == "a           1" and lines[3] == "longer   22.5" and lines[4] == "c        NULL"
    assert format_table(["x"], []).splitlines()[-1] == "(0 rows)"


def test_output_is_identical_after_compaction_and_the_compaction_command_explains_itself(results: Path) -> None:
    """The same query prints the same text (rows, order, types) on the per-trial files and on the compacted sweep."""
    ResultStore(results).write_selection({"sweep_id": "s1", "method": "hiast", "target": "day_city",
                                          "selector": "fmiou", "selected_trial_id": "t_0", "score": 0.5,
                                          "num_candidates": 2})
    queries = [("SELECT * FROM trials", "--format", "csv"), ("SELECT * FROM selections", "--format", "json"),
               ("SELECT trial_id, hp_alpha, heldout_iou, started_at FROM trials",)]
    before = [run_query(*query, "--results", str(results)).stdout for query in queries]
    compacted = subprocess.run([sys.executable, "-m", "raysel.store.compaction", "--results", str(results)],
                               capture_output=True, text=True, cwd=REPO, timeout=120)
    assert compacted.returncode == 0 and compacted.stdout == "compacted 1 sweep(s): 4 per-trial/selection file(s) merged\n"
    assert sorted(path.name for path in results.rglob("*.parquet")) == ["s1.parquet", "s1.parquet"]
    assert [run_query(*query, "--results", str(results)).stdout for query in queries] == before
    missing = subprocess.run([sys.executable, "-m", "raysel.store.compaction", "--results", str(results / "nope")],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no result store at")
