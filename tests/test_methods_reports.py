"""raysel.methods.reports: the one typed record of what a trial reports, and the flat metrics Ray Tune receives."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from raysel.methods.base import LocalSession, NonFiniteLossError, RunContext, RunSpec
from raysel.methods.reports import EPOCH, ITERATION, LOSS, ROUND, TARGET_CONFIDENCE, EpochReport
from raysel.request import CONFIDENCE_OBJECTIVE
from raysel.status import CONFIDENCE_METRIC


def test_a_report_round_trips_to_the_metric_keys_methods_reported_before() -> None:
    """HIAST's report as it was a flat dict: the record gives back exactly its keys and values."""
    flat = {"round": 2, "epoch": 3, "iteration": 40, "loss": 0.5, "cross_entropy": 0.4, "r_i": 0.1,
            "target_confidence": 0.8, "hpla_pasted_fraction": 0.2, "hard_classes": "1,2", "seconds_train_loop": 9.0}
    measurements = {name: value for name, value in flat.items() if name not in (ROUND, EPOCH, ITERATION)}
    report = EpochReport.from_measurements(round=2, epoch=3, iteration=40, measurements=measurements)
    assert report.to_metrics() == flat
    assert (report.loss, report.target_confidence, report.epoch) == (0.5, 0.8, 3)
    assert dict(report.extra) == {"cross_entropy": 0.4, "r_i": 0.1, "hpla_pasted_fraction": 0.2,
                                  "hard_classes": "1,2", "seconds_train_loop": 9.0}


def test_absent_loss_and_round_stay_absent_and_scores_are_reported_with_their_prefix() -> None:
    """HDRQ reports no loss and no round; a trial-scored selector arrives as score_<name> (ASHA's metric)."""
    report = EpochReport.from_measurements(epoch=1, iteration=1, measurements={
        TARGET_CONFIDENCE: 0.7, "merge_quality": 0.9}).with_scores({"consistency": 0.6})
    assert report.to_metrics() == {"epoch": 1, "iteration": 1, "target_confidence": 0.7, "merge_quality": 0.9,
                                   "score_consistency": 0.6}
    assert report.step_text() == "epoch=1, iteration=1"


def test_a_report_is_frozen_and_refuses_what_would_overwrite_its_own_keys() -> None:
    report = EpochReport(epoch=1, iteration=2, target_confidence=0.5, extra={"loss_source": 1.0})
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.epoch = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        report.extra["loss_source"] = 2.0  # type: ignore[index]
    with pytest.raises(ValueError, match="score_x"):
        EpochReport(epoch=1, iteration=1, target_confidence=0.5, extra={"score_x": 1.0})
    with pytest.raises(ValueError, match="epoch"):
        EpochReport(epoch=1, iteration=1, target_confidence=0.5, extra={EPOCH: 2})
    with pytest.raises(ValueError, match="target_confidence"):
        EpochReport.from_measurements(epoch=1, iteration=1, measurements={LOSS: 1.0})


def test_consumers_name_the_confidence_through_the_one_constant() -> None:
    assert CONFIDENCE_OBJECTIVE == CONFIDENCE_METRIC == TARGET_CONFIDENCE == "target_confidence"


def test_the_context_reports_the_record_flat_with_scores_and_stops_on_a_non_finite_loss(tmp_path: Path) -> None:
    session = LocalSession(checkpoint_root=str(tmp_path / "checkpoints"))
    ctx = RunContext(RunSpec(method="gsda", dataset="digits", data_root=str(tmp_path), output_dir=str(tmp_path)),
                     session)
    ctx.report_scores = lambda model: {"probe": 1.0}
    report = EpochReport.from_measurements(epoch=1, iteration=5, measurements={LOSS: 0.3, TARGET_CONFIDENCE: 0.6})
    ctx.report(report, checkpoint_state={"step": 5}, model=object())  # type: ignore[arg-type]
    assert session.reports == [{"epoch": 1, "iteration": 5, "loss": 0.3, "target_confidence": 0.6, "score_probe": 1.0}]
    assert session._last_checkpoint is not None
    broken = EpochReport.from_measurements(epoch=2, iteration=9, measurements={LOSS: math.nan, TARGET_CONFIDENCE: 0.6})
    with pytest.raises(NonFiniteLossError, match="at epoch=2, iteration=9"):
        ctx.report(broken, checkpoint_state={"step": 9})
    assert session.reports[-1]["epoch"] == 2 and session._last_checkpoint.endswith("000001")
