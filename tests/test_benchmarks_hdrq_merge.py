"""benchmarks/hdrq_merge: options of the issue-14 regime run, the paired HDRQ - QDrop interval, regret on means."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from benchmarks import hdrq_merge
from benchmarks._hdrq_merge_tables import ConfigResult, JobResult, paired_table, selector_table, t_interval


def entry(label: str, bits: str, harmonic: float, quality: float, rounding: str = "noise") -> ConfigResult:
    return ConfigResult(label=label, bits=bits, rounding=rounding, specialists={"a": 0.5, "b": 0.5},
                        merged={"a": harmonic, "b": harmonic}, harmonic=harmonic, merge_quality=quality,
                        error_barrier=0.0, ptq_method="qdrop", draws=30)


def run(seed: int, qdrop: float, hdrq: float) -> JobResult:
    return JobResult("digits", seed, ("a", "b"), [entry("FP", "FP", 0.40, 0.9, "fp"), entry("QDrop", "W3A3", qdrop, 0.5),
                                                   entry("HDRQ", "W3A3", hdrq, 0.6)])


def test_t_interval_is_the_student_interval_over_seeds():
    centre, low, high = t_interval([0.01, 0.02, 0.03])
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # sd of 1, 2, 3 (in 0.01) is 1
    assert (centre, low, high) == pytest.approx((0.02, 0.02 - half, 0.02 + half))
    assert math.isnan(t_interval([0.01])[1])


def test_paired_table_reports_the_regime_gap_and_hdrq_minus_qdrop_per_seed():
    runs = [run(0, 0.30, 0.32), run(1, 0.34, 0.35), run(2, 0.32, 0.36)]
    header, _, row = paired_table(runs, ["W3A3"])
    centre, low, high = t_interval([0.02, 0.01, 0.04])
    assert "FP − QDrop" in header
    assert "| +8.00 (yes) |" in row  # FP 40 vs QDrop 32 on average: the regime
    assert "+2.00 / +1.00 / +4.00" in row and f"{100 * centre:+.2f}" in row
    assert f"[{100 * low:+.2f}, {100 * high:+.2f}]" in row


def test_selector_regret_and_kendall_tau_are_read_from_the_draw_means():
    result = run(0, 0.30, 0.32)  # merge_quality ranks HDRQ above QDrop, as the held-out means do
    row = selector_table([result])[2]
    assert "| digits | 0 | 2 | HDRQ W3A3 | 32.00 |" in row and row.endswith("| 0.00 | 1.00 | 1.00 |")


def test_regime_options_reach_the_jobs():
    args = hdrq_merge.parse_args(["--bits", "W3A3", "W2A4", "--with-test-targets", "--merge-draws", "30",
                                  "--iterations", "2000", "--rows", "FP", "QDrop", "--street-adaptation", "rounds=2"])
    assert args.bits == ["W3A3", "W2A4"]  # no W4A4 forced in any more
    street = hdrq_merge._job(args, "street_scenes", 0, "root", "work")
    digits = hdrq_merge._job(args, "digits", 0, "root", "work")
    assert street.targets == ("day_city", "dusk_city", "foggy_city") and "stroke_digits" in digits.targets
    assert (street.merge_draws, street.reconstruction_iterations, street.rows) == (30, 2000, ("FP", "QDrop"))
    assert street.adaptation_settings == "rounds=2" and digits.adaptation_settings == ""
    assert hdrq_merge.base_settings(street)["targets"] == ("day_city", "dusk_city", "foggy_city")
    with pytest.raises(SystemExit):
        hdrq_merge.parse_args(["--merge-draws", "0"])


def test_report_renders_every_table_from_job_results():
    args = hdrq_merge.parse_args(["--families", "digits", "--bits", "W3A3", "--seeds", "0", "1", "--merge-draws", "30",
                                  "--iterations", "2000"])
    results = [run(0, 0.30, 0.32), run(1, 0.34, 0.35)]
    body = hdrq_merge.report(results, args, wall_seconds=60.0, loads=(1.0, 1.0))
    assert "2000 reconstruction iterations per block" in body and "mean of 30 merge draw(s)" in body
    assert "used: 0.001" in body  # the scaled HDRQ weight lr at 2000 iterations
    assert "### HDRQ − QDrop, paired by seed" in body and "+2.00 / +1.00" in body
    assert "### merge-quality selector regret" in body and "| digits | 1 | 2 | HDRQ W3A3 | 35.00 |" in body
