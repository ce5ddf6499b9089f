"""benchmarks/digits_test_domain.py: the verdict on warped_digits' severities from source-only accuracy alone."""

from __future__ import annotations

from pathlib import Path

from benchmarks import digits_test_domain as bench


def scores(warped: dict[int, list[float]]) -> dict[int, dict[str, float]]:
    """Per seed: held-out accuracy (fractions) on every digits target; warped_digits per severity as given."""
    seeds = range(len(next(iter(warped.values()))))
    fixed = {"photo_digits": 0.35, "noisy_digits": 0.5, "inverted_blur_digits": 0.25, "stroke_digits": 0.12}
    return {seed: {**fixed, **{f"warped_digits@{severity}": values[seed] for severity, values in warped.items()}}
            for seed in seeds}


def test_a_severity_qualifies_on_its_source_only_mean_and_the_one_closest_to_half_is_named() -> None:
    measured = scores({1: [0.80, 0.78, 0.82], 2: [0.62, 0.58, 0.66], 3: [0.45, 0.28, 0.50]})
    rows = bench.verdicts(measured, [1, 2, 3])
    assert [rows[s]["qualifies"] for s in (1, 2, 3)] == [False, True, True]
    assert rows[3]["every_seed"] is False and rows[2]["every_seed"] is True
    body = bench.report(measured, [1, 2, 3], {0: 90.0, 1: 91.0, 2: 92.0}, "digits generator version 5", False)
    assert "**Qualifying severities: 2, 3.** Closest to 50 %: severity 3" in body
    assert "| stroke_digits | test | 12.0 / 12.0 / 12.0 | **12.0** | no |" in body
    row = "| warped_digits, severity 3 | test (candidate) | 45.0 / 28.0 / 50.0 | **41.0** | yes (not every seed) |"
    assert row in body


def test_no_qualifying_severity_says_the_target_must_not_be_used() -> None:
    body = bench.report(scores({1: [0.9], 3: [0.1]}), [1, 3], {0: 1.0}, "tiny", True)
    assert "No severity qualifies" in body and "must not be used" in body and "smoke run" in body


def test_quick_defaults_and_severity_choices() -> None:
    args = bench.parse_args(["--quick"])
    assert args.seeds == [0] and args.severity == sorted(bench.WARPED_SEVERITIES)
    assert bench.parse_args([]).seeds == [0, 1, 2]
    assert bench.parse_args(["--severity", "3", "1", "3"]).severity == [3, 1]


def test_trees_of_different_severities_differ_only_in_the_new_target(tmp_path: Path) -> None:
    roots = bench.prepare_trees([1, 3], tmp_path, quick=True)
    assert set(roots) == {1, 3}
    assert (bench.domain_fingerprint(roots[1] / "digits", "warped_digits")
            != bench.domain_fingerprint(roots[3] / "digits", "warped_digits"))
