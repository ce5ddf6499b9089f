"""store_scale: is the result store still fast with 10,000 trials of 100 sweeps? (issue 17 item 4)

Writes ``--sweeps`` x ``--trials-per-sweep`` trial rows through raysel's own writer (``ResultStore.write_trial``,
typed from the HIAST config class, like a sweep's trials), then times, in this one process and run:

* ``raysel.store.sql_arrow`` (what ``python -m raysel.query`` runs) on ``SELECT count(*) FROM trials`` and on a
  realistic group-by, against DuckDB's own ``read_parquet`` over the same files (a glob, ``union_by_name``);
* ``raysel.store.load()`` against DuckDB's ``read_parquet(...).df()``;
* the ``python -m raysel.query`` command against ``python -c "import duckdb; ..."`` (both start a Python);
* a re-selection of one sweep (``select_sweep`` with F-mIoU over its 100 candidates' prediction files, then the
  compaction that ``python -m raysel.select`` runs after it),

first on the per-trial files (10,000 files, how a running sweep writes them), then after
``raysel.store.compaction.compact_store`` merged them into one file per sweep (how finished sweeps stay). Each
figure is the median of ``--repeats`` runs; ratios are raysel / DuckDB. Prints a markdown section (``--write``
puts it into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import duckdb
import numpy as np

from benchmarks._common import REPO, command_line, format_section, replace_section
from raysel.registry import get_method
from raysel.selection import CandidatePredictions, save_predictions, select_sweep
from raysel.store import ResultStore, load, sql_arrow
from raysel.store.compaction import compact_store, compact_sweep

SECTION = "store_scale"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("raysel/store", "raysel/query.py",
            "raysel/select.py", "raysel/selection/decision.py", "raysel/selection/predictions.py",
            "raysel/selection/selectors.py", "raysel/selection/voting.py")
COUNT_QUERY = "SELECT count(*) FROM trials"
GROUP_QUERY = ("SELECT method, target, count(*) AS trials, avg(heldout_miou) AS mean_heldout, "
               "max(score_fmiou) AS best_fmiou FROM trials WHERE status = 'finished' GROUP BY ALL ORDER BY ALL")
TARGETS = ("day_city", "dusk_city")
NUM_CLASSES = 19
PREDICTION_SHAPE = (4, 64, 128)  # images x height x width cached per candidate of the re-selected sweep


def trial_row(sweep: int, trial: int, rng: np.random.Generator, predictions_path: str | None) -> dict[str, Any]:
    """One realistic HIAST trial row (typed hyperparameters, scores, per-class held-out IoU, versions)."""
    failed = rng.random() < 0.05
    start = 1_760_000_000.0 + 3600.0 * sweep + 60.0 * trial
    return {
        "sweep_id": f"hiast-{sweep:04d}", "trial_id": f"t_{trial:05d}", "method": "hiast",
        "task": "segmentation", "dataset": "street_scenes", "source": "game", "target": TARGETS[trial % 2],
        "model": "small_segnet", "seed": int(trial % 3), "status": "failed" if failed else "finished",
        "error": "RuntimeError: CUDA out of memory" if failed else None, "retries": int(failed),
        "wall_time_s": float(rng.uniform(30, 90)), "started_at": start, "finished_at": start + 60.0,
        "heldout_miou": None if failed else float(rng.uniform(0.3, 0.45)),
        "heldout_iou": None if failed else rng.uniform(0, 1, NUM_CLASSES).tolist(),
        "heldout_accuracy": None, "checkpoint_path": f"/ckpt/{sweep}/{trial}", "predictions_path": predictions_path,
        "raysel_version": "0.1.0", "ray_version": "2.60.0", "torch_version": "2.14.1",
        "hyperparameters": {"alpha": float(rng.uniform(0.5, 2.0)), "beta": float(rng.uniform(0, 1)), "k": int(trial % 5)},
        "scores": {"fmiou": None if failed else float(rng.uniform(0.5, 0.9))},
    }


def write_predictions(directory: Path, trials: int, rng: np.random.Generator) -> list[str]:
    """Small synthetic prediction caches (one per candidate of the re-selected sweep); candidates mostly agree."""
    truth = rng.integers(0, NUM_CLASSES, PREDICTION_SHAPE, dtype=np.uint8)
    paths = []
    for trial in range(trials):
        labels = np.where(rng.random(PREDICTION_SHAPE) < 0.1, rng.integers(0, NUM_CLASSES, PREDICTION_SHAPE),
                          truth).astype(np.uint8)
        candidate = CandidatePredictions(labels=labels, probabilities=None, image_ids=tuple(map(str, range(4))),
                                         image_indices=np.arange(4), num_classes=NUM_CLASSES, task="segmentation")
        paths.append(str(save_predictions(directory / f"t_{trial:05d}.npz", candidate)))
    return paths


def write_sweep(root: Path, sweep: int, per_sweep: int, seed: int, predictions: list[str] | None) -> None:
    """Write one sweep's trial rows through ``ResultStore.write_trial`` (one process per sweep, as Ray workers do)."""
    rng = np.random.default_rng([seed, sweep])
    config_class = get_method("hiast").config_class
    store = ResultStore(root)
    for trial in range(per_sweep):
        store.write_trial(trial_row(sweep, trial, rng, predictions[trial] if predictions else None), config_class)


def write_store(root: Path, sweeps: int, per_sweep: int, seed: int, processes: int) -> float:
    """Write every sweep's rows, ``processes`` writers at a time (the writes wait on fsync); return the seconds."""
    predictions = write_predictions(root / "predictions", per_sweep, np.random.default_rng(seed))
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(processes) as pool:
        futures = [pool.submit(write_sweep, root, sweep, per_sweep, seed, predictions if sweep == 0 else None)
                   for sweep in range(sweeps)]
        for future in futures:
            future.result()
    return time.perf_counter() - started


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``run``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def duckdb_source(root: Path) -> str:
    """DuckDB's own reader over every trial file of the store (the baseline)."""
    return (f"read_parquet('{root}/trials/*/*.parquet', union_by_name = true, hive_partitioning = true)")


def duckdb_sql(root: Path, query: str) -> Any:
    """``query`` with ``trials`` replaced by DuckDB's reader, run on a fresh connection (as raysel does)."""
    connection = duckdb.connect(":memory:")
    try:
        return connection.sql(query.replace("FROM trials", f"FROM {duckdb_source(root)}")).to_arrow_table()
    finally:
        connection.close()


def duckdb_load(root: Path) -> Any:
    """DuckDB's own ``read_parquet(...)`` into pandas (the baseline of ``raysel.store.load``)."""
    connection = duckdb.connect(":memory:")
    try:
        return connection.sql(f"SELECT * FROM {duckdb_source(root)}").df()
    finally:
        connection.close()


def run_command(arguments: list[str]) -> None:
    subprocess.run(arguments, check=True, capture_output=True, cwd=REPO)


def measure(root: Path, repeats: int, compacted: bool, full: bool = True) -> dict[str, tuple[float, float | None]]:
    """(raysel seconds, DuckDB seconds or None) per operation on the store as it is now (``full``: every operation,
    else the count query only)."""
    python = sys.executable
    duck_count = f"import duckdb; duckdb.sql(\"{COUNT_QUERY.replace('FROM trials', 'FROM ' + duckdb_source(root))}\").fetchall()"
    ours, theirs = sql_arrow(GROUP_QUERY, root).to_pandas(), duckdb_sql(root, GROUP_QUERY).to_pandas()
    if not (ours.columns.equals(theirs.columns) and np.allclose(ours.iloc[:, 2:], theirs.iloc[:, 2:], equal_nan=True)
            and ours.iloc[:, :2].equals(theirs.iloc[:, :2])):  # float sums may differ in the last bit (order)
        raise AssertionError(f"raysel's query and DuckDB's read_parquet disagree on the group-by:\n{ours}\n{theirs}")
    store = ResultStore(root)

    def reselect() -> None:
        select_sweep(store, "hiast-0000", "hiast", ["fmiou"], io.StringIO())
        if compacted:  # as python -m raysel.select does: merge the re-scored rows back
            compact_sweep(store, "hiast-0000")

    results = {f"query `{COUNT_QUERY}`": (median_seconds(lambda: sql_arrow(COUNT_QUERY, root), repeats),
                                          median_seconds(lambda: duckdb_sql(root, COUNT_QUERY), repeats))}
    if not full:
        return results
    results.update({
        "query: group-by over method, target (see script)": (
            median_seconds(lambda: sql_arrow(GROUP_QUERY, root), repeats),
            median_seconds(lambda: duckdb_sql(root, GROUP_QUERY), repeats)),
        "`raysel.store.load()` -> pandas": (median_seconds(lambda: load(root), repeats),
                                            median_seconds(lambda: duckdb_load(root), repeats)),
        "command `python -m raysel.query` (count), incl. Python start": (
            median_seconds(lambda: run_command([python, "-m", "raysel.query", COUNT_QUERY, "--results", str(root)]),
                           repeats),
            median_seconds(lambda: run_command([python, "-c", duck_count]), repeats)),
        "re-selection of one sweep (F-mIoU over its candidates)": (median_seconds(reselect, repeats), None),
    })
    return results


def report(args: argparse.Namespace, written_s: float, compact_s: float, files: tuple[int, int],
           per_trial: dict, compacted: dict) -> str:
    """The markdown body: workload, one table of both layouts with ratios, and how to read it."""
    rows = [f"Workload: {args.sweeps * args.trials_per_sweep:,} trial rows across {args.sweeps} sweeps (HIAST rows, "
            f"typed hyperparameters, per-class IoU lists, 5% failed), written through `ResultStore.write_trial` by "
            f"{args.writers} processes in {written_s:.0f} s. "
            f"`compact_store` merged the {files[0]:,} trial files into {files[1]:,} in {compact_s:.1f} s. "
            f"Medians of {args.repeats} runs ({args.per_trial_repeats} on the per-trial files), one process, the same "
            f"files for raysel and DuckDB, store on {args.parent or 'the default temp folder'}.", "",
            "| operation | per-trial files: raysel | DuckDB | ratio | compacted: raysel | DuckDB | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, (after_raysel, after_duck) in compacted.items():
        raysel_s, duck_s = per_trial.get(name, (None, None))
        cells = [f"{raysel_s:.2f} s" if raysel_s else "not run", f"{duck_s:.2f} s" if duck_s else "-",
                 f"{raysel_s / duck_s:.2f}x" if duck_s else "-", f"{after_raysel:.2f} s",
                 f"{after_duck:.2f} s" if after_duck else "-", f"{after_raysel / after_duck:.2f}x" if after_duck else "-"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows += ["", "Goal (issue 17): a query at most 1.5x DuckDB's own `read_parquet` over the same data, and under 2 s. "
             "The group-by's result was checked equal to DuckDB's. The re-selection includes re-compacting the sweep "
             "(its scores are rewritten as per-trial files, then merged back)."]
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", type=int, default=100)
    parser.add_argument("--trials-per-sweep", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writers", type=int, default=2, help="processes writing trial rows at once (default 2)")
    parser.add_argument("--per-trial-repeats", type=int, default=1,
                        help="runs per figure on the 10,000 per-trial files (slow: the layout compaction replaces)")
    parser.add_argument("--per-trial-all", action="store_true",
                        help="time every operation on the per-trial files too (default: the count query only)")
    parser.add_argument("--parent", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                        help="folder for the temporary store (default /dev/shm: tmpfs, so the 10,000 writes' fsyncs "
                        "cost nothing; reads are from memory in both layouts either way)")
    parser.add_argument("--write", action="store_true", help="replace the store_scale section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    if min(args.sweeps, args.trials_per_sweep, args.repeats) < 1 or args.trials_per_sweep < 2:
        parser.error("--sweeps and --repeats must be >= 1, --trials-per-sweep >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="raysel-store-scale-", dir=args.parent))
    try:
        written_s = write_store(root, args.sweeps, args.trials_per_sweep, args.seed, args.writers)
        before_files = len(ResultStore(root).files())
        per_trial = measure(root, args.per_trial_repeats, compacted=False, full=args.per_trial_all)
        started = time.perf_counter()
        compact_store(root)
        compact_s = time.perf_counter() - started
        compacted = measure(root, args.repeats, compacted=True)
        body = report(args, written_s, compact_s, (before_files, len(ResultStore(root).files())), per_trial, compacted)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    section = format_section(SECTION, command_line("store_scale", argv), body)
    print(section)
    if args.write:
        replace_section(SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
