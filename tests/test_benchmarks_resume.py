"""Sweep campaigns are resumable, time-boxed and leave evidence that outlives the machine (issue 28): a section is
rebuilt from committed-style rows without training anything or starting Ray, and a real selection_wide run stopped
by ``--max-minutes`` writes a partial section, then continues without repeating a finished trial."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _common as common
from benchmarks import selection_wide as sw
from raysel.request import mark_finished, save_request
from raysel.store import ResultStore, load
from raysel.store.compaction import compact_sweep

REPO = Path(__file__).resolve().parent.parent
QUICK = ["--budget", "quick", "--methods", "source_only", "--configurations", "2"]


def store_plan(plan: common.SweepPlan, request) -> None:
    """What a finished run of one campaign sweep leaves, without training: its request, one trial row per expected
    trial (the first at the plan's default configuration), the re-scoring's decisions (``im`` picks the worst
    candidate, ``fmiou`` the best; the guard keeps the default), compacted rows and the finished marker."""
    store = ResultStore(request.results)
    save_request(request)
    defaults = common.plan_defaults(plan)
    target = plan.targets[0]
    heldout = [0.5] if plan.kind == common.DEFAULT_KIND else [0.6, 0.3][:plan.expected_trials]
    ids = [f"{plan.sweep_id}-t{index}" for index in range(len(heldout))]
    for index, (trial_id, accuracy) in enumerate(zip(ids, heldout)):
        hyperparameters = {name: defaults[name] for name in plan.swept}
        if index:
            hyperparameters["learning_rate"] = defaults["learning_rate"] * 10
        store.write_trial({"sweep_id": plan.sweep_id, "trial_id": trial_id, "method": plan.method,
                           "task": "classification", "dataset": "digits", "target": target, "seed": plan.seed,
                           "status": "finished", "wall_time_s": 3.0, "started_at": 1_700_000_000.0 + index,
                           "finished_at": 1_700_000_003.0 + index, "heldout_accuracy": accuracy,
                           "predictions_path": f"/old-machine/{trial_id}/predictions.npz",
                           "hyperparameters": hyperparameters, "scores": {"fmiou": accuracy}})
    if len(ids) > 1:
        for selector, pick in (("fmiou", 0), ("im", 1)):
            store.write_selection({"sweep_id": plan.sweep_id, "method": plan.method, "target": target,
                                   "selector": selector, "selected_trial_id": ids[pick], "score": 0.5,
                                   "num_candidates": len(ids), "headline": selector == "fmiou",
                                   "guarded_trial_id": ids[0], "default_trial_id": ids[0],
                                   "heldout_regret": (max(heldout) - heldout[pick]) * 100,
                                   "heldout_gap_closed": 1.0 - pick})
    compact_sweep(store, plan.sweep_id)
    mark_finished(request.sweep_dir, {"trials_stored": len(ids)})


def committed_rows(tmp_path: Path, data_root: Path) -> Path:
    """The rows file an earlier machine committed: every quick source_only sweep finished, then exported."""
    old = tmp_path / "old-machine"
    options = sw.build_options(sw.parse_args([*QUICK, "--workdir", str(old), "--data-root", str(data_root)]))
    plans = sw.build_plans(options)
    study = common.campaign_study(sw.section_name("quick"), old, plans)
    for plan, sweep in zip(plans, study.sweeps):
        store_plan(plan, sweep.request)
    path = tmp_path / "selection_wide.quick.parquet"
    assert common.export_campaign(study, path).startswith(f"exported 9 trial and 6 selection rows of {len(plans)}")
    return path


def test_a_section_is_rebuilt_from_committed_rows_without_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    rows = committed_rows(tmp_path, tmp_path / "data")

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init called: a section from committed rows must not start Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = sw.main([*QUICK, "--workdir", str(tmp_path / "new-machine"), "--data-root", str(tmp_path / "data"),
                        "--rows", str(rows)])
    text = printed.getvalue()
    assert code == 0, text[-3000:]
    assert "6 finished, 6 imported from" in text and "partial" not in text
    section = text[text.index("## selection_wide.quick"):]
    development = section.index("### development targets — digits (photo_digits): wide sweeps, accuracy points")
    test = section.index("### test targets — digits (stroke_digits, warped_digits): wide sweeps, accuracy points")
    assert development < test
    table = section[development:test]
    assert "| fmiou | 0.00 |" in table.replace("**", "") and "| im | 30.00 |" in table
    assert "| 1/1 |" in table  # im's pick (30 %) is below the source-only reference (50 %): a collapsed pick
    assert "Trials: 9 finished, 0 failed of 9 planned in 6 sweeps" in section
    trials = load(tmp_path / "new-machine", sweep_id="sw-quick-source_only-s0-photo_digits-wide")
    assert trials["predictions_path"].isna().all()  # imported: no cache travelled, the decisions were read back


def finished_trials(store: Path) -> dict[str, object]:
    """trial id -> finished_at of every stored trial."""
    trials = load(store)
    return dict(zip(trials["trial_id"], trials["finished_at"])) if not trials.empty else {}


@pytest.mark.integration
def test_a_stopped_campaign_writes_a_partial_section_then_continues(embedded_data_root: Path, tmp_path: Path) -> None:
    """selection_wide's quick budget stopped by --max-minutes part-way: a partial section, exit 3 and the command to
    continue; the same command again finishes it without rerunning a finished trial, and the section is complete."""
    command = [sys.executable, "-m", "benchmarks.selection_wide", *QUICK, "--workdir", str(tmp_path / "store"),
               "--data-root", str(embedded_data_root), "--max-minutes", "0.05"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 3, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "stopped by --max-minutes" in out and "continue with: python -m benchmarks.selection_wide" in out
    assert "**partial: " in out and " of 6 sweeps**" in out
    before = finished_trials(tmp_path / "store")
    assert before, "the first run stored no trial"

    second = subprocess.run(command[:-2], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "**partial" not in second.stdout and "## selection_wide.quick" in second.stdout
    after = finished_trials(tmp_path / "store")
    assert {trial: after[trial] for trial in before} == before  # no finished trial ran again
    assert len(after) > len(before)


def test_search_guidance_reads_imported_rows_without_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """search_guidance's table from a rows file: each arm ships its highest score_consistency trial."""
    import ray

    from benchmarks import search_guidance as sg

    plans = sg.build_plans("quick", sg.BUDGETS["quick"], sg.ARMS, sg.GUIDE, tmp_path / "data")
    old = common.campaign_study("search_guidance-quick", tmp_path / "old", plans)
    for plan, sweep in zip(plans, old.sweeps):
        store = ResultStore(sweep.request.results)
        save_request(sweep.request)
        for index, (accuracy, score) in enumerate(((0.4, 0.9), (0.7, 0.1) if plan.kind == "optuna" else (0.2, 0.1))):
            store.write_trial({"sweep_id": plan.sweep_id, "trial_id": f"{plan.kind}-t{index}", "method": "gsda",
                               "task": "classification", "dataset": "digits", "target": "photo_digits", "seed": 0,
                               "status": "finished", "wall_time_s": 2.0, "heldout_accuracy": accuracy,
                               "hyperparameters": {"learning_rate": 0.001}, "scores": {"consistency": score}})
        compact_sweep(store, plan.sweep_id)
        mark_finished(sweep.request.sweep_dir, {"trials_stored": 2})
    rows = tmp_path / "search_guidance.parquet"
    common.export_campaign(old, rows)

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init called: a section from committed rows must not start Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = sg.main(["--budget", "quick", "--workdir", str(tmp_path / "new"), "--data-root", str(tmp_path / "data"),
                        "--rows", str(rows)])
    text = printed.getvalue()
    assert code == 0, text[-3000:]
    assert "2 imported from" in text and "partial" not in text
    assert "| 0 | 40.00 | 40.00 | +0.00 | 70.00 | 40.00 | +30.00 |" in text
    assert not (tmp_path / "data").exists()  # nothing trains, so no data was prepared


def bad_rows_files(tmp_path: Path) -> dict[str, Path]:
    """A missing file, a folder, a text file and a Parquet file that holds no study rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "text.parquet").write_text("not parquet\n")
    (tmp_path / "folder").mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "plain.parquet")
    return {"no such file": tmp_path / "missing.parquet", "not a file": tmp_path / "folder",
            "cannot read the rows file": tmp_path / "text.parquet",
            "is not a raysel study rows file": tmp_path / "plain.parquet"}


@pytest.mark.parametrize("module", ["selection_quality", "selection_wide", "search_guidance"])
def test_a_bad_rows_file_is_one_line_and_exit_2_before_any_work(module: str, tmp_path: Path, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    benchmark = importlib.import_module(f"benchmarks.{module}")

    def no_work(*args, **kwargs):
        raise AssertionError("work started despite a bad --rows")

    monkeypatch.setattr(benchmark, "campaign_study", no_work)
    for problem, path in bad_rows_files(tmp_path).items():
        with pytest.raises(SystemExit) as stopped:
            benchmark.main(["--rows", str(path), "--workdir", str(tmp_path / "w"), "--no-write"])
        assert stopped.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --rows {path}: ") and problem in lines[0], lines
    assert not (tmp_path / "w").exists()
