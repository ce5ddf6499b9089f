"""benchmarks/hdrq_merge: options of the issue-14 regime run, the paired HDRQ - QDrop interval, regret on means."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from scipy import stats

from benchmarks import hdrq_merge
from benchmarks._hdrq_merge_tables import (ConfigResult, JobResult, movement_summary, movement_table, paired_table,
                                           selector_table, speed_table, t_interval)


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
    assert "| digits | 0 | 2 | HDRQ W3A3 | 32.00 |" in row and row.endswith("| 0.00 | 0.00 | 1.00 | 1.00 |")


def test_selector_table_sets_the_default_configuration_and_a_mean_row_beside_the_pick():
    """The default configuration is HDRQ with noise-sampling rounding (HdrqConfig's defaults) at the run's one
    bit-width; here merge_quality prefers QDrop, whose merge is worse, so the pick regrets 2 points and the default 0."""
    runs = [JobResult("digits", seed, ("a", "b"), [entry("FP", "FP", 0.40, 0.9, "fp"), entry("QDrop", "W3A3", 0.30, 0.7),
                                                   entry("HDRQ", "W3A3", 0.32, 0.6),
                                                   entry("HDRQ", "W3A3", 0.31, 0.5, "float")]) for seed in (0, 1)]
    header, _, first, second, mean_row = selector_table(runs)
    assert "default configuration: regret" in header
    assert first.endswith("| 2.00 | 0.00 | 1.00 | -0.33 |") and first == second.replace("| 1 |", "| 0 |", 1)
    assert mean_row.startswith("| mean |") and mean_row.endswith("| 2.00 | 0.00 | 1.00 | -0.33 |")


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
    # Units without recorded movement (as every unit saved before it was): the table is there, every cell "—".
    assert "### weight movement" in body and "| digits | W3A3 | 1 | HDRQ | 2 | — | — | — | — | — |" in body


def moved(codes: float, weights: float | None) -> dict:
    """A specialist's movement as raysel.quant.movement records it (maxima twice the means)."""
    values = {"codes_changed": codes, "weight_step_movement": 0.0 if weights is None else 0.02,
              "activation_step_movement": 0.1, "dequantized_weight_movement": codes / 2, "weight_movement": weights}
    return {"layers": 3, "activation_quantizers": 2, **values,
            **{f"{k}_max": None if v is None else 2 * v for k, v in values.items()}}


def test_movement_table_formats_recorded_movement_and_dashes_units_without_it():
    qdrop, hdrq = entry("QDrop", "W3A3", 0.30, 0.5), entry("HDRQ", "W3A3", 0.32, 0.6)
    qdrop.movement = {"a": moved(0.04, None), "b": moved(0.06, None)}
    hdrq.movement = {"a": moved(0.10, 0.01), "b": moved(0.20, 0.03)}
    old = entry("QDrop+noise", "W3A3", 0.31, 0.5)  # a unit saved before movement was recorded: no field
    cached = entry("BRECQ", "W3A3", 0.29, 0.5)
    cached.movement = {"a": moved(0.01, None), "b": None}  # one PTQ stage cached before it was recorded
    header, _, *rows = movement_table([JobResult("digits", 0, ("a", "b"), [qdrop, hdrq, old, cached])], ["W3A3"])
    assert header.startswith("| family | bits | seed | PTQ | specialists | codes changed % |")
    assert [row.split(" | ")[3] for row in rows] == ["BRECQ", "QDrop", "QDrop+noise", "HDRQ"]  # PTQ_ROWS order
    brecq_row, qdrop_row, noise_row, hdrq_row = rows
    assert noise_row == "| digits | W3A3 | 0 | QDrop+noise | 2 | — | — | — | — | — |"
    assert brecq_row == noise_row.replace("QDrop+noise", "BRECQ")  # one specialist's stage lacks it: no partial mean
    # codes 5 % mean (max layer 12 %), weight steps 0, activation steps 10 %, no float weights, dequantized 2.5 %
    assert qdrop_row == "| digits | W3A3 | 0 | QDrop | 2 | 5.00 (12.0) | 0.00 (0.0) | 10.00 (20.0) | — | 2.50 (6.0) |"
    assert hdrq_row == ("| digits | W3A3 | 0 | HDRQ | 2 | 15.00 (40.0) | 2.00 (4.0) | 10.00 (20.0) | 2.00 (6.0) | "
                        "7.50 (20.0) |")
    summary = movement_summary([JobResult("digits", 0, ("a", "b"), [qdrop, hdrq, old])], ["W3A3"])
    assert "digits W3A3: QDrop 5.00 / 2.50, HDRQ 15.00 / 7.50" in summary
    assert "recorded yet" in movement_summary([run(0, 0.30, 0.32)], ["W3A3"])
    assert movement_table([JobResult("digits", 0, ("a", "b"), [entry("FP", "FP", 0.4, 0.9, "fp")])], ["W3A3"]) == []


def test_units_saved_without_movement_load_and_speed_shows_a_dash_without_qdrop():
    saved = {"configs": [{k: v for k, v in vars(entry("HDRQ", "W3A3", 0.32, 0.6)).items() if k != "movement"}],
             "stage_seconds": {}, "seconds": 1.0}
    job = hdrq_merge.Job("digits", 0, "root", "work", 1, False, ("W3A3",), None, targets=("a", "b"))
    result = hdrq_merge.job_result(job, [(None, saved)])
    assert result.configs[0].movement == {}
    result.configs[0].ptq_method, result.configs[0].ptq_iterations, result.configs[0].ptq_loop_seconds = "hdrq", 10, 2.0
    (row,) = speed_table([result])[2:]
    assert row == "| digits | hdrq | 2 | 10 | 2.0 | 5.0 | — |"  # no QDrop unit yet: not "nanx"


def test_score_configuration_records_each_specialists_movement(monkeypatch):
    recorded = moved(0.1, 0.01)
    stages = {"a": {"iterations": 5, "loop_seconds": 1.0, "movement": recorded},
              "b": {"iterations": 5, "loop_seconds": 1.0}}  # cached before movement was recorded
    specialists = hdrq_merge.hdrq.Specialists({"a": None, "b": None}, {}, stages)
    monkeypatch.setattr(hdrq_merge.hdrq, "build_specialists", lambda *args: specialists)
    monkeypatch.setattr(hdrq_merge, "heldout_scores", lambda *args, **kwargs: {"heldout_accuracy": 0.5})
    monkeypatch.setattr(hdrq_merge, "mean_over_draws", lambda *args: ({"a": 0.4, "b": 0.4}, 0.4, 0.5, 0.0, 1))
    ctx = SimpleNamespace(task="classification", family=None, data_root="", device="cpu",
                          spec=SimpleNamespace(image_size=None))
    config = hdrq_merge.hdrq.HdrqConfig(bits="W3A3", ptq_method="qdrop")
    (result,) = hdrq_merge.score_configuration(ctx, config, ("a", "b"), "QDrop", None, ["noise"], 1)
    assert result.movement == {"a": recorded, "b": None} and result.ptq_iterations == 10
