"""A real tiny HIAST sweep with --mlflow on a local sqlite MLflow store, read back with MlflowClient."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY_HIAST
from raysel.tracking import EXPERIMENT, PARENT_TAG, SWEEP_TAG, TRIAL_TAG

pytestmark = pytest.mark.integration


def test_sweep_tracks_one_run_per_trial_under_a_parent_run_with_the_decision(ray_local, embedded_data_root: Path,
                                                                             tmp_path: Path) -> None:
    from raysel.sweep import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    arguments = [argument if not argument.startswith("alpha=") else "alpha={grid: [0.3, 0.7]}" for argument in TINY_HIAST]
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["hiast", "--data-root", str(embedded_data_root), "--results", str(tmp_path / "results"),
                     "--name", "tracked", "--mlflow", uri, *arguments])
    assert code == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'tracked'")
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    children = [run for run in runs if PARENT_TAG in run.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    decided = parent.data.tags["raysel.decision.day_city"]
    assert decided in {run.data.tags[TRIAL_TAG] for run in children}
    assert "decision_score.day_city.fmiou" in parent.data.metrics
    for run in children:
        assert run.data.tags[PARENT_TAG] == parent.info.run_id
        assert run.data.params["hp/alpha"] in ("0.3", "0.7") and "hp/lambda_i" in run.data.params
        assert "hp/tau" in run.data.params  # a default hyperparameter the space does not mention, from the store
        assert len(client.get_metric_history(run.info.run_id, "training_iteration")) >= 2  # metrics over time
        assert "score_fmiou" in run.data.metrics and "target_confidence" in run.data.metrics
        assert "oracle_heldout_miou" in run.data.metrics
        assert not any(name.startswith("heldout") for name in run.data.metrics)
