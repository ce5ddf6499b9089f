"""`python -m raysel.sweep gsda --scheduler asha --objective consistency` on a real local Ray (tiny budget): ASHA
compares trials on the perturbation-consistency score computed at every report, and the stored rows carry it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.sweep_runner import run_sweep_in

pytestmark = pytest.mark.integration

# GSDA from scratch (no shared source stage), 3 reports; only the learning rate varies (the YAML's grid is fixed).
TINY_GSDA = ["--set", "init_from_source=false", "--set", "iterations=6", "--set", "num_reports=3",
             "--set", "batch_size=16", "--set", "alpha=0.02", "--set", "beta=1.0", "--set", "groups=3"]


def test_asha_guided_by_a_trial_scored_selector(ray_local, embedded_data_root: Path, tmp_path: Path) -> None:
    from raysel import store
    code, printed = run_sweep_in(tmp_path, [
        "gsda", "--data-root", str(embedded_data_root), "--results", "results", "--name", "asha", "--selection-size",
        "12", "--progress-interval", "5", *TINY_GSDA, "--set", "learning_rate={loguniform: [1.0e-3, 1.0e-1]}",
        "--search", "random", "--num-samples", "3", "--scheduler", "asha", "--objective", "consistency",
        "--target", "photo_digits"])
    assert code == 0, printed[-4000:]

    trials = store.load(tmp_path / "results", sweep_id="asha")
    assert 1 <= len(trials) <= 3 and set(trials["status"]) == {"finished"}, trials[["trial_id", "status", "error"]]
    assert trials["score_consistency"].between(0, 1).all() and trials["heldout_accuracy"].between(0, 1).all()
    # Every result Tune received, intermediate ones included, carried the objective ASHA compares.
    results = [json.loads(line) for path in (tmp_path / "results" / "sweeps" / "asha" / "tune").glob("*/result.json")
               for line in path.read_text().splitlines() if line.strip()]
    intermediate = [result for result in results if result["epoch"] < 1000]
    assert len(intermediate) >= 3, results
    assert all(0.0 <= result["score_consistency"] <= 1.0 for result in results)
