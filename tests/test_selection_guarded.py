"""The guarded decision (issue 29 item 5): confident only when a panel of selectors agrees and the pick is clearly ahead
of the default configuration; otherwise it keeps the default configuration (or the best accepted candidate) and
lists a short-list. Stored in the selection rows' guard columns; bad input (every trial failed, a single candidate,
every candidate collapsed) says so in one line and keeps what is stored."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from raysel.selection.agreement import guard_line
from raysel.selection.decision import select_sweep
from raysel.selection.guarded import (CLEAR_MARGIN_STANDARD_ERRORS, VETOED, GuardedDecision, default_trial_ids,
                                      guard_decision, panel_selectors, residual_noise, standardized)
from raysel.selection.predictions import CandidatePredictions, save_predictions
from raysel.store import ResultStore
from raysel.store.compaction import compact_sweep
from raysel.store.schema import SELECTION_GUARD_COLUMNS
from raysel.reporting.summary import decision_lines
from tests.test_selection_applicability import NUM_CLASSES, write_trials

IDS = [f"t{k}" for k in range(5)]
QUALITY = np.array([0.10, 0.30, 0.50, 0.90, 0.40])  # t3 is best, the default t0 worst


def table(columns: dict[str, list[float]]) -> pd.DataFrame:
    """A guard score table: one row per candidate t0..t4, one column per selector."""
    return pd.DataFrame(columns, index=IDS[:len(next(iter(columns.values())))])


def picks_of(scores: pd.DataFrame) -> dict[str, str]:
    """Each selector's pick: its highest finite score."""
    return {name: str(scores[name].replace(VETOED, np.nan).idxmax()) for name in scores}


def agreeing_scores() -> pd.DataFrame:
    """Three selectors that measure QUALITY on their own scales with a little noise: they agree, by a wide margin."""
    rng = np.random.default_rng(0)
    return table({"fmiou": list(0.2 + 0.5 * QUALITY + rng.normal(0, 0.01, 5)),
                  "consistency": list(0.6 + 0.3 * QUALITY + rng.normal(0, 0.01, 5)),
                  "im": list(-1.0 + 2.0 * QUALITY + rng.normal(0, 0.02, 5))})


# ---- the panel and the noise ----------------------------------------------------------------------------------


def test_the_panel_is_the_headline_and_the_first_two_companions_that_scored() -> None:
    assert panel_selectors("fmiou", ["fmiou", "im", "snd", "cluster_ami", "soft_vote"]) == ("fmiou", "im",
                                                                                             "cluster_ami")
    assert panel_selectors("consistency", ["consistency", "fmiou", "im"]) == ("consistency", "im", "fmiou")
    assert panel_selectors("fmiou", ["fmiou", "snd"]) == ("fmiou",)


def test_standardised_scores_share_a_scale_and_broken_outliers_are_clipped() -> None:
    scores = table({"a": [0.1, 0.2, 0.3, 0.4, -50.0], "b": [10.0, 20.0, 30.0, 40.0, VETOED]})
    z = standardized(scores)
    assert z["a"].iloc[:4].tolist() == pytest.approx(z["b"].iloc[:4].tolist(), abs=0.5)
    assert z.at["t4", "a"] == -3.0 and math.isnan(z.at["t4", "b"])  # clipped; a vetoed candidate has no z
    assert standardized(table({"c": [1.0] * 5}))["c"].tolist() == [0.0] * 5  # a constant selector says nothing


def test_residual_noise_is_zero_for_identical_rankings_and_grows_with_disagreement() -> None:
    same = standardized(table({"a": list(QUALITY), "b": list(QUALITY * 3 + 1)}))
    assert residual_noise(same) == pytest.approx(0.0, abs=1e-12)
    mixed = standardized(table({"a": list(QUALITY), "b": list(QUALITY[::-1])}))
    assert residual_noise(mixed) > 0.5
    assert math.isnan(residual_noise(standardized(table({"a": list(QUALITY)}))))  # one column: no noise estimate


# ---- the verdict ------------------------------------------------------------------------------------------------


def test_agreeing_selectors_clearly_ahead_of_the_default_are_confident() -> None:
    scores = agreeing_scores()
    guard = guard_decision(scores, picks_of(scores), "fmiou", default_trial_id="t0")
    assert guard.confident and guard.trial_id == "t3" and guard.shortlist == ("t3",)
    assert guard.panel == ("fmiou", "consistency", "im") and guard.default_trial_id == "t0"
    assert "agree" in guard.reason and f"> {CLEAR_MARGIN_STANDARD_ERRORS:g} × standard error" in guard.reason


def test_disagreeing_selectors_keep_the_default_configuration_and_list_their_picks() -> None:
    scores = agreeing_scores()
    scores.loc["t1", "im"] = 5.0  # im now picks t1
    guard = guard_decision(scores, picks_of(scores), "fmiou", default_trial_id="t0")
    assert not guard.confident and guard.trial_id == "t0"
    assert guard.shortlist == ("t3", "t1")  # the distinct picks, the headline's first
    assert guard.reason == "selectors disagree: fmiou, consistency → t3; im → t1"


def test_without_a_default_candidate_the_best_accepted_candidate_is_kept() -> None:
    """No default configuration in the sweep: keep the highest panel consensus among the candidates every panel
    selector scored and none left out, that are not collapsed."""
    scores = agreeing_scores()
    scores.loc["t1", "im"] = 5.0  # disagreement; t3 still has the highest consensus
    guard = guard_decision(scores, picks_of(scores), "fmiou")
    assert not guard.confident and guard.trial_id == "t3" and guard.default_trial_id is None
    assert guard_decision(scores, picks_of(scores), "fmiou", collapsed=["t3"]).trial_id == "t1"
    vetoed = scores.copy()
    vetoed.loc["t3", "consistency"] = VETOED  # consistency's guards left t3 out: not accepted
    vetoed_guard = guard_decision(vetoed, picks_of(vetoed), "fmiou")
    assert vetoed_guard.trial_id == "t1" and vetoed_guard.shortlist == ("t3", picks_of(vetoed)["consistency"], "t1")


def test_a_pick_not_clearly_ahead_of_the_default_keeps_the_default() -> None:
    """Every selector ranks t3 just above the default t0, but they disagree wildly on the rest: within the noise."""
    scores = table({"fmiou": [0.49, 0.10, 0.45, 0.50, 0.30], "consistency": [0.49, 0.45, 0.10, 0.50, 0.20],
                    "im": [0.49, 0.30, 0.20, 0.50, 0.45]})
    guard = guard_decision(scores, picks_of(scores), "fmiou", default_trial_id="t0")
    assert set(picks_of(scores).values()) == {"t3"}
    assert not guard.confident and guard.trial_id == "t0" and guard.shortlist == ("t3",)
    assert guard.reason.startswith("t3 is not clearly better: consensus margin over the default configuration t0")


def test_the_default_itself_a_left_out_default_and_a_lone_selector() -> None:
    scores = agreeing_scores()
    assert guard_decision(scores, picks_of(scores), "fmiou", default_trial_id="t3").reason.endswith(
        "agree on the default configuration")
    vetoed = scores.copy()
    vetoed.loc["t0", "im"] = VETOED  # im's guards left the default out (e.g. non-finite outputs): beaten
    guard = guard_decision(vetoed, picks_of(vetoed), "fmiou", default_trial_id="t0")
    assert guard.confident and "im left the default configuration t0 out" in guard.reason
    unscored = scores.copy()
    unscored.loc["t0", "consistency"] = np.nan  # consistency never scored it: no comparison, keep it
    guard = guard_decision(unscored, picks_of(unscored), "fmiou", default_trial_id="t0")
    assert not guard.confident and guard.trial_id == "t0" and "no score from consistency" in guard.reason
    lone = guard_decision(scores[["fmiou"]], {"fmiou": "t3"}, "fmiou", default_trial_id="t0")
    assert not lone.confident and lone.trial_id == "t0" and "nothing corroborates" in lone.reason


def test_guard_columns_are_the_schemas() -> None:
    guard = GuardedDecision(False, "t0", "why", ("t3", "t1"), ("fmiou", "im"), "t0")
    assert list(guard.columns()) == list(SELECTION_GUARD_COLUMNS)
    assert guard.columns()["shortlist"] == ["t3", "t1"]


def test_default_trial_ids_compare_only_the_swept_hyperparameters() -> None:
    @dataclasses.dataclass
    class Config:
        alpha: float = 0.2
        iterations: int = 150

    trials = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "target": ["x", "x", "y", "y"],
                           "status": ["finished", "finished", "finished", "failed"],
                           "hp_alpha": [0.1, 0.2, 0.2 + 1e-12, 0.2], "hp_iterations": [100, 100, 100, 100]})
    assert default_trial_ids(trials, Config(), ["alpha"]) == {"x": "b", "y": "c"}  # iterations is not swept
    assert default_trial_ids(trials, Config(), ["alpha", "iterations"]) == {}
    assert default_trial_ids(trials, {"alpha": 0.2}, ["alpha", "lambda_"]) == {}  # a swept name without a column
    shapes = pd.DataFrame({"trial_id": ["a", "b", "c"], "target": ["x"] * 3, "status": ["finished"] * 3,
                           "hp_crop": [np.array([64, 64]), np.array([32, 32]), None], "hp_mode": ["u", "v", pd.NA]})
    assert default_trial_ids(shapes, {"crop": (32, 32), "mode": "v"}, ["crop", "mode"]) == {"x": "b"}


# ---- recorded in the store, shown by the summary ------------------------------------------------------------


def test_guard_columns_round_trip_through_duckdb_and_compaction(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    write_trials(store, tmp_path, [(f"t{k}", "finished", {"heldout_accuracy": 0.5 + 0.1 * k}) for k in range(3)])
    decisions = select_sweep(store, "sw", stream=io.StringIO(), record_all=True, default_trials={"mnistm": "t2"})
    expected = {key: decisions[0][key] for key in SELECTION_GUARD_COLUMNS}
    assert all({key: d[key] for key in SELECTION_GUARD_COLUMNS} == expected for d in decisions)  # one per target
    file = next((store.root / "selections").rglob("*.parquet"))
    schema = pq.read_schema(file)
    assert {name: schema.field(name).type for name in SELECTION_GUARD_COLUMNS} == SELECTION_GUARD_COLUMNS
    for stage in ("per-row files", "compacted"):
        rows = store.sql("SELECT guard_confident, guard_reason, guarded_trial_id, default_trial_id, shortlist, "
                         "guard_selectors FROM selections WHERE headline").to_dict("records")
        assert len(rows) == 1, stage
        row = rows[0]
        assert bool(row["guard_confident"]) == expected["guard_confident"] and row["default_trial_id"] == "t2"
        assert row["guard_reason"] == expected["guard_reason"]
        assert row["guarded_trial_id"] == expected["guarded_trial_id"]
        assert list(row["shortlist"]) == expected["shortlist"] and list(row["guard_selectors"])[0] == "fmiou"
        compact_sweep(store, "sw")
    again = select_sweep(store, "sw", stream=io.StringIO(), record_all=True)  # re-scoring: the recorded default
    assert again[0]["default_trial_id"] == "t2"


def test_raysel_select_and_the_report_show_the_guard_line(tmp_path: Path, capsys) -> None:
    from raysel import select
    from raysel.reporting.sweep_report import _decision_lines

    store = ResultStore(tmp_path / "results")
    write_trials(store, tmp_path, [(f"t{k}", "finished", {}) for k in range(3)])
    select_sweep(store, "sw", stream=io.StringIO(), record_all=True, default_trials={"mnistm": "t0"})
    assert select.main(["sw", "--results", str(store.root)]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("decision on mnistm: ")]
    assert len(shown) == 1
    reported = _decision_lines(store.load(table="selections", sweep_id="sw"), "sw")
    assert [line for line in reported if line.startswith("decision on mnistm: ")] == [f"{shown[0]}."]


def test_summary_and_select_show_one_guard_line_per_target() -> None:
    base = {"target": "day", "selector": "fmiou", "selected_trial_id": "t3", "headline": True, "score": 0.5,
            "num_candidates": 5, "guard_selectors": ["fmiou", "im"]}
    confident = {**base, "guard_confident": True, "guard_reason": "fmiou, im agree", "guarded_trial_id": "t3",
                 "default_trial_id": "t0", "shortlist": ["t3"]}
    assert guard_line(confident) == "decision on day: confident: trial t3 (fmiou, im agree)"
    unsure = {**confident, "guard_confident": False, "guard_reason": "selectors disagree: fmiou → t3; im → t1",
              "guarded_trial_id": "t0", "shortlist": np.array(["t3", "t1"])}
    assert guard_line(unsure) == ("decision on day: no confident winner (selectors disagree: fmiou → t3; im → t1): "
                                  "keeping the default configuration, trial t0; short-list: t3, t1")
    assert "keeping trial t1, the best candidate the guard accepts" in guard_line({**unsure, "guarded_trial_id": "t1"})
    assert guard_line(base) is None  # a row recorded before the guard existed
    assert sum(line.startswith("decision on day:") for line in decision_lines([unsure])) == 1


# ---- bad input: every trial failed, a single candidate, every candidate collapsed -------------------------------


def collapsed_cache(path: Path, seed: int) -> str:
    """A classification cache whose predictions are class 0 for 38 of 40 images: fewer than 2 effective classes."""
    labels = np.zeros(40, dtype=np.uint8)
    labels[np.random.default_rng(seed).choice(40, 2, replace=False)] = 1
    probabilities = np.full((40, NUM_CLASSES), 0.1, dtype=np.float32)
    probabilities[np.arange(40), labels] = 0.8
    candidate = CandidatePredictions(labels=labels, probabilities=probabilities, image_ids=tuple(
        f"img{k}" for k in range(40)), image_indices=np.arange(40), num_classes=NUM_CLASSES, task="classification")
    return str(save_predictions(path, candidate))


def an_old_decision(store: ResultStore) -> None:
    """A decision recorded earlier, which bad input must leave in place."""
    store.write_selection({"sweep_id": "sw", "method": "gsda", "target": "mnistm", "selector": "fmiou",
                           "selected_trial_id": "t0", "score": 0.5, "num_candidates": 2, "headline": True})


@pytest.mark.parametrize("specs, line", [
    ([("t0", "failed", {}), ("t1", "stopped", {})],
     "target mnistm: no decision: every trial failed or stopped (2 trial(s)), so there is no candidate; the stored "
     "rows are kept as they are"),
    ([("t0", "finished", {}), ("t1", "failed", {})],
     "target mnistm: no decision: a single finished candidate (trial t0; 1 other trial(s) failed or stopped), so "
     "there is nothing to choose among; the stored rows are kept as they are"),
])
def test_nothing_to_choose_among_is_one_line_no_decision_and_the_store_kept(tmp_path: Path, specs: list,
                                                                           line: str, capsys) -> None:
    from raysel import select

    store = ResultStore(tmp_path / "results")
    write_trials(store, tmp_path, specs)
    an_old_decision(store)
    printed = io.StringIO()
    assert select_sweep(store, "sw", stream=printed, record_all=True) == []
    assert printed.getvalue().splitlines() == [line]
    with pytest.raises(SystemExit) as exited:  # `raysel select`: the exit status of "no decision", as before
        select.main(["sw", "--results", str(store.root)])
    assert exited.value.code == 2
    assert capsys.readouterr().out.splitlines() == [line]
    kept = store.load(table="selections", sweep_id="sw")
    assert list(kept["selected_trial_id"]) == ["t0"] and len(store.load_sweep("sw")) == 2


def test_every_candidate_collapsed_is_one_guard_line_keeping_the_default(tmp_path: Path) -> None:
    """The selectors still score and record (as before), the guard says in one line that every candidate collapsed
    and keeps the default configuration (else the headline's pick); nothing stored is deleted."""
    store = ResultStore(tmp_path / "results")
    write_trials(store, tmp_path, [(f"t{k}", "finished", {"no_cache": True}) for k in range(3)])
    for k in range(3):
        store.update_trial_columns("sw", f"t{k}", {"predictions_path": collapsed_cache(
            tmp_path / f"t{k}" / "predictions.npz", k)})
    an_old_decision(store)
    decisions = select_sweep(store, "sw", stream=io.StringIO(), record_all=True, default_trials={"mnistm": "t1"})
    headline = decisions[0]
    assert headline["selector"] == "fmiou" and not headline["guard_confident"]
    assert headline["guard_reason"] == "all 3 candidates are collapsed (each predicts fewer than 2 effective classes)"
    assert headline["guarded_trial_id"] == "t1"
    lines = [line for line in decision_lines(decisions) if "collapsed" in line]
    assert len(lines) == 1 and lines[0].startswith("decision on mnistm: no confident winner (all 3 candidates")
    no_default = select_sweep(store, "sw", stream=io.StringIO(), record_all=True, default_trials={})
    assert no_default[0]["guarded_trial_id"] == no_default[0]["selected_trial_id"]
    assert len(store.load(table="selections", sweep_id="sw")) >= len(decisions)
