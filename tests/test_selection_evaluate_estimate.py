"""Tests for raysel.selection.evaluate_estimate: the estimate's error and coverage, its calibration and the score
regression, each fitted on some rows and judged on others."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from raysel.selection import evaluate_estimate


def _estimate_law_rows(rng: np.random.Generator, count: int, target: str = "photo_digits") -> list[dict]:
    """Rows whose held-out score is sigmoid(logit(estimate) − 1) plus a little noise."""
    estimate = rng.uniform(0.05, 0.95, count)
    heldout = 1.0 / (1.0 + np.exp(-(np.log(estimate / (1.0 - estimate)) - 1.0))) + rng.normal(0.0, 0.02, count)
    return [{"estimate_score": e, "estimate_low": e, "estimate_high": e, "estimate_method": "atc", "target": target,
             "heldout_accuracy": float(np.clip(h, 0.0, 1.0))} for e, h in zip(estimate, heldout)]


def test_fit_estimate_calibration_recovers_the_offset_and_covers_about_ninety_percent() -> None:
    rng = np.random.default_rng(0)
    fit = _estimate_law_rows(rng, 200) + _estimate_law_rows(rng, 100, "noisy_digits")
    calibration = evaluate_estimate.fit_estimate_calibration(fit, key="digits")
    assert calibration is not None and calibration.key == "digits" and calibration.candidates == 300
    assert calibration.median_offset == pytest.approx(-1.0, abs=0.05)
    assert calibration.low_offset <= calibration.median_offset <= calibration.high_offset
    assert calibration.fitted_on == ("noisy_digits", "photo_digits") and calibration.estimate_method == "atc"
    assert calibration.level == 0.9
    error, coverage, width = evaluate_estimate.calibrated_estimate_accuracy(fit, _estimate_law_rows(rng, 2000))
    assert 0.85 <= coverage <= 0.95 and error < 3.0 and width > 0.0


def test_fit_estimate_calibration_uses_the_conformal_order_statistics() -> None:
    """With n = 19 residuals at 90 %: the ceil(20 · 0.95) = 19th smallest and its mirror, the 1st; n = 39: the
    38th and the 2nd."""
    for n, (low_rank, high_rank) in ((19, (1, 19)), (39, (2, 38))):
        offsets = np.arange(n, dtype=float) / n - 0.5  # known residuals, in increasing order
        rows = [{"estimate_score": 0.5, "heldout_miou": 1.0 / (1.0 + math.exp(-offset))} for offset in offsets]
        calibration = evaluate_estimate.fit_estimate_calibration(rows)
        assert calibration.low_offset == pytest.approx(offsets[low_rank - 1])
        assert calibration.high_offset == pytest.approx(offsets[high_rank - 1])
        assert calibration.median_offset == pytest.approx(float(np.median(offsets)))
        assert calibration.fitted_on == () and calibration.estimate_method == ""


def test_fit_estimate_calibration_needs_ten_rows_with_both_numbers() -> None:
    rng = np.random.default_rng(1)
    rows = _estimate_law_rows(rng, 9)
    assert evaluate_estimate.fit_estimate_calibration(rows) is None
    missing = [{**rows[0], "estimate_score": None}, {**rows[0], "heldout_accuracy": float("nan")},
               {key: value for key, value in rows[0].items() if key != "heldout_accuracy"}]
    assert evaluate_estimate.fit_estimate_calibration(rows + missing) is None  # the incomplete rows are skipped
    calibration = evaluate_estimate.fit_estimate_calibration(pd.DataFrame(rows + missing + _estimate_law_rows(rng, 1)))
    assert calibration is not None and calibration.candidates == 10
    assert all(math.isnan(value) for value in evaluate_estimate.calibrated_estimate_accuracy(rows, rows))
    assert all(math.isnan(value) for value in evaluate_estimate.calibrated_estimate_accuracy(rows * 2, []))


def _regression_rows(rng: np.random.Generator, count: int, target: str, shift: float = 0.0,
                     sweeps: int = 3) -> list[dict]:
    """Candidates whose held-out score is sigmoid(−3 + 4·consistency + shift) with a little noise; the estimate and
    ``score_im`` carry no information, ``score_snd`` is missing on one row in ten."""
    consistency = rng.uniform(0.1, 0.7, count)
    heldout = 1.0 / (1.0 + np.exp(-(-3.0 + 4.0 * consistency + shift + rng.normal(0.0, 0.05, count))))
    return [{"estimate_score": rng.uniform(0.5, 0.9), "score_consistency": c, "score_im": rng.uniform(0.0, 1.5),
             "score_snd": math.nan if index % 10 == 0 else rng.uniform(2, 4), "heldout_miou": h, "target": target,
             "sweep_id": f"{target}-{index % sweeps}"} for index, (c, h) in enumerate(zip(consistency, heldout))]


def test_fit_score_regression_chooses_the_informative_score_by_left_out_targets() -> None:
    rng = np.random.default_rng(0)
    rows = _regression_rows(rng, 60, "day_city") + _regression_rows(rng, 60, "dusk_city", shift=0.1)
    regression = evaluate_estimate.fit_score_regression(rows, key="street_scenes")
    assert regression is not None and regression.key == "street_scenes"
    assert regression.features[0] == "score_consistency" and len(regression.features) <= 2
    assert regression.coefficients[0] == pytest.approx(4.0, abs=0.4)
    assert regression.left_out_by == "target" and regression.fitted_on == ("day_city", "dusk_city")
    assert regression.candidates == 120 and regression.low_offset < 0 < regression.high_offset
    error, coverage, width, count = evaluate_estimate.regressed_estimate_accuracy(
        rows, _regression_rows(rng, 1000, "foggy_city", shift=0.05))
    assert count == 1000 and error < 2.0 and coverage >= 0.85 and width > 0.0


def test_fit_score_regression_takes_a_second_score_only_when_it_helps() -> None:
    rng = np.random.default_rng(1)
    rows = _regression_rows(rng, 50, "day_city") + _regression_rows(rng, 50, "dusk_city")
    assert evaluate_estimate.fit_score_regression(rows).features == ("score_consistency",)  # im and the estimate are noise
    for row in rows:  # now the held-out score also falls with snd
        row["heldout_miou"] = 1.0 / (1.0 + math.exp(-(math.log(row["heldout_miou"] / (1 - row["heldout_miou"]))
                                                       - 2.0 * (0.0 if math.isnan(row["score_snd"]) else row["score_snd"] - 3.0))))
    rows = [row for row in rows if not math.isnan(row["score_snd"])]
    assert set(evaluate_estimate.fit_score_regression(rows).features) == {"score_consistency", "score_snd"}


def test_fit_score_regression_leaves_out_sweeps_with_one_target_and_needs_two_groups_and_ten_rows() -> None:
    rng = np.random.default_rng(2)
    one_target = _regression_rows(rng, 40, "day_city", sweeps=4)
    regression = evaluate_estimate.fit_score_regression(one_target)
    assert regression is not None and regression.left_out_by == "sweep_id" and regression.fitted_on == ("day_city",)
    assert evaluate_estimate.fit_score_regression(_regression_rows(rng, 40, "day_city", sweeps=1)) is None
    assert evaluate_estimate.fit_score_regression(_regression_rows(rng, 9, "day_city") + _regression_rows(rng, 0, "x")) is None
    without_estimate = [{**row, "estimate_score": None} for row in one_target]
    assert evaluate_estimate.fit_score_regression(without_estimate) is None  # rows without a stored estimate are skipped
    assert evaluate_estimate.regressed_estimate_accuracy(without_estimate, one_target)[3] == 0
    assert evaluate_estimate.regressed_estimate_accuracy(one_target, [])[3] == 0


def test_regressed_estimate_accuracy_never_reads_the_rows_it_judges() -> None:
    """The fit sees only ``fit_rows``: absurd held-out scores on the judged rows change the error, not the fit."""
    rng = np.random.default_rng(3)
    fit = _regression_rows(rng, 40, "day_city") + _regression_rows(rng, 40, "dusk_city")
    judged = _regression_rows(rng, 30, "foggy_city")
    absurd = [{**row, "heldout_miou": 0.999} for row in judged]
    assert evaluate_estimate.regressed_estimate_accuracy(fit, judged)[0] < 3.0
    sane_width = evaluate_estimate.regressed_estimate_accuracy(fit, judged)[2]
    error, coverage, width, count = evaluate_estimate.regressed_estimate_accuracy(fit, absurd)
    assert error > 30.0 and coverage == 0.0 and width == pytest.approx(sane_width) and count == 30


def test_the_regression_docstring_examples_run() -> None:
    import doctest

    from raysel.selection import estimate_calibration

    for module in (evaluate_estimate, estimate_calibration):
        results = doctest.testmod(module)
        assert results.failed == 0 and results.attempted >= 2, module.__name__
