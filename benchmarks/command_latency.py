"""command_latency: do the light commands answer at once? (issue 27 item 5, "Light commands stay light")

`raysel status` used to take 8 s on two quiet cores, 7 of them importing torch and Ray, and `raysel query` 2.3 s
against 1.8 s for DuckDB in a fresh process. This benchmark builds a small finished sweep through raysel's public API
(trial rows with real prediction caches, per-class held-out IoU and class names, the sweep's saved request, the
decisions the sweep recorded; no training), then times each command in a fresh process, as a user runs it:

* the floor: ``python -c "import duckdb"`` (a Python start plus the SQL engine every store read needs);
* ``raysel query "SELECT count(*) FROM trials"``, ``raysel status SWEEP``, ``raysel select SWEEP`` (no
  ``--repredict``: it re-scores every selector from the cached predictions and records the decisions) and
  ``raysel report SWEEP`` (PNG plots, report.md and report.html).

Each figure is the median of ``--repeats`` runs (min and max beside it). One more run per command under
``python -X importtime`` says whether it imported torch or Ray (it should import neither). Prints the table and writes
the ``## command_latency`` section of BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks._common import REPO, command_line, write_section
from raysel.data import get_family
from raysel.request import save_request
from raysel.request_build import build_request
from raysel.selection import CandidatePredictions, save_predictions, select_sweep
from raysel.store import ResultStore
from raysel.store.compaction import compact_sweep

SECTION = "command_latency"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("raysel/cli.py", "raysel/query.py", "raysel/status.py", "raysel/select.py", "raysel/report.py",
            "raysel/reporting", "raysel/request.py", "raysel/store", "raysel/selection", "raysel/metrics.py",
            "raysel/conventions.py")
SWEEP = "hiast-latency"
METHOD, DATASET, TARGET = "hiast", "street_scenes", "day_city"
IMAGES, HEIGHT, WIDTH = 8, 64, 128  # per candidate's prediction cache (the selection subset, small)
GRID = (16, 32)  # probability grid, as raysel caches it (at most 16 x 32 pixels per image)
FEATURE_STRIDE, FEATURE_DIM = 4, 16  # features at every 4th grid row and column, as raysel caches them
HEAVY = ("torch", "ray")


@dataclass(frozen=True)
class Timing:
    """One command's wall times over the repeats, and the heavy modules it imported."""

    name: str
    seconds: tuple[float, ...]
    heavy: tuple[str, ...] | None  # None: not checked (the floor)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


# --------------------------------------------------------------------------------------------------------------
# The small finished sweep
# --------------------------------------------------------------------------------------------------------------


def grid_positions(size: int, cells: int) -> np.ndarray:
    """Centres of ``cells`` equal cells along ``size`` pixels (where a cache keeps probabilities)."""
    return ((np.arange(min(cells, size)) + 0.5) * size / min(cells, size)).astype(np.int64)


def candidate_cache(path: Path, truth: np.ndarray, skill: float, num_classes: int,
                    rng: np.random.Generator) -> str:
    """A segmentation prediction cache (labels, probability and feature grids) of a candidate right on ``skill`` of
    the pixels; the candidates share ``truth``, so they mostly agree, as a sweep's do."""
    wrong = rng.random(truth.shape) > skill
    labels = np.where(wrong, rng.integers(0, num_classes, truth.shape), truth).astype(np.uint8)
    rows, cols = grid_positions(HEIGHT, GRID[0]), grid_positions(WIDTH, GRID[1])
    logits = rng.normal(0.0, 1.0, (IMAGES, num_classes, rows.size, cols.size))
    logits += 4.0 * np.moveaxis(np.eye(num_classes)[labels[:, rows][:, :, cols]], -1, 1)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    feature_rows, feature_cols = rows[::FEATURE_STRIDE], cols[::FEATURE_STRIDE]
    centres = rng.normal(0.0, 1.0, (num_classes, FEATURE_DIM))
    features = centres[labels[:, feature_rows][:, :, feature_cols]] + rng.normal(
        0.0, 0.5, (IMAGES, feature_rows.size, feature_cols.size, FEATURE_DIM))
    image_ids = tuple(f"img{index}" for index in range(IMAGES))
    candidate = CandidatePredictions(
        labels=labels, probabilities=probabilities.astype(np.float16), image_ids=image_ids,
        image_indices=np.arange(IMAGES), num_classes=num_classes, task="segmentation", probability_rows=rows,
        probability_cols=cols, features=np.moveaxis(features, -1, 1).astype(np.float16), feature_rows=feature_rows,
        feature_cols=feature_cols)
    return str(save_predictions(path, candidate))


def build_sweep(results: Path, candidates: int, seed: int) -> None:
    """A finished HIAST sweep on one target as raysel lays it out: the saved request, one row per trial (``candidates``
    finished with prediction caches in their trial folders, one failed), and the decisions the sweep recorded."""
    request = build_request(method=METHOD, data=DATASET, target=[TARGET], name=SWEEP, results=results,
                            data_root=results.parent / "data")
    save_request(request)
    class_names = list(get_family(DATASET).class_names)
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(class_names), (IMAGES, HEIGHT, WIDTH))
    store = ResultStore(results)
    started = 1_760_000_000.0
    for index in range(candidates + 1):
        trial_id = f"t_{index:05d}"
        failed = index == candidates
        row = {"sweep_id": SWEEP, "trial_id": trial_id, "method": METHOD, "task": "segmentation", "dataset": DATASET,
               "source": request.data.source, "target": TARGET, "model": "small_segnet", "seed": 0,
               "status": "failed" if failed else "finished", "error": "RuntimeError: out of memory" if failed else None,
               "retries": 0, "wall_time_s": 60.0, "started_at": started + 60.0 * index,
               "finished_at": started + 60.0 * (index + 1), "class_names": class_names,
               "hyperparameters": {"alpha": 0.3 + 0.1 * index, "k": 2 + index % 3}}
        if not failed:
            heldout_iou = rng.uniform(0.2, 0.8, len(class_names))
            row.update(heldout_miou=float(heldout_iou.mean()), heldout_iou=heldout_iou.tolist(),
                       checkpoint_path=str(request.trial_dir(trial_id) / "model.pt"),
                       predictions_path=candidate_cache(request.trial_dir(trial_id) / "predictions.npz", truth,
                                                        0.75 + 0.2 * index / max(candidates - 1, 1),
                                                        len(class_names), rng))
        store.write_trial(row)
    # What the sweep does after its last trial: every applicable selector in its decision order, then compaction.
    select_sweep(store, SWEEP, METHOD, request.selectors, io.StringIO(), record_all=True)
    compact_sweep(store, SWEEP)


# --------------------------------------------------------------------------------------------------------------
# Timing fresh processes
# --------------------------------------------------------------------------------------------------------------


def raysel_launcher() -> list[str]:
    """The ``raysel`` console script installed next to this Python, else ``python -m raysel.cli`` (the same main)."""
    script = Path(sys.executable).with_name("raysel")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "raysel.cli"]


def run(arguments: Sequence[str], environment: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one command to completion from the repository root; a failure stops the benchmark with its output."""
    result = subprocess.run(list(arguments), capture_output=True, text=True, cwd=REPO, env=environment)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} exited {result.returncode}:\n{result.stdout[-2000:]}"
                           f"{result.stderr[-2000:]}")
    return result


def wall_times(arguments: Sequence[str], repeats: int, environment: dict[str, str]) -> tuple[float, ...]:
    """Wall time of ``repeats`` fresh runs of ``arguments``, Python's start included."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(arguments, environment)
        times.append(time.perf_counter() - started)
    return tuple(times)


def heavy_imports(command: Sequence[str], environment: dict[str, str]) -> tuple[str, ...]:
    """The heavy modules (torch, ray) one more run of ``raysel COMMAND...`` imports, read from ``-X importtime``."""
    result = run([sys.executable, "-X", "importtime", "-m", "raysel.cli", *command], environment)
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    return tuple(name for name in HEAVY if name in imported)


def measure(results: Path, report_folder: Path, repeats: int) -> list[Timing]:
    """Time the floor and each light command on the store at ``results``."""
    environment = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAYSEL_RESULTS")}
    commands = {
        '`raysel query "SELECT count(*) FROM trials"`': ["query", "SELECT count(*) FROM trials",
                                                         "--results", str(results)],
        "`raysel status SWEEP`": ["status", SWEEP, "--results", str(results)],
        "`raysel select SWEEP` (no --repredict)": ["select", SWEEP, "--results", str(results)],
        "`raysel report SWEEP`": ["report", SWEEP, "--results", str(results), "--output", str(report_folder)],
    }
    timings = [Timing('floor: `python -c "import duckdb"`',
                      wall_times([sys.executable, "-c", "import duckdb"], repeats, environment), None)]
    for name, command in commands.items():
        seconds = wall_times([*raysel_launcher(), *command], repeats, environment)
        timings.append(Timing(name, seconds, heavy_imports(command, environment)))
        print(f"{name}: median {timings[-1].median:.2f} s", flush=True)
    return timings


def report(timings: list[Timing], args: argparse.Namespace) -> str:
    """The markdown body: what was timed, one table, how to read it."""
    floor = timings[0].median
    rows = [f"A finished HIAST sweep on {TARGET}: {args.candidates} candidates with prediction caches of {IMAGES} "
            f"images of {HEIGHT}x{WIDTH} (labels, probability and feature grids), per-class held-out IoU and class "
            f"names, one failed trial, the saved request and the decisions the sweep recorded; built through raysel's "
            f"API without training. Each command runs in a fresh process (`{' '.join(raysel_launcher())}`, from the "
            f"repository root); medians of {args.repeats} runs. torch / Ray: what one more run under "
            "`python -X importtime` imported.", "",
            "| command | median | min - max | over the floor | imports torch / Ray |",
            "|---|---:|---:|---:|---|"]
    for timing in timings:
        heavy = "-" if timing.heavy is None else (", ".join(timing.heavy) or "neither")
        over = "-" if timing.heavy is None else f"+{timing.median - floor:.2f} s"
        spread = f"{min(timing.seconds):.2f} - {max(timing.seconds):.2f} s"
        rows.append(f"| {timing.name} | {timing.median:.2f} s | {spread} | {over} | {heavy} |")
    rows += ["", "Goal (issue 27): none of these imports torch or Ray; `query` stays close to the floor. `select` "
             "re-scores every applicable selector (scipy, scikit-learn for cluster_ami) and records the decisions; "
             "`report` draws its plots with matplotlib."]
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh runs per command (default 5; the median counts)")
    parser.add_argument("--candidates", type=int, default=8, help="finished candidates of the sweep (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parent", type=Path, default=None, help="folder for the temporary store (default: temp)")
    parser.add_argument("--no-write", action="store_true", help="print the section without touching BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.candidates < 2:
        parser.error("--repeats must be >= 1 and --candidates >= 2 (selection needs two candidates)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Build the sweep, time the commands, print the section and (unless --no-write) write it."""
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="raysel-command-latency-", dir=args.parent))
    try:
        results = folder / "results"
        build_sweep(results, args.candidates, args.seed)
        body = report(measure(results, folder / "report", args.repeats), args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    command = command_line("command_latency", argv)
    if args.no_write:
        print(f"## {SECTION}\n\nCommand: `{command}`\n\n{body}")
    else:
        print(write_section(SECTION, command, body), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
