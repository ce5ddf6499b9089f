"""`python -m raysel.select` and the label-free guarantee: selection never opens a held-out label file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raysel.errors import UserError
from raysel.select import main as select_main

REPO = Path(__file__).resolve().parent.parent


class OpenedFiles:
    """Record every file path opened in this process while active (a CPython audit hook sees every open)."""

    def __init__(self) -> None:
        self.active = False
        self.paths: list[str] = []
        sys.addaudithook(self._hook)  # audit hooks cannot be removed; `active` switches recording off

    def _hook(self, event: str, args: tuple) -> None:
        if self.active and event == "open" and args and isinstance(args[0], (str, bytes, Path)):
            self.paths.append(str(args[0]))


SELECTORS_AUDITED = ("fmiou", "soft_vote", "entropy", "im", "snd", "cluster_ami", "robust", "consistency",
                     "classmix_consistency")


@pytest.mark.integration
def test_selection_never_opens_heldout_labels(tiny_hiast_sweep: dict, tmp_path: Path) -> None:
    """Re-select (every selector and the score estimate) with every held-out label folder moved away AND an audit of
    every open: no label is touched."""
    from raysel.selection.decision import select_sweep
    from raysel.store import ResultStore

    data_root = Path(tiny_hiast_sweep["data_root"])
    results = tmp_path / "results"  # a copy: the shared sweep's own decisions stay as the sweep wrote them
    shutil.copytree(tiny_hiast_sweep["results"], results)
    label_folders = sorted(data_root.glob("street_scenes/*/gtFine"))
    assert label_folders, "the embedded targets should have gtFine label folders"
    hidden = [folder.with_name("gtFine.hidden-during-selection") for folder in label_folders]
    opened = OpenedFiles()
    for folder, away in zip(label_folders, hidden):
        folder.rename(away)
    try:
        opened.active = True
        decisions = select_sweep(ResultStore(results), "tiny", selectors=SELECTORS_AUDITED)
        opened.active = False
    finally:
        opened.active = False
        for folder, away in zip(label_folders, hidden):
            away.rename(folder)
    assert {d["selector"] for d in decisions} == set(SELECTORS_AUDITED)
    # The label-free score estimate runs inside the same audited selection (no source validation split here: the
    # agreement estimate of 3 candidates).
    assert ResultStore(results).load_sweep("tiny")["estimate_score"].notna().any()
    assert any(path.endswith("predictions.npz") for path in opened.paths)
    touched = [p for p in opened.paths if "gtFine" in p or "labels" in Path(p).parts or "heldout" in Path(p).parts]
    assert touched == []


@pytest.mark.integration
def test_select_cli_rescoring_records_decisions(tiny_hiast_sweep: dict, tmp_path: Path) -> None:
    results = tmp_path / "results"  # a copy: the shared sweep's own decisions stay as the sweep wrote them
    shutil.copytree(tiny_hiast_sweep["results"], results)
    result = subprocess.run([sys.executable, "-m", "raysel.select", "tiny", "--results", str(results),
                             "--selector", "rank_mean"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "rank_mean" in result.stdout
    from raysel import store

    selections = store.load(results, table="selections", sweep_id="tiny")
    assert "rank_mean" in set(selections["selector"])


def test_select_unknown_sweep_is_a_clear_error(tmp_path: Path) -> None:
    from raysel.selection.decision import select_sweep
    from raysel.store import ResultStore

    store = ResultStore(tmp_path)
    store.check_writable()
    with pytest.raises(UserError, match="no-such-sweep"):
        select_sweep(store, "no-such-sweep")


def test_select_cli_unknown_sweep_exits_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        select_main(["no-such-sweep", "--results", str(tmp_path)])
    error = capsys.readouterr().err
    assert exited.value.code == 2 and error.startswith("error: ") and "Traceback" not in error


# --------------------------------------------------------------------------------------------------------------
# Candidate prediction as Ray tasks (raysel.execution.repredict)
# --------------------------------------------------------------------------------------------------------------


def write_sweep_with_checkpoints(results: Path, with_predictions: tuple[str, ...] = ("t0", "t2")):
    """A stored sweep (settings file, trial rows, checkpoint files) as raysel.sweep lays it out; no model inside."""
    from raysel.request import save_request
    from raysel.request_build import build_request
    from raysel.store import ResultStore

    request = build_request(method="hiast", name="s", results=results, data_root="/data", source="game",
                             selection_size=12, target=["day_city"], cpus_per_worker=2.0, gpus_per_worker=0.5)
    save_request(request)
    store = ResultStore(results)
    for trial_id in ("t0", "t1", "t2"):
        trial_dir = request.trial_dir(trial_id)
        trial_dir.mkdir(parents=True)
        (trial_dir / "model.pt").write_bytes(b"state")
        if trial_id in with_predictions:
            (trial_dir / "predictions.npz").write_bytes(b"cache")
        store.write_trial({"sweep_id": "s", "trial_id": trial_id, "method": "hiast", "target": "day_city",
                           "status": "finished", "checkpoint_path": str(trial_dir / "model.pt"),
                           "predictions_path": str(trial_dir / "predictions.npz")})
    store.write_trial({"sweep_id": "s", "trial_id": "t9", "method": "hiast", "target": "day_city",
                       "status": "failed", "error": "boom"})
    return request, store


def test_prediction_jobs_ask_for_the_trials_resources_and_only_missing_files(tmp_path: Path) -> None:
    from raysel.execution.repredict import prediction_jobs

    request, store = write_sweep_with_checkpoints(tmp_path / "results")
    (job,) = prediction_jobs(store, "s")
    assert job.trial_id == "t1" and (job.num_cpus, job.num_gpus) == (2.0, 0.5)
    assert job.checkpoint_path == str(request.trial_dir("t1") / "model.pt")
    assert job.predictions_path == str(request.trial_dir("t1") / "predictions.npz")
    assert job.run["target"] == "day_city" and job.run["selection_size"] == 12 and job.run["num_threads"] == 2
    assert job.run["output_dir"] == str(request.trial_dir("t1"))
    every = prediction_jobs(store, "s", only_missing=False)
    assert [j.trial_id for j in every] == ["t0", "t1", "t2"]  # the failed trial is no candidate


def test_prediction_jobs_of_a_copied_store_write_into_the_copy(tmp_path: Path) -> None:
    from raysel.execution.repredict import prediction_jobs, relocated_path
    from raysel.store import ResultStore

    write_sweep_with_checkpoints(tmp_path / "original")
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "original", copy)
    (copy / "sweeps" / "s" / "trials" / "t0" / "predictions.npz").unlink()  # the original still has it
    jobs = prediction_jobs(ResultStore(copy), "s")
    assert [j.trial_id for j in jobs] == ["t0", "t1"]
    for job in jobs:
        assert Path(job.predictions_path).is_relative_to(copy.resolve())
        assert Path(job.checkpoint_path).is_relative_to(copy.resolve())
    assert relocated_path("/elsewhere/model.pt", tmp_path / "original", copy) == Path("/elsewhere/model.pt")
    assert relocated_path(tmp_path / "x", None, copy) == tmp_path / "x"


def test_prediction_jobs_name_what_is_missing(tmp_path: Path) -> None:
    from raysel.errors import DataError
    from raysel.execution.repredict import prediction_jobs

    request, store = write_sweep_with_checkpoints(tmp_path / "results")
    (request.trial_dir("t1") / "model.pt").unlink()
    with pytest.raises(DataError, match="trial t1 of sweep 's' has no predictions file and no model checkpoint"):
        prediction_jobs(store, "s")
    (request.trial_dir("t1") / "model.pt").write_bytes(b"state")
    (request.sweep_dir / "sweep.json").unlink()
    with pytest.raises(DataError, match="sweep.json is missing"):
        prediction_jobs(store, "s")
    with pytest.raises(UserError, match="no-such-sweep"):
        prediction_jobs(store, "no-such-sweep")


def test_uncached_candidates_are_exactly_what_re_prediction_would_predict(tmp_path: Path) -> None:
    """`raysel select` skips re-prediction (and Ray, and torch) only when prediction_jobs would find nothing to do."""
    from raysel.execution.repredict import prediction_jobs
    from raysel.selection.applicability import uncached_candidates
    from raysel.store import ResultStore

    def both(store: ResultStore, recorded_root: Path) -> tuple[list[str], list[str]]:
        uncached = uncached_candidates(store.load_sweep("s"), store.root, recorded_root)
        return uncached, [job.trial_id for job in prediction_jobs(store, "s")]

    request, store = write_sweep_with_checkpoints(tmp_path / "original")
    assert both(store, request.results) == (["t1"], ["t1"])  # the failed trial is no candidate
    (request.trial_dir("t1") / "predictions.npz").write_bytes(b"cache")
    assert both(store, request.results) == ([], [])
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "original", copy)
    assert both(ResultStore(copy), request.results) == ([], [])  # the copy's own files, found through relocation
    (copy / "sweeps" / "s" / "trials" / "t0" / "predictions.npz").unlink()  # the original still has it
    assert both(ResultStore(copy), request.results) == (["t0"], ["t0"])


def test_nothing_missing_means_no_ray_and_no_change(tmp_path: Path) -> None:
    from raysel.execution.repredict import repredict_sweep

    _, store = write_sweep_with_checkpoints(tmp_path / "results", with_predictions=("t0", "t1", "t2"))
    assert repredict_sweep(store, "s") == []


def test_update_trial_columns_keeps_types_and_other_columns(tmp_path: Path) -> None:
    _, store = write_sweep_with_checkpoints(tmp_path / "results")
    store.update_trial_columns("s", "t1", {"predictions_path": "/new/predictions.npz"})
    row = store.read_trial("s", "t1")
    assert row["predictions_path"] == "/new/predictions.npz" and row["status"] == "finished"
    with pytest.raises(ValueError, match="no column 'nonexistent'"):
        store.update_trial_columns("s", "t1", {"nonexistent": 1})


@pytest.mark.integration
def test_repredict_as_ray_tasks_reproduces_the_trials_predictions(tiny_hiast_sweep: dict, tmp_path: Path) -> None:
    """Delete a copied sweep's prediction files; one Ray task per candidate predicts them again, identically."""
    import numpy as np

    from raysel.selection.decision import select_sweep
    from raysel.selection.predictions import load_predictions
    from raysel.execution.repredict import repredict_sweep
    from raysel.store import ResultStore

    results = tmp_path / "results"
    shutil.copytree(tiny_hiast_sweep["results"], results)
    copies = sorted(results.glob("sweeps/tiny/trials/*/predictions.npz"))
    assert len(copies) == 3
    for path in copies:
        path.unlink()
    store = ResultStore(results)
    jobs = repredict_sweep(store, "tiny")  # joins the test session's Ray (ray_local)
    assert len(jobs) == 3 and all(path.is_file() for path in copies)
    rows = store.load_sweep("tiny").set_index("trial_id")
    originals = Path(tiny_hiast_sweep["results"]) / "sweeps" / "tiny" / "trials"
    for path in copies:
        trial_id = path.parent.name
        assert rows.loc[trial_id, "predictions_path"] == str(path.resolve())  # the copy's row points into the copy
        original = load_predictions(originals / trial_id / "predictions.npz")
        again = load_predictions(path)
        np.testing.assert_array_equal(again.labels, original.labels)
        np.testing.assert_array_equal(again.image_indices, original.image_indices)
        assert again.image_ids == original.image_ids
        np.testing.assert_allclose(again.probabilities.astype(np.float32), original.probabilities.astype(np.float32),
                                   atol=2e-3)
    decisions = select_sweep(store, "tiny", selectors=("fmiou",))
    recorded = ResultStore(tiny_hiast_sweep["results"]).load("selections", sweep_id="tiny")
    assert decisions[0]["selected_trial_id"] == recorded[recorded["selector"] == "fmiou"]["selected_trial_id"].iloc[0]

    # --repredict recomputes every candidate, present or not, through the select command itself.
    from raysel.select import main as select_main

    before = {path: path.stat().st_mtime_ns for path in copies}
    assert select_main(["tiny", "--results", str(results), "--repredict", "--selector", "fmiou"]) == 0
    assert all(path.stat().st_mtime_ns > before[path] for path in copies)
