"""benchmarks/selection_wide.py: the plan (wide and entropy-weight sweeps, source-only references), its tables on
synthetic sweeps, and one real smoke run (--budget quick) on the digits family."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import selection_wide as sw
import numpy as np
import pandas as pd

from benchmarks._common import DEFAULT_KIND, SweepCase, SweepPlan, plan_default_trials, plan_defaults
from raysel.data import get_family
from raysel.selection import evaluate, evaluate_estimate
from raysel.selection.evaluate import (DEFAULT_BASELINE, GUARDED_DECISION, HEADLINE_DECISION, ORACLE_BASELINE,
                                       RANDOM_BASELINE)

REPO = Path(__file__).resolve().parent.parent


def options(tmp_path: Path, budget: str = "short", methods: tuple[str, ...] = sw.METHODS) -> sw.WideOptions:
    shape = sw.SHAPES[budget]
    return sw.WideOptions(results=tmp_path, data_root=tmp_path, budget=budget, methods=methods, seeds=(0, 1),
                          configurations=shape.configurations, entropy_values=shape.entropy_values,
                          selection_size=shape.selection_size, targets=sw.budget_targets(shape))


def test_short_budget_covers_every_method_dev_and_test_targets(tmp_path: Path) -> None:
    plans = sw.build_plans(options(tmp_path))
    kinds = {(plan.method, plan.kind) for plan in plans}
    assert {("hiast", "lambda_i"), ("sfda", "maxsquare_weight"), ("gsda", "alpha"), ("t2sda", DEFAULT_KIND),
            ("source_only", DEFAULT_KIND)} <= kinds
    assert all((method, sw.WIDE_KIND) in kinds for method in sw.METHODS)
    targets = {plan.targets[0] for plan in plans}
    assert targets == {"day_city", "foggy_city", "photo_digits", "stroke_digits", "warped_digits"}
    assert len({plan.sweep_id for plan in plans}) == len(plans)
    references = [plan for plan in plans if plan.method == "source_only" and plan.kind == DEFAULT_KIND]
    assert len(references) == 2 * 5  # one per seed and target


def test_development_targets_run_only_at_the_development_seeds(tmp_path: Path) -> None:
    """The short budget's shape: test targets (the goals) at every seed, development targets (design) at seed 0."""
    assert sw.SHAPES["short"].development_seeds == (0,)
    restricted = dataclasses.replace(options(tmp_path), development_seeds=(0,))
    seeds_of = {}
    for plan in sw.build_plans(restricted):
        seeds_of.setdefault(plan.targets[0], set()).add(plan.seed)
    assert seeds_of == {"day_city": {0}, "photo_digits": {0}, "foggy_city": {0, 1}, "stroke_digits": {0, 1},
                        "warped_digits": {0, 1}}


def test_decision_budget_runs_every_development_sweep_before_any_test_sweep(tmp_path: Path) -> None:
    """Issue 29 item 2: every development target at 3 seeds, at least 12 wide sweeps per family, the entropy-weight
    sweeps, short's training settings, and every development sweep before the first test sweep."""
    shape = sw.SHAPES["decision"]
    base = options(tmp_path, budget="decision")
    plans = sw.build_plans(dataclasses.replace(base, seeds=shape.seeds, development_first=shape.development_first))
    development = {target for family in ("street_scenes", "digits")
                   for target in get_family(family).development_targets}
    roles = ["development" if plan.targets[0] in development else "test" for plan in plans]
    assert roles == sorted(roles)  # "development" < "test": no development sweep after a test sweep
    assert {plan.targets[0] for plan, role in zip(plans, roles) if role == "development"} == development
    assert {plan.targets[0] for plan, role in zip(plans, roles) if role == "test"} == {
        "foggy_city", "stroke_digits", "warped_digits"}
    for family in ("street_scenes", "digits"):
        wide = [plan for plan, role in zip(plans, roles) if role == "development" and plan.kind == sw.WIDE_KIND
                and sw.FAMILY_OF[plan.method] == family]
        assert len(wide) >= 12 and {plan.seed for plan in wide} == {0, 1, 2}
    assert {plan.kind for plan in plans} >= {"lambda_i", "maxsquare_weight", "alpha"}
    for method in sw.METHODS:
        assert sw.budget_settings(method, "decision") == sw.budget_settings(method, "short")


def test_wide_sweep_is_the_same_random_sample_for_every_target_of_a_seed(tmp_path: Path) -> None:
    plans = [plan for plan in sw.build_plans(options(tmp_path)) if plan.method == "hiast" and plan.kind == "wide"]
    day, fog = (next(p for p in plans if p.seed == 0 and p.targets == (t,)) for t in ("day_city", "foggy_city"))

    def without_target(plan: SweepPlan) -> dict:
        return {key: value for key, value in plan.options.items() if key != "target"}

    assert without_target(day) == without_target(fog) and day.expected_trials == 5
    assert (day.options["search"], day.options["num_samples"]) == ("random", 5)
    overrides = day.options["overrides"]
    assert "learning_rate={choice: [2e-05, 6.32e-05, 0.0002, 0.000632, 0.002]}" in overrides  # 2e-4 x 0.1 .. x 10
    assert "iterations_per_round={choice: [30, 60, 120]}" in overrides  # 0.5x, 1x, 2x of the short budget's 60


def test_default_configuration_follows_the_budget(tmp_path: Path) -> None:
    plan = next(p for p in sw.build_plans(options(tmp_path)) if p.method == "hiast" and p.kind == "lambda_i")
    defaults = plan_defaults(plan)
    assert defaults["iterations_per_round"] == 60 and defaults["lambda_i"] == 1.0
    assert "lambda_i={grid: [0.1, 1.0, 10.0, 100.0]}" in plan.options["overrides"]
    standard = next(p for p in sw.build_plans(options(tmp_path, "standard")) if p.kind == "lambda_i")
    assert "lambda_i={grid: [0.1, 1.0, 10.0, 30.0, 100.0]}" in standard.options["overrides"]


def test_short_budget_shortens_only_the_digits_trainings(tmp_path: Path) -> None:
    """short and standard train street trials alike; short trains digits for fewer iterations."""
    assert sw.budget_settings("hiast", "short") == sw.budget_settings("hiast", "standard")
    assert sw.budget_defaults("gsda", "short")["iterations"] < sw.budget_defaults("gsda", "standard")["iterations"]
    assert sw.budget_defaults("source_only", "short")["iterations"] == 300


def test_entropy_values_keep_the_extremes_and_the_default() -> None:
    assert sw.entropy_values("hiast", 3) == (0.1, 1.0, 100.0)
    assert sw.entropy_values("gsda", 5) == (0.0, 0.02, 0.2, 1.0, 5.0)


def test_reference_is_the_shared_source_stage(tmp_path: Path) -> None:
    quick = options(tmp_path, "quick")
    plan = sw.reference_plan(quick, "street_scenes", 0, "foggy_city")
    assert plan.method == "source_only" and plan.options["data"] == "street_scenes"
    overrides = plan.options["overrides"]
    assert "iterations=8" in overrides and "learning_rate=0.001" in overrides  # the quick budget's source_iterations
    assert plan_defaults(plan)["iterations"] == 8


def wide_case(heldout: list[float], picks: dict[str, int], source: float | None, target: str = "day_city",
              role: str = "development", kind: str = "wide", guarded: int | None = None) -> sw.WideCase:
    """A synthetic sweep: each selector's pick (index), the headline (the first selector) and guarded decisions."""
    ids = [f"t{i}" for i in range(len(heldout))]
    evaluations = {name: {"regret": (max(heldout) - heldout[i]) * 100, "gap_closed": 0.5, "kendall_tau": 0.1,
                          "spearman_rho": 0.1, "top3_regret": 0.0, "selected_trial_id": ids[i]}
                   for name, i in picks.items()}
    decided = {HEADLINE_DECISION: ids[next(iter(picks.values()))]} if picks else {}
    decided.update({GUARDED_DECISION: ids[guarded]} if guarded is not None else {})
    case = SweepCase("hiast", 0, target, kind, "sweep", ids, heldout, evaluations, default_heldout=heldout[1],
                     decision_picks=decided)
    return sw.WideCase(case, "street_scenes", role, source)


def test_tables_report_collapses_flat_sweeps_and_roles_apart(tmp_path: Path) -> None:
    cases = [wide_case([0.10, 0.40, 0.35], {"im": 0, "fmiou": 1}, source=0.30),
             wide_case([0.300, 0.305], {"im": 0, "fmiou": 1}, source=0.30, target="foggy_city", role="test")]
    assert cases[0].collapses()["im"] == 1.0 and cases[0].collapses()[RANDOM_BASELINE] == pytest.approx(1 / 3)
    table = sw.selector_table(cases[:1], ["im", "fmiou"])
    assert "collapsed picks" in table and "| im | 30.00 |" in table and ORACLE_BASELINE in table
    assert "| 1/1 |" in table and "| 0.3/1 |" in table  # im collapsed; random's expectation
    every = sw.sweep_table(cases)
    assert "| flat |" in every and "| no |" in every
    body = sw.format_body(cases, ["im", "fmiou"], options(tmp_path, "quick", ("hiast",)), "facts")
    development = body.index("### development targets — street_scenes (day_city)")
    test = body.index("### test targets — street_scenes (foggy_city)")
    assert development < test and "1/2 sweeps spread ≥ 5 points" not in body


def test_goal_table_recommends_on_development_and_judges_on_test(tmp_path: Path) -> None:
    cases = [wide_case([0.10, 0.40, 0.35], {"im": 1, "fmiou": 0}, source=0.30),
             wide_case([0.30, 0.50, 0.45], {"im": 1, "fmiou": 2}, source=0.20, target="foggy_city", role="test")]
    table = sw.goal_table(cases, ["im", "fmiou"], options(tmp_path, "quick", ("hiast",)))
    row = next(line for line in table.splitlines() if line.startswith("| street_scenes"))
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[2] == "im" and cells[3] == "1" and cells[4] == "0.00"  # chosen on day_city, judged on foggy_city
    assert "better than F-mIoU" in cells[6] and "no collapsed pick" in cells[6]
    # the default configuration (heldout[1]) is as good: not *strictly* better; gap closed 0.5, τ 0.1 miss too
    assert "better than the default configuration" in cells[7] and "mean Kendall τ ≥ 0.6" in cells[7]


def test_goal_table_says_when_the_recommended_selector_scored_no_test_sweep(tmp_path: Path) -> None:
    cases = [wide_case([0.10, 0.40, 0.35], {"im": 1, "fmiou": 0}, source=0.30),
             wide_case([0.30, 0.50, 0.45], {"fmiou": 2}, source=0.20, target="foggy_city", role="test")]
    table = sw.goal_table(cases, ["im", "fmiou"], options(tmp_path, "quick", ("hiast",)))
    assert "| street_scenes | im | 1 | — | — | none (it scored no test sweep) | all |" in table


def row_cells(table: str, name: str) -> list[str]:
    """The cells of the table row whose first cell is ``name`` (plain, bold or italic)."""
    line = next(line for line in table.splitlines()
                if line.startswith("|") and line.split("|")[1].strip().strip("*") == name)
    return [cell.strip() for cell in line.split("|")[1:-1]]


def test_tables_put_the_guarded_decision_next_to_the_headline_and_the_default_per_role(tmp_path: Path) -> None:
    """fmiou (the headline) picks a collapsed candidate; the guard kept t1 (the default configuration's score) and,
    on the test sweep, t2; each row's regret is its own trial's, its collapsed picks counted like a selector's."""
    development = wide_case([0.10, 0.40, 0.35], {"fmiou": 0, "im": 1}, source=0.30, guarded=1)
    test = wide_case([0.30, 0.50, 0.45], {"fmiou": 0, "im": 1}, source=0.35, target="foggy_city", role="test",
                     guarded=2)
    table = sw.selector_table([development], ["fmiou", "im"])
    names = [line.split("|")[1].strip().strip("*") for line in table.splitlines()[2:]]
    assert names == ["fmiou", "im", HEADLINE_DECISION, GUARDED_DECISION, DEFAULT_BASELINE, RANDOM_BASELINE,
                     ORACLE_BASELINE]
    assert row_cells(table, HEADLINE_DECISION)[1:3] == ["30.00", "30.00"]
    assert row_cells(table, HEADLINE_DECISION)[6:8] == ["1/1", "1/1"]  # collapsed; worse than the default
    assert row_cells(table, GUARDED_DECISION)[1:3] == ["0.00", "0.00"]
    assert row_cells(table, GUARDED_DECISION)[6:8] == ["0/1", "0/1"]
    assert row_cells(table, DEFAULT_BASELINE)[1] == "0.00"
    assert sw.best_selector(sw.summarize_selectors([development.evaluations()], ["fmiou", "im"])) == "im"
    body = sw.format_body([development, test], ["fmiou", "im"], options(tmp_path, "quick", ("hiast",)), "facts")
    for role, regret in (("development", "0.00"), ("test", "5.00")):
        section = body[body.index(f"### {role} targets"):]
        section = section[:section.index("\n\n###")]
        assert row_cells(section, GUARDED_DECISION)[1] == regret and HEADLINE_DECISION in section


def test_selector_table_says_how_far_a_row_fell_behind_the_default_configuration(tmp_path: Path) -> None:
    """fmiou is 30 points behind the default configuration on one sweep and 5 on the other: the column shows the
    larger; im is never behind (its largest excess is 0); the baselines are not compared."""
    sweeps = [wide_case([0.10, 0.40, 0.35], {"fmiou": 0, "im": 1}, source=0.30),
              wide_case([0.30, 0.50, 0.45], {"fmiou": 2, "im": 1}, source=0.20)]
    table = sw.selector_table(sweeps, ["fmiou", "im"])
    assert "most behind default" in table.splitlines()[0]
    assert row_cells(table, "fmiou")[7:9] == ["2/2", "+30.00"] and row_cells(table, "im")[7:9] == ["0/2", "+0.00"]
    assert row_cells(table, DEFAULT_BASELINE)[8] == "—"


def test_guard_goal_table_judges_the_shipped_decision_on_test_sweeps_only(tmp_path: Path) -> None:
    """The guarded decision keeps t2 on the wide test sweep (5 points behind the default configuration t1) and the
    default on the entropy-weight one: the wide row misses the 0.5-point goal, the other meets every goal; the
    development sweep, where the guard picked a collapsed candidate, is not in the table."""
    cases = [wide_case([0.10, 0.40, 0.35], {"fmiou": 0, "im": 1}, source=0.30, guarded=0),
             wide_case([0.30, 0.50, 0.45], {"fmiou": 0, "im": 1}, source=0.20, target="foggy_city", role="test",
                       guarded=2),
             wide_case([0.30, 0.50, 0.45], {"fmiou": 0, "im": 1}, source=0.20, target="foggy_city", role="test",
                       kind="lambda_i", guarded=1)]
    table = sw.guard_goal_table(cases, ["fmiou", "im"], options(tmp_path, "quick", ("hiast",)))
    wide = row_cells(table, "street_scenes")
    assert wide[1] == "1 wide" and wide[2] == "5.00 / 5.00" and wide[3] == "20.00 / 20.00" and wide[4] == "0.00 / 0.00"
    assert wide[5] == "0/1" and wide[6] == "+5.00" and "never > 0.5 behind the default configuration" in wide[8]
    entropy = [line for line in table.splitlines() if "entropy-weight" in line]
    assert len(entropy) == 1 and entropy[0].rstrip().endswith("| none |")  # no goal missed
    body = sw.format_body(cases, ["fmiou", "im"], options(tmp_path, "quick", ("hiast",)), "facts")
    assert "The shipped decision on the test targets" in body and table in body


def test_goal_table_applies_the_pre_registered_rule_to_development_sweeps(tmp_path: Path) -> None:
    """`im` has the lowest development mean regret but a worst regret above the bound: the rule recommends
    `soft_vote`, and the test wide sweeps confirm it against the default selector F-mIoU."""
    development = [wide_case([0.10, 0.40, 0.36, 0.385], {"im": 1, "soft_vote": 3, "fmiou": 0}, source=0.05),
                   wide_case([0.10, 0.40, 0.36, 0.385], {"im": 1, "soft_vote": 3, "fmiou": 2}, source=0.05),
                   wide_case([0.10, 0.40, 0.36, 0.385], {"im": 2, "soft_vote": 3, "fmiou": 2}, source=0.05)]
    test = wide_case([0.30, 0.50, 0.45, 0.49], {"im": 1, "soft_vote": 3, "fmiou": 2}, source=0.20,
                     target="foggy_city", role="test")
    quick = options(tmp_path, "quick", ("hiast",))
    table = sw.goal_table([*development, test], ["im", "soft_vote", "fmiou"], quick)
    cells = row_cells(table, "street_scenes")
    assert cells[1] == "soft_vote" and cells[3] == "1.00" and cells[7] == "confirmed"
    assert sw.best_selector(sw.summarize_selectors([c.evaluations() for c in development],
                                                   ["im", "soft_vote", "fmiou"])) == "im"  # what it used to pick
    text = sw.rule_text([*development, test], ["im", "soft_vote", "fmiou"], quick)
    assert sw.RULE in text and "im: worst regret 4.00 > 3 points" in text
    broken = [wide_case([0.10, 0.40], {"im": 0}, source=0.30), test]
    none = row_cells(sw.goal_table(broken, ["im"], quick), "street_scenes")
    assert none[1].startswith("none (no selector is eligible") and none[7] == "the default stays (fmiou)"


def test_the_rule_never_reads_a_test_sweep(tmp_path: Path) -> None:
    """A test sweep where `fmiou` is perfect changes nothing: the rule reads development sweeps only (and would
    refuse a test sweep handed to it)."""
    development = wide_case([0.10, 0.40, 0.35], {"im": 1, "fmiou": 2}, source=0.05)
    perfect = wide_case([0.30, 0.50], {"im": 0, "fmiou": 1}, source=0.05, target="foggy_city", role="test")
    assert sw.family_recommendation([development, perfect], ["im", "fmiou"], "street_scenes").selector == "im"
    with pytest.raises(ValueError, match="development sweeps only"):
        sw.recommend_selector([perfect.evidence()], ["im", "fmiou"])


def test_plan_default_trials_follow_the_budget_defaults(tmp_path: Path) -> None:
    """The guard's default configuration in the benchmark is the baseline's: the plan's defaults, budget included."""
    plan = next(p for p in sw.build_plans(options(tmp_path)) if p.method == "hiast" and p.kind == "lambda_i")
    defaults = plan_defaults(plan)
    rows = [{"trial_id": f"t{k}", "target": "day_city", "status": "finished",
             **{f"hp_{name}": defaults[name] for name in plan.swept}, "hp_lambda_i": value}
            for k, value in enumerate((0.1, 1.0, 100.0))]
    assert plan_default_trials(plan, pd.DataFrame(rows)) == {"day_city": "t1"}


@pytest.mark.integration
def test_quick_run_on_digits_prints_dev_and_test_tables(embedded_data_root: Path, tmp_path: Path) -> None:
    """Real smoke run: source_only's wide sweep on photo_digits (development) and every digits test target, each with
    its source-only reference, then the tables (entropy-weight tables: the synthetic test above)."""
    command = [sys.executable, "-m", "benchmarks.selection_wide", "--budget", "quick", "--methods", "source_only",
               "--configurations", "2", "--workdir", str(tmp_path / "store"), "--data-root", str(embedded_data_root)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    planned = int(re.search(r"selection_wide: (\d+) sweeps", out).group(1))
    assert "## selection_wide" in out and f"sweep {planned}/{planned}" in out
    test_targets = ", ".join(get_family("digits").test_targets)
    headings = [f"### {role} targets — digits ({targets}): wide sweeps, accuracy points"
                for role, targets in (("development", "photo_digits"), ("test", test_targets))]
    positions = [out.index(heading) for heading in headings]
    assert positions == sorted(positions)  # development before test
    assert out.count("| collapsed picks |") == 2 and "oracle (held-out best)" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "| source_only | 0 |" in line]
    digits_targets = 1 + len(get_family("digits").test_targets)  # photo_digits, then every test target
    assert len(rows) == digits_targets and all(("| flat |" in row) or ("| no |" in row) for row in rows)
    assert all(row.split("|")[10].strip() not in ("", "—") for row in rows)  # every sweep has its source-only score


def test_each_writing_budget_has_its_own_section() -> None:
    assert sw.section_name("short") == "selection_wide"
    assert sw.section_name("standard") == "selection_wide.standard"


def test_estimate_table_gives_error_and_coverage_per_family_and_role(tmp_path: Path) -> None:
    """Issue 29 item 6's measurement: mean absolute error in points and interval coverage over every candidate, the
    goals judged on test targets only; candidates without an estimate are left out."""
    plans = sw.build_plans(options(tmp_path))
    day = next(plan for plan in plans if plan.targets == ("day_city",) and plan.kind == sw.WIDE_KIND)
    fog = next(plan for plan in plans if plan.targets == ("foggy_city",) and plan.kind == sw.WIDE_KIND)
    frames = {
        day.sweep_id: pd.DataFrame({"heldout": [0.30, 0.40], "estimate_score": [0.32, 0.40],
                                    "estimate_low": [0.25, 0.41], "estimate_high": [0.35, 0.45]}),
        fog.sweep_id: pd.DataFrame({"heldout": [0.20, 0.50, 0.60], "estimate_score": [0.21, 0.45, float("nan")],
                                    "estimate_low": [0.15, 0.40, None], "estimate_high": [0.25, 0.48, None]}),
    }
    rows = sw.estimate_rows(frames, plans)
    assert len(rows) == 4
    table = sw.estimate_table(frames, plans)
    assert "| street_scenes | development | raw | 2 | 1.00 | 1.00 | 50 % | 7.0 | — (development) |" in table
    assert "| street_scenes | test | raw | 2 | 3.00 | 3.00 | 50 % | 9.0 | missed |" in table
    assert sw.estimate_table({}, plans) == "No finished candidate has an estimate yet."


def estimate_frame(rng: np.random.Generator, count: int, offset: float = -1.0,
                   heldout: float | None = None) -> pd.DataFrame:
    """``count`` candidates whose held-out score is sigmoid(logit(estimate) + offset) (or ``heldout``) with noise."""
    estimate = rng.uniform(0.2, 0.8, count)
    law = 1.0 / (1.0 + np.exp(-(np.log(estimate / (1.0 - estimate)) + offset))) + rng.normal(0.0, 0.01, count)
    return pd.DataFrame({"heldout": np.full(count, heldout) if heldout is not None else law,
                         "estimate_score": estimate, "estimate_low": estimate - 0.01, "estimate_high": estimate + 0.01,
                         "estimate_method": "agreement"})


def calibration_frames(plans: list[SweepPlan], test_heldout: float | None) -> dict[str, pd.DataFrame]:
    """Street development sweeps on day_city and dusk_city (12 candidates each) and, unless ``test_heldout`` is
    None, a foggy_city test sweep whose held-out scores are all ``test_heldout``."""
    rng = np.random.default_rng(0)
    wide = {target: next(plan for plan in plans if plan.targets == (target,) and plan.kind == sw.WIDE_KIND
                         and plan.options["data"] == "street_scenes") for target in ("day_city", "dusk_city",
                                                                                      "foggy_city")}
    frames = {wide[target].sweep_id: estimate_frame(rng, 12) for target in ("day_city", "dusk_city")}
    if test_heldout is not None:
        frames[wide["foggy_city"].sweep_id] = estimate_frame(rng, 5, heldout=test_heldout)
    return frames


def table_line(table: str, family: str, role: str, kind: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {family} | {role} | {kind} |"))


def test_estimate_table_adds_dev_calibrated_rows_fitted_on_development_targets_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 29 item 6: the dev-calibrated rows leave each development target out in turn and judge the test targets
    with a calibration fitted on every development candidate; a test candidate never feeds a fit, so an absurd
    test held-out score changes neither the development row nor the fitted offsets."""
    plans = sw.build_plans(options(tmp_path, budget="decision"))
    fitted_targets: list[str] = []
    real_fit = evaluate_estimate.fit_estimate_calibration

    def spy(rows: Any, **options: Any) -> Any:
        fitted_targets.extend(row["target"] for row in rows)
        return real_fit(rows, **options)

    monkeypatch.setattr(evaluate_estimate, "fit_estimate_calibration", spy)
    monkeypatch.setattr(sw, "fit_estimate_calibration", spy)
    partial = sw.estimate_table(calibration_frames(plans, None), plans)
    assert table_line(partial, "street_scenes", "test", "dev-calibrated").endswith("| no test candidate yet |")
    sane = sw.estimate_table(calibration_frames(plans, 0.15), plans)
    absurd = sw.estimate_table(calibration_frames(plans, 0.999), plans)
    assert set(fitted_targets) == {"day_city", "dusk_city"}  # never foggy_city
    development = table_line(sane, "street_scenes", "development", "dev-calibrated")
    assert development.startswith("| street_scenes | development | dev-calibrated | 24 | ")
    error, median, coverage = development.split(" | ")[4:7]
    assert float(error) < 2.0 and median == "—" and coverage.endswith("%")
    assert development == table_line(absurd, "street_scenes", "development", "dev-calibrated")
    assert table_line(sane, "street_scenes", "test", "dev-calibrated").startswith(
        "| street_scenes | test | dev-calibrated | 5 | ")
    assert table_line(absurd, "street_scenes", "test", "dev-calibrated").endswith("| missed |")
    fits = [text.split("Fits used for the test rows: ")[1] for text in (partial, sane, absurd)]
    assert fits[0] == fits[1] == fits[2] and "24 development candidates of day_city, dusk_city" in fits[0]
    assert "split-conformal" in sane and "test targets never feed the fit" in sane
    assert table_line(sane, "street_scenes", "test", "raw")  # the raw rows stay


def guard_plans(tmp_path: Path) -> list[SweepPlan]:
    """The guard budget's plan as the command line builds it (shape, options, targets)."""
    arguments = ["--budget", "guard", "--workdir", str(tmp_path / "store"), "--data-root", str(tmp_path)]
    return sw.build_plans(sw.build_options(sw.parse_args(arguments)))


def test_guard_budget_runs_only_references_and_wide_sweeps_with_the_default_configuration(tmp_path: Path) -> None:
    """Issue 29 item 5: decision's wide sweeps, each with include_default (6 trials), and the source-only references;
    no entropy-weight or t2sda default sweep; development before test; its own names, section and workdir."""
    plans = guard_plans(tmp_path)
    wide = [plan for plan in plans if plan.kind == sw.WIDE_KIND]
    references = [plan for plan in plans if plan.kind != sw.WIDE_KIND]
    assert {(plan.method, plan.kind) for plan in references} == {(sw.REFERENCE_METHOD, DEFAULT_KIND)}
    assert {(plan.seed, plan.targets[0]) for plan in references} == {
        (seed, target) for seed in (0, 1, 2) for family in ("street_scenes", "digits")
        for target in (*get_family(family).development_targets, *get_family(family).test_targets)}
    assert len(references) == 3 * 8 and {plan.method for plan in wide} == set(sw.METHODS)
    assert all(plan.options["include_default"] is True and plan.options["num_samples"] == 5
               and plan.expected_trials == 6 for plan in wide)
    assert all("include_default" not in plan.options and plan.expected_trials == 1 for plan in references)
    roles = [sw.target_role(plan.options["data"], plan.targets[0]) for plan in plans]
    assert roles == sorted(roles) and roles.count("development") == 51  # every development sweep first
    assert (len(plans), sum(plan.expected_trials for plan in plans)) == (81, 366)
    assert all(plan.sweep_id.startswith("sw-guard-") for plan in plans)
    assert sw.section_name("guard") == "selection_wide.guard"
    assert sw.parse_args(["--budget", "guard"]).workdir == REPO / "results" / "selection_wide_guard"
    for method in sw.METHODS:
        assert sw.budget_settings(method, "guard") == sw.budget_settings(method, "decision")


def test_guard_wide_sweeps_are_the_decision_budgets_plus_the_default_configuration(tmp_path: Path) -> None:
    """Beyond include_default and the name, a guard wide sweep asks exactly what decision's asks (same random sample,
    training settings, selection images); decision's own sweeps keep no include_default."""
    shape = sw.SHAPES["decision"]
    decision = sw.build_plans(dataclasses.replace(options(tmp_path, "decision"), seeds=shape.seeds,
                                                  data_root=tmp_path.resolve(), development_first=True))
    decision_wide = {(plan.method, plan.seed, plan.targets[0]): plan for plan in decision if plan.kind == sw.WIDE_KIND}
    guard_wide = [plan for plan in guard_plans(tmp_path) if plan.kind == sw.WIDE_KIND]
    assert len(guard_wide) == len(decision_wide) == 3 * (3 * 3 + 5 * 2)
    for plan in guard_wide:
        other = decision_wide[(plan.method, plan.seed, plan.targets[0])]
        assert {**plan.options, "include_default": False} == {**other.options, "include_default": False}
        assert plan.swept == other.swept and plan.expected_trials == other.expected_trials + 1
    assert not any("include_default" in plan.options for plan in decision)


def test_guard_plans_count_and_recognise_the_default_trial_as_raysel_does(tmp_path: Path) -> None:
    """The study's requests expect the trials the plans count (the default configuration's included), and the
    plan's default configuration is the point include_default runs, training length included: the trial raysel's
    guard keeps is the one the benchmark's baseline and re-scoring read, not a candidate at the budget's length."""
    from benchmarks._common import campaign_study
    from raysel.registry import get_method
    from raysel.request_build import default_point

    plans = guard_plans(tmp_path)
    study = campaign_study(sw.section_name("guard"), tmp_path / "store", plans)
    for plan, sweep in zip(plans, study.sweeps):
        assert sweep.request.expected_trials() == plan.expected_trials, plan.sweep_id
    for method in sw.METHODS:
        plan, sweep = next((plan, sweep) for plan, sweep in zip(plans, study.sweeps)
                           if plan.method == method and plan.kind == sw.WIDE_KIND)
        request = sweep.request
        included = {**request.space.fixed_values(),
                    **default_point(get_method(method), request.space, request.search.algorithm)}
        budget_length = {**included, **sw.budget_settings(method, "guard")}
        assert budget_length != included  # the budget shortens the training the default point runs
        rows = [{"trial_id": f"t{k}", "target": plan.targets[0], "status": "finished",
                 **{f"hp_{name}": values[name] for name in plan.swept}}
                for k, values in enumerate((budget_length, included))]
        assert plan_default_trials(plan, pd.DataFrame(rows)) == {plan.targets[0]: "t1"}, method
    assert not (tmp_path / "store").exists()


def test_collapse_reference_is_the_reference_sweep_not_a_wide_sweeps_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On digits source_only's wide sweep now holds its default configuration; the collapse reference of a target
    stays the reference sweep's trial (0.30), not its mean with that candidate (0.40)."""
    plans = [plan for plan in guard_plans(tmp_path) if plan.seed == 0 and plan.targets == ("photo_digits",)]
    reference = next(plan for plan in plans if plan.kind == DEFAULT_KIND)
    wide = next(plan for plan in plans if plan.method == "source_only" and plan.kind == sw.WIDE_KIND)
    defaults = {plan.sweep_id: plan_defaults(plan) for plan in (reference, wide)}

    def frame(plan: SweepPlan, heldout: list[float]) -> pd.DataFrame:
        return pd.DataFrame([{"trial_id": f"t{k}", "target": "photo_digits", "heldout": score,
                              **{f"hp_{name}": defaults[plan.sweep_id][name] for name in plan.swept}}
                             for k, score in enumerate(heldout)])

    frames = {reference.sweep_id: frame(reference, [0.30]), wide.sweep_id: frame(wide, [0.50])}
    adapting = next(plan for plan in plans if plan.method == "gsda" and plan.kind == sw.WIDE_KIND)
    case = SweepCase("gsda", 0, "photo_digits", sw.WIDE_KIND, adapting.sweep_id, ["t0", "t1"], [0.2, 0.4])
    monkeypatch.setattr(sw, "evaluate_plans", lambda plans, results: ([case], ["fmiou"], frames))
    [wide_case_] = sw.wide_cases(plans, tmp_path)[0]
    assert wide_case_.source_only == pytest.approx(0.30)


def test_a_section_of_wide_sweeps_only_reads_well(tmp_path: Path) -> None:
    """The guard budget's body: its purpose (issue 29 item 5), the default configuration run first in the ranges, no
    entropy-weight table or row, and the rule's input and the shipped recommendation said under the rule."""
    shape = sw.SHAPES["guard"]
    guard = dataclasses.replace(options(tmp_path, "guard", ("hiast",)), entropy_sweeps=shape.entropy_sweeps,
                                include_default=shape.include_default)
    cases = [wide_case([0.10, 0.40, 0.35], {"fmiou": 0, "im": 1}, source=0.30, guarded=1),
             wide_case([0.30, 0.50, 0.45], {"fmiou": 0, "im": 1}, source=0.20, target="foggy_city", role="test",
                       guarded=1)]
    body = sw.format_body(cases, ["fmiou", "im"], guard, "facts")
    assert body.startswith("Wide sweeps with the default configuration as a candidate (issue 13 item 3), budget "
                           "`guard`")
    assert "What this budget is for (issue 29 item 5)" in body
    assert "6 candidates per sweep" in body and "one at a time" not in body
    assert '- hiast (street_scenes): wide {"learning_rate"' in body
    assert 'first the default configuration {"learning_rate": 0.0002, "iterations_per_round": 120' in body
    assert "entropy-weight sweeps," not in body and "entropy-weight |" not in body
    assert "### development targets — street_scenes (day_city): wide sweeps" in body
    assert "### test targets — street_scenes (foggy_city): wide sweeps" in body
    assert "Its input here: this budget's development wide sweeps only" in sw.rule_text(cases, ["fmiou", "im"], guard)
    assert "the shipped recommendation stays the `decision` budget's" in body
    assert "| street_scenes | 1 wide |" in body  # the shipped decision's goal table: the wide row only
    section = sw.format_section(sw.section_name("guard"), "python -m benchmarks.selection_wide --budget guard", body,
                                date="d", machine="m", commit="1234567", load=(1.0, 1.0))
    assert section.startswith("## selection_wide.guard\n")
    decision = sw.format_body(cases, ["fmiou", "im"], options(tmp_path, "decision", ("hiast",)), "facts")
    assert "What this budget is for" not in decision and "lambda_i one at a time" in decision
    assert decision.startswith("Wide and entropy-weight sweeps (issue 13 item 3)")
    assert "first the default configuration" not in decision and "Its input here" not in decision


def test_estimate_table_adds_dev_regressed_rows_fitted_on_development_targets_only(tmp_path: Path) -> None:
    """Issue 29 item 6: the dev-regressed rows, like the dev-calibrated ones, leave each development target out in
    turn and judge the test targets with the regression fitted on every development candidate; an absurd test
    held-out score changes neither the development row nor the fit used for the test rows."""
    plans = sw.build_plans(options(tmp_path, budget="decision"))

    def frames(test_heldout: float | None) -> dict[str, pd.DataFrame]:
        """calibration_frames plus a second development sweep per target (a fit on one target leaves out sweeps)."""
        rng = np.random.default_rng(1)
        second = {plan.targets[0]: plan for plan in plans if plan.options["data"] == "street_scenes"
                  and plan.targets[0] in ("day_city", "dusk_city") and plan.kind == sw.WIDE_KIND
                  and plan.sweep_id not in calibration_frames(plans, None)}
        return {**calibration_frames(plans, test_heldout),
                **{plan.sweep_id: estimate_frame(rng, 12) for plan in second.values()}}

    partial, sane, absurd = (sw.estimate_table(frames(heldout), plans) for heldout in (None, 0.15, 0.999))
    assert table_line(partial, "street_scenes", "test", "dev-regressed").endswith("| no test candidate yet |")
    development = table_line(sane, "street_scenes", "development", "dev-regressed")
    assert development.startswith("| street_scenes | development | dev-regressed | 48 | ")
    assert float(development.split(" | ")[4]) < 3.0  # the frames' law is linear in logit(estimate)
    assert development == table_line(absurd, "street_scenes", "development", "dev-regressed")
    assert table_line(sane, "street_scenes", "test", "dev-regressed").startswith(
        "| street_scenes | test | dev-regressed | 5 | ")
    assert table_line(absurd, "street_scenes", "test", "dev-regressed").endswith("| missed |")
    fits = [text.split("*dev-regressed*")[1].split("Fits used for the test rows: ")[1] for text in (partial, sane,
                                                                                                  absurd)]
    assert fits[0] == fits[1] == fits[2] and "48 development candidates of day_city, dusk_city" in fits[0]
    assert "estimate" in fits[0] and "by target" in fits[0]
    rows = sw.estimate_rows(frames(0.15), plans)
    assert {row["sweep_id"] for row in rows} <= {plan.sweep_id for plan in plans}
    assert all(name in rows[0] for name in sw.REGRESSION_FEATURES)
