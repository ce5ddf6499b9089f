"""raysel.tracking: MLflow URIs checked before any trial, oracle-marked metrics, parent run carrying the decision
(a real sqlite MLflow store, read back with MlflowClient)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from raysel.errors import UserError
from raysel.tracking import PARENT_TAG, TRIAL_TAG, SweepTracker, check_tracking_uri, oracle_marked
from tests.test_report import build_store


def test_heldout_metrics_are_marked_oracle() -> None:
    marked = oracle_marked({"heldout_miou": 0.4, "target_confidence": 0.8, "epoch": 2})
    assert marked == {"oracle_heldout_miou": 0.4, "target_confidence": 0.8, "epoch": 2}


@pytest.mark.parametrize("uri, words", [("http://127.0.0.1:9", "no MLflow server reachable at 127.0.0.1:9"),
                                        ("ftp://example/store", "unsupported tracking URI scheme 'ftp'"),
                                        ("/tmp/mlruns", "use sqlite:///PATH/mlflow.db")])
def test_unusable_uris_are_one_clear_error(uri: str, words: str) -> None:
    with pytest.raises(UserError, match="--mlflow") as raised:
        check_tracking_uri(uri, timeout_s=2)
    assert words in str(raised.value) and "\n" not in str(raised.value)


def test_parent_run_carries_the_decision_and_trial_runs_get_every_hyperparameter(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker.start(uri, "sweep-a", {"method": "hiast", "targets": ["day_city"]})
    client = MlflowClient(uri)
    # what Ray's callback leaves for each trial: a child run tagged with the trial id (the integration test runs it)
    for trial in ("t1", "t2"):
        client.create_run(tracker.experiment_id, tags={PARENT_TAG: tracker.parent_run_id, TRIAL_TAG: trial})
    trials = build_store(tmp_path / "results").load_sweep("sweep-a")
    decision = {"target": "day_city", "selector": "fmiou", "selected_trial_id": "t2", "score": 0.9,
                "heldout_regret": 2.0}
    tracker.finish(trials, [decision])
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["method"] == "hiast"
    assert parent.data.tags["raysel.decision.day_city"] == "t2"
    assert parent.data.metrics == {"decision_score.day_city.fmiou": 0.9, "oracle_regret.day_city.fmiou": 2.0}
    runs = tracker.trial_runs()
    t2 = client.get_run(runs["t2"]).data
    assert {"hp/alpha": "0.7", "hp/k": "4", "hp/final_model": "teacher", "hp/rounds": "[1, 2]"}.items() <= \
        t2.params.items()
    assert t2.metrics["score_fmiou"] == 0.9 and t2.metrics["oracle_heldout_miou"] == pytest.approx(0.46)
    assert not any(name.startswith("heldout") for name in t2.metrics)


def test_sweep_with_an_unreachable_mlflow_stops_before_any_trial(tmp_path: Path, capsys) -> None:
    from raysel.sweep import main

    with pytest.raises(SystemExit) as exited:
        main(["hiast", "--results", str(tmp_path / "results"), "--name", "s", "--mlflow", "http://127.0.0.1:9"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "127.0.0.1:9" in error
    assert not (tmp_path / "results" / "sweeps").exists()
