"""`python -m raysel.sweep t2sda|sfda|gsda` end to end on local Ray, and a trial whose loss turns NaN mid-sweep.

Each sweep is real (Ray Tune trials, real training on the embedded benchmarks, the Parquet store) with tiny budgets:
a 2-point grid on one of the method's own swept hyperparameters, the others fixed, 10 source-stage iterations and a
few adaptation iterations. The checks are those of the HIAST sweep test (tests/test_sweep.py): every trial stored
finished with a finite held-out score, the method's default selectors recorded, one trial marked in the printed
table, and `python -m raysel.query` returning the rows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.sweep_runner import run_sweep_in

pytestmark = pytest.mark.integration

COMMON_SWEEP_OPTIONS = ["--selection-size", "12", "--progress-interval", "5"]
# Tiny budgets: the source stage and each method's own iteration knobs (the rest keeps the method's defaults).
TINY_T2SDA = ["--set", "source_iterations=10", "--set", "iterations=4", "--set", "warmup_iterations=1",
              "--set", "report_interval=2"]
TINY_SFDA = ["--set", "iterations=4", "--set", "reports=2", "--set", "batch_size=2", "--set", "generator_width=8",
             "--set", "discriminator_width=8"]
TINY_GSDA = ["--set", "source_iterations=10", "--set", "iterations=6", "--set", "num_reports=2",
             "--set", "batch_size=16"]
NON_FINITE_LEARNING_RATE = 1.0e12  # Adam moves every weight by ~lr on the first step: the next loss is NaN/inf


@dataclass(frozen=True)
class SweepRun:
    """What one in-process `raysel.sweep.main` call left behind."""

    code: int
    printed: str
    results: Path
    sweep_id: str

    def trials(self) -> pd.DataFrame:
        """The sweep's trial rows from the store, ordered by trial id."""
        from raysel import store

        return store.load(self.results, sweep_id=self.sweep_id).sort_values("trial_id").reset_index(drop=True)

    def selections(self) -> pd.DataFrame:
        """The sweep's selection decisions from the store."""
        from raysel import store

        return store.load(self.results, table="selections", sweep_id=self.sweep_id)

    def marked_lines(self) -> list[str]:
        """Rows of the printed trials table marked '*' (the trial the primary selector chose)."""
        return [line for line in self.printed.splitlines() if line.startswith("*")]


def run_sweep(workdir: Path, method: str, sweep_id: str, data_root: Path, *options: str) -> SweepRun:
    """Run `python -m raysel.sweep METHOD ...` in-process from ``workdir`` with a relative --results."""
    code, printed = run_sweep_in(workdir, [method, "--data-root", str(data_root), "--results", "results", "--name",
                                           sweep_id, *COMMON_SWEEP_OPTIONS, *options])
    return SweepRun(code, printed, workdir / "results", sweep_id)


def query_rows(results: Path, sql: str) -> list[dict[str, str]]:
    """Run `python -m raysel.query --format csv SQL` in-process and parse what it printed."""
    from raysel.query import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["--results", str(results), "--format", "csv", sql])
    assert code == 0, printed.getvalue()
    return list(csv.DictReader(io.StringIO(printed.getvalue())))


def grid(*values: float) -> str:
    """A `{grid: [...]}` search-space entry for --set."""
    return "{grid: [" + ", ".join(repr(value) for value in values) + "]}"


def assert_selected_and_stored(run: SweepRun, method: str, heldout: str, swept: str,
                               values: list[float]) -> pd.DataFrame:
    """Exit 0; one finished row per grid value with a finite held-out score; the default selectors' decisions
    recorded and the primary one marked in the table; the rows queryable with `python -m raysel.query`."""
    from raysel.registry import get_method

    assert run.code == 0, run.printed[-4000:]
    trials = run.trials()
    assert len(trials) == len(values), trials[["trial_id", "status", "error"]]
    assert set(trials["status"]) == {"finished"}, trials[["trial_id", "status", "error"]]
    assert sorted(trials[f"hp_{swept}"]) == sorted(values)
    assert trials[heldout].map(math.isfinite).all() and trials[heldout].between(0, 1).all(), trials[heldout]
    assert set(trials["method"]) == {method}

    selectors = list(get_method(method).default_selectors)
    selections = run.selections()
    assert set(selectors) <= set(selections["selector"])  # the defaults, and every other applicable selector
    assert set(selections.loc[selections["headline"].astype(bool), "selector"]) == {selectors[0]}
    primary = selections[selections["selector"] == selectors[0]].iloc[0]
    scores = trials[f"score_{selectors[0]}"]
    assert scores.between(0, 1).all(), scores
    assert primary["selected_trial_id"] == trials.loc[scores.idxmax(), "trial_id"]
    assert primary["num_candidates"] == len(values)
    marked = run.marked_lines()
    assert len(marked) == 1 and primary["selected_trial_id"] in marked[0], run.printed[-4000:]

    rows = query_rows(run.results, f"SELECT trial_id, status, {heldout} FROM trials "
                                   f"WHERE sweep_id = '{run.sweep_id}' AND method = '{method}' ORDER BY trial_id")
    assert [row["trial_id"] for row in rows] == list(trials["trial_id"])
    assert {row["status"] for row in rows} == {"finished"}
    assert [float(row[heldout]) for row in rows] == pytest.approx(list(trials[heldout]))
    return trials


def save_source_checkpoint(data_root: Path, workdir: Path, iterations: int = 10) -> Path:
    """Train the shared source-only model for a few iterations and save it as a standalone SFDA source checkpoint."""
    from raysel.methods import stages
    from raysel.methods.base import LocalSession, RunContext, RunSpec

    spec = RunSpec(method="sfda", dataset="street_scenes", data_root=str(data_root), output_dir=str(workdir / "source"),
                   num_threads=1)
    ctx = RunContext(spec, LocalSession(checkpoint_root=str(workdir / "source-checkpoints")))
    state = stages.train_on_source(ctx, stages.SourceStageSettings(iterations=iterations))["model"]
    path = workdir / "source_model.pt"
    torch.save({"model": state}, path)
    return path


# --------------------------------------------------------------------------------------------------------------
# One sweep per method
# --------------------------------------------------------------------------------------------------------------


def test_t2sda_sweep_selects_and_stores(ray_local, embedded_data_root: Path, tmp_path: Path) -> None:
    """A 2-trial T2S-DA sweep over λ (the pull weight); the other swept hyperparameters fixed (paper values, n and m
    at the low end of Tab. 16 to keep the contrastive step small)."""
    lambdas = [0.01, 0.1]
    run = run_sweep(tmp_path, "t2sda", "t2sda-tiny", embedded_data_root, *TINY_T2SDA,
                    "--set", f"lambda_={grid(*lambdas)}", "--set", "tau=0.2", "--set", "beta=0.5",
                    "--set", "alpha=0.5", "--set", "n=64", "--set", "m=512", "--set", "fda_beta=0.05")
    trials = assert_selected_and_stored(run, "t2sda", "heldout_miou", "lambda_", lambdas)
    assert set(trials["hp_iterations"]) == {4} and set(trials["target"]) == {"day_city"}


def test_sfda_sweep_selects_and_stores_and_runs_source_free(ray_local, embedded_data_root: Path,
                                                            tmp_path: Path) -> None:
    """A 2-trial SFDA sweep over α from a given source checkpoint: every stored row records that checkpoint as the
    trial's source model, so no source stage ran (tests/test_methods_sfda.py proves that adaptation from a checkpoint
    never reads source data)."""
    checkpoint = save_source_checkpoint(embedded_data_root, tmp_path)
    alphas = [0.5, 1.0]
    run = run_sweep(tmp_path, "sfda", "sfda-tiny", embedded_data_root, *TINY_SFDA,
                    "--set", f"source_checkpoint={checkpoint}", "--set", f"alpha={grid(*alphas)}",
                    "--set", "beta=0.5", "--set", "gamma=0.01", "--set", "k_patches=3")
    trials = assert_selected_and_stored(run, "sfda", "heldout_miou", "alpha", alphas)
    assert set(trials["hp_source_checkpoint"]) == {str(checkpoint)}
    assert set(trials["hp_iterations"]) == {4}


def test_gsda_sweep_selects_and_stores(ray_local, embedded_data_root: Path, tmp_path: Path) -> None:
    """A 2-trial GSDA sweep over β (gradient synchronization) on the digits benchmark, α and groups fixed."""
    betas = [0.1, 1.0]
    run = run_sweep(tmp_path, "gsda", "gsda-tiny", embedded_data_root, *TINY_GSDA,
                    "--set", f"beta={grid(*betas)}", "--set", "alpha=0.02", "--set", "groups=3")
    trials = assert_selected_and_stored(run, "gsda", "heldout_accuracy", "beta", betas)
    assert set(trials["task"]) == {"classification"} and set(trials["hp_groups"]) == {3}


# --------------------------------------------------------------------------------------------------------------
# A trial whose loss becomes non-finite
# --------------------------------------------------------------------------------------------------------------


def test_non_finite_trial_is_marked_failed_and_selection_ignores_it(ray_local, embedded_data_root: Path,
                                                                    tmp_path: Path) -> None:
    """source_only over three learning rates, one absurd: that trial is stored failed with the non-finite loss as its
    reason, the two others finish, the sweep exits 0 and the selection chooses between the two finished ones."""
    sane = [1.0e-3, 2.0e-3]
    run = run_sweep(tmp_path, "source_only", "nan-lr", embedded_data_root, "--set", "iterations=10",
                    "--set", f"learning_rate={grid(*sane, NON_FINITE_LEARNING_RATE)}")
    assert run.code == 0, run.printed[-4000:]
    trials = run.trials()
    assert len(trials) == 3, trials[["trial_id", "status", "error"]]
    failed = trials[trials["hp_learning_rate"] == NON_FINITE_LEARNING_RATE]
    finished = trials[trials["hp_learning_rate"] != NON_FINITE_LEARNING_RATE]
    assert list(failed["status"]) == ["failed"], trials[["trial_id", "status", "error"]]
    error = failed["error"].iloc[0]
    assert "training loss became" in error and ("nan" in error or "inf" in error), error
    assert set(finished["status"]) == {"finished"} and finished["heldout_miou"].between(0, 1).all()
    assert pd.isna(failed["heldout_miou"].iloc[0])

    selections = run.selections()
    assert "fmiou" in set(selections["selector"])  # every applicable selector is recorded; fmiou is the headline
    decision = selections[selections["selector"] == "fmiou"].iloc[0]
    assert bool(decision["headline"])
    assert decision["num_candidates"] == 2
    assert decision["selected_trial_id"] in set(finished["trial_id"])
    marked = run.marked_lines()
    assert len(marked) == 1 and decision["selected_trial_id"] in marked[0], run.printed[-4000:]
    failed_id = failed["trial_id"].iloc[0]
    assert f"trial {failed_id} failed: " in run.printed and "training loss became" in run.printed
    assert pd.isna(failed["score_fmiou"].iloc[0])


def test_optuna_guided_by_a_trial_scored_selector(ray_local, embedded_data_root: Path, tmp_path: Path) -> None:
    """`--search optuna --objective consistency`: TPE proposes learning rates, every trial stores the label-free
    perturbation-consistency score Optuna maximised, and the sweep still selects with the method's default."""
    run = run_sweep(tmp_path, "source_only", "optuna-consistency", embedded_data_root, "--set", "iterations=6",
                    "--set", "learning_rate={loguniform: [1.0e-4, 1.0e-2]}", "--search", "optuna",
                    "--num-samples", "2", "--objective", "consistency", "--target", "day_city")
    assert run.code == 0, run.printed[-4000:]
    trials = run.trials()
    assert len(trials) == 2 and set(trials["status"]) == {"finished"}, trials[["trial_id", "status", "error"]]
    assert trials["score_consistency"].between(0, 1).all(), trials["score_consistency"]
    assert trials["hp_learning_rate"].between(1.0e-4, 1.0e-2).all() and trials["hp_learning_rate"].nunique() == 2
    assert "fmiou" in set(run.selections()["selector"])
