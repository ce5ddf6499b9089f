"""Every sweep records every applicable selector: applicability reasons, headline decisions, side-by-side picks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from raysel.reporting.summary import decision_lines, format_trials_table
from raysel.selection.agreement import agreement_line, agreement_lines, headline_selectors, picks_by_target
from raysel.selection.applicability import applicable_selectors, recorded_selectors
from raysel.selection.decision import select_sweep
from raysel.selection.predictions import CandidatePredictions, save_predictions
from raysel.selection.selectors import TRIAL_SCORE_SELECTORS, get_selector, selector_names
from raysel.store import ResultStore

NUM_CLASSES = 3
PROBABILITY_SELECTORS = ("soft_vote", "entropy", "im", "snd", "rank_mean")


def classification_cache(path: Path, accuracy_noise: float, seed: int, with_probabilities: bool = True) -> str:
    """A saved classification prediction cache of 40 images: class k//... with ``accuracy_noise`` of them flipped."""
    rng = np.random.default_rng(seed)
    truth = np.arange(40) % NUM_CLASSES
    flip = rng.random(40) < accuracy_noise
    labels = np.where(flip, (truth + 1) % NUM_CLASSES, truth).astype(np.uint8)
    probabilities = np.full((40, NUM_CLASSES), 0.1, dtype=np.float32)
    probabilities[np.arange(40), labels] = 0.8
    candidate = CandidatePredictions(labels=labels, probabilities=probabilities if with_probabilities else None,
                                     image_ids=tuple(f"img{k}" for k in range(40)), image_indices=np.arange(40),
                                     num_classes=NUM_CLASSES, task="classification")
    return str(save_predictions(path, candidate))


def write_trials(store: ResultStore, folder: Path, specs: list[tuple[str, str, dict]], method: str = "gsda") -> None:
    """Trial rows (id, status, extra keys) of sweep 'sw' on target 'mnistm'; finished ones get a prediction cache."""
    for index, (trial_id, status, extra) in enumerate(specs):
        row = {"sweep_id": "sw", "trial_id": trial_id, "method": method, "task": "classification",
               "dataset": "digits", "source": "mnist", "target": "mnistm", "seed": 0, "status": status,
               "hyperparameters": {"alpha": 0.1 * (index + 1)}}
        if status == "finished" and not extra.pop("no_cache", False):
            row["predictions_path"] = classification_cache(folder / trial_id / "predictions.npz", 0.1 * index,
                                                           index, extra.pop("with_probabilities", True))
        row.update(extra)
        store.write_trial(row)


def test_recorded_selectors_put_the_preferred_first_and_keep_every_registered_one() -> None:
    order = recorded_selectors(("merge_quality", "fmiou"))
    assert order[:2] == ("merge_quality", "fmiou") and sorted(order) == sorted(selector_names())


def test_every_prediction_selector_applies_and_trial_scores_need_their_column(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    write_trials(store, tmp_path, [("t0", "finished", {}), ("t1", "finished", {}), ("t2", "failed", {})])
    verdicts = dict(applicable_selectors(store.load_sweep("sw")))
    assert [name for name, reason in verdicts.items() if reason is None] == [  # these caches hold no features
        name for name in selector_names()
        if name not in TRIAL_SCORE_SELECTORS and not getattr(get_selector(name), "needs_features", False)]
    assert all("score_" + name in verdicts[name] for name in TRIAL_SCORE_SELECTORS)
    assert "score_merge_quality" in verdicts["merge_quality"]


@pytest.mark.parametrize("specs, reason", [
    ([("t0", "failed", {}), ("t1", "stopped", {})], "no finished candidate (2 trial(s) failed or stopped)"),
    ([("t0", "finished", {}), ("t1", "failed", {})], "only 1 of 1 finished candidate(s) have a prediction cache"),
    ([("t0", "finished", {}), ("t1", "finished", {"no_cache": True})], "only 1 of 2 finished"),
])
def test_reasons_name_what_is_missing(tmp_path: Path, specs: list, reason: str) -> None:
    store = ResultStore(tmp_path / "results")
    write_trials(store, tmp_path, specs)
    verdicts = dict(applicable_selectors(store.load_sweep("sw"), ["fmiou", "im"]))
    assert all(reason in verdict for verdict in verdicts.values()), verdicts


def test_missing_probabilities_skip_only_the_selectors_that_need_them(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    write_trials(store, tmp_path, [("t0", "finished", {}), ("t1", "finished", {"with_probabilities": False}),
                                   ("t2", "finished", {})])
    verdicts = dict(applicable_selectors(store.load_sweep("sw")))
    assert verdicts["fmiou"] is None and verdicts["confident_fmiou"] is None
    for name in PROBABILITY_SELECTORS:
        assert "no probabilities cached for trial(s) t1" in verdicts[name] and "--repredict" in verdicts[name]


def test_select_sweep_records_all_applicable_and_the_methods_default_decides(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    write_trials(store, tmp_path, [("t0", "finished", {"heldout_accuracy": 0.9}),
                                   ("t1", "finished", {"heldout_accuracy": 0.7, "with_probabilities": False}),
                                   ("t2", "finished", {"heldout_accuracy": 0.8}), ("t3", "failed", {})])
    printed = io.StringIO()
    decisions = select_sweep(store, "sw", stream=printed, record_all=True)
    decided = [d["selector"] for d in decisions]
    assert decided == ["fmiou", "confident_fmiou"]  # gsda's default (fmiou) decides; the others lack probabilities
    assert [d["headline"] for d in decisions] == [True, False]
    assert "selectors soft_vote, entropy, im, snd, rank_mean, cluster_ami, robust skipped: no probabilities cached" in printed.getvalue()
    assert "merge_quality skipped: no trial stored score_merge_quality" in printed.getvalue()
    trials = store.load_sweep("sw").set_index("trial_id")
    assert trials.loc[["t0", "t1", "t2"], "score_confident_fmiou"].notna().all()
    selections = store.load(table="selections", sweep_id="sw")
    assert sorted(selections["selector"]) == ["confident_fmiou", "fmiou"]
    assert decisions[0]["heldout_regret"] is not None


def test_a_skipped_selector_keeps_what_was_stored_before(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    write_trials(store, tmp_path, [("t0", "finished", {}), ("t1", "finished", {})])
    select_sweep(store, "sw", selectors=("im",), stream=io.StringIO())
    before = store.load_sweep("sw").set_index("trial_id")["score_im"].to_dict()
    Path(store.load_sweep("sw").set_index("trial_id").loc["t1", "predictions_path"]).unlink()
    printed = io.StringIO()
    assert select_sweep(store, "sw", selectors=("im",), stream=printed) == []
    assert "selector im skipped: only 1 of 2 finished" in printed.getvalue()
    assert store.load_sweep("sw").set_index("trial_id")["score_im"].to_dict() == before
    assert list(store.load(table="selections", sweep_id="sw")["selector"]) == ["im"]


def test_trial_scored_default_decides_hdrq_and_fmiou_is_one_flag_away(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    write_trials(store, tmp_path, [(f"t{k}", "finished", {"scores": {"merge_quality": q}})
                                   for k, q in enumerate((0.2, 0.9, 0.5))], method="hdrq")
    decisions = select_sweep(store, "sw", stream=io.StringIO(), record_all=True)
    assert decisions[0]["selector"] == "merge_quality" and decisions[0]["headline"]
    assert decisions[0]["selected_trial_id"] == "t1" and {d["selector"] for d in decisions} == (
        set(selector_names()) - {"consistency", "mixval", "classmix_consistency", "cluster_ami"})  # not stored here
    again = select_sweep(store, "sw", selectors=("fmiou",), stream=io.StringIO(), record_all=True)
    assert again[0]["selector"] == "fmiou" and again[0]["headline"]


def test_picks_side_by_side_and_disagreement() -> None:
    decisions = [{"target": "a", "selector": "fmiou", "selected_trial_id": "t1", "headline": True},
                 {"target": "a", "selector": "im", "selected_trial_id": "t3", "headline": False},
                 {"target": "a", "selector": "snd", "selected_trial_id": "t1", "headline": False},
                 {"target": "b", "selector": "im", "selected_trial_id": "t4"}]
    assert picks_by_target(decisions) == {"a": {"fmiou": "t1", "im": "t3", "snd": "t1"}, "b": {"im": "t4"}}
    assert headline_selectors(decisions) == {"a": "fmiou", "b": "im"}
    assert agreement_lines(decisions) == ["selectors disagree on a: fmiou, snd → t1; im → t3",
                                          "selectors agree on b: the only one picks t4"]
    assert agreement_line("a", {"fmiou": "t1", "im": "t1"}) == "selectors agree on a: all 2 pick t1"


def test_summary_table_marks_each_selectors_pick_and_the_headline(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    write_trials(store, tmp_path, [(f"t{k}", "finished", {"heldout_accuracy": 0.5 + 0.1 * k}) for k in range(3)])
    decisions = select_sweep(store, "sw", stream=io.StringIO(), record_all=True)
    table = format_trials_table(store.load_sweep("sw"), decisions)
    header = table.splitlines()[0].split()
    assert header[:3] == ["sel", "trial", "target"] and "fmiou" in header and "rank_mean" in header
    marked = [line for line in table.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and decisions[0]["selected_trial_id"] in marked[0]
    stars = sum(cell.endswith("*") for line in table.splitlines()[2:] for cell in line.split()[1:])
    assert stars == len(decisions)
    lines = decision_lines(decisions)
    assert lines[0].startswith("selected by fmiou for target mnistm") and "held-out check (oracle" in lines[0]
    assert lines[1].startswith("selectors ") and lines[2].startswith("decision on mnistm: ")
    assert lines[3].startswith("held-out regret per selector (oracle")


def test_old_segmentation_mixval_columns_count_for_classmix_consistency_only() -> None:
    """Sweeps stored before the rename hold the segmentation probe as score_mixval: still readable, under its name."""
    import pandas as pd

    from raysel.selection.applicability import why_not_applicable

    old = pd.DataFrame({"trial_id": ["a", "b"], "status": ["finished"] * 2, "task": ["segmentation"] * 2,
                        "score_mixval": [0.4, 0.6]})
    assert why_not_applicable(old, "classmix_consistency") is None
    assert why_not_applicable(old, "mixval") == ("mixval (score_mixval) exists for classification trials only; "
                                                 "these are segmentation")
