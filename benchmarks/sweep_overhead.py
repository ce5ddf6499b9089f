"""How much the Ray sweep costs over running the same HIAST configurations as plain in-process loops.

One run measures, on the same machine and data, with the shared warm-up/source stages already cached:

* plain: each configuration's per-worker loop (training, prediction cache, held-out scoring) called directly in
  this process, one after another, with one torch thread (what a trial gets with ``--cpus-per-worker 1``);
* sweep, one at a time: ``python -m raysel.sweep hiast`` on the same configurations with ``--max-concurrent 1``,
  including ``ray.init``, Tune scheduling, trial processes, store writes, selection and ``ray.shutdown``;
* sweep, default concurrency: the same sweep with as many concurrent trials as the CPUs fit (the default).

The ratio sweep/plain (one at a time) is the orchestration overhead; the default-concurrency ratio is what a user
sees. Ray's floor, measured last in the same run, is what any Ray sweep pays with no work at all: start a local Ray as a
sweep does, start one worker process that imports what a trial's process imports (``raysel.execution``), stop Ray.
Where the overhead goes: the mean seconds per configuration in each trial phase (the rows' ``time_<phase>_s``
columns; the plain loop is timed by the same :class:`raysel.execution.timing.TimedRunContext`), plus the sweep's time
before the first trial, between trials and after the last one, read from the rows' ``started_at``/``finished_at``. Single-worker trials run the loop inside the Tune trial (``--executor auto``) because Ray Train's worker-group
start-up would otherwise dominate small trials (see raysel/execution/__init__.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import command_line, write_section

# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("raysel/methods/hiast.py", "raysel/methods/base.py", "raysel/methods/stages.py",
            "raysel/methods/training.py", "raysel/methods/optim.py", "raysel/methods/augment.py",
            "raysel/methods/losses.py", "raysel/methods/networks.py", "raysel/methods/acceleration.py",
            "raysel/models", "raysel/sweep.py", "raysel/orchestration", "raysel/request.py", "raysel/request_build.py",
            "raysel/execution", "raysel/search_space.py", "raysel/hyperparameters.py", "raysel/store",
            "raysel/selection", "raysel/heldout.py")


def space_yaml(alphas: list[float], fixed: dict[str, object]) -> str:
    lines = [f"alpha: {{grid: [{', '.join(str(a) for a in alphas)}]}}"]
    lines += [f"{key}: {value}" for key, value in fixed.items()]
    return "\n".join(lines) + "\n"


def plain_loops(alphas: list[float], fixed: dict[str, object], data_root: Path, workdir: Path,
                selection_size: int) -> tuple[float, list[dict[str, float]]]:
    """Run every configuration's per-worker loop directly, sequentially, one thread, timed by phase as a trial is;
    return the wall seconds and each configuration's ``time_<phase>_s`` columns (``setup``: the rest)."""
    import torch

    from raysel.execution.timing import PhaseClock, timed_context
    from raysel.execution.trial import train_and_finish
    from raysel.methods.base import LocalSession

    torch.set_num_threads(1)
    started = time.perf_counter()
    phases = []
    for index, alpha in enumerate(alphas):
        run = {"method": "hiast", "dataset": "street_scenes", "data_root": str(data_root), "source": "game",
               "target": "day_city", "seed": 0, "selection_size": selection_size, "num_threads": 1,
               "output_dir": str(workdir / f"plain-{index}")}
        clock, entered = PhaseClock(), time.perf_counter()
        final = train_and_finish({"method": "hiast", "hyperparameters": {"alpha": alpha, **fixed}, "run": run},
                                 LocalSession(checkpoint_root=str(workdir / f"plain-ckpt-{index}")),
                                 timed_context(clock)).final
        assert final["status"] == "finished", final
        rest = time.perf_counter() - entered - sum(clock.seconds.values())
        phases.append({**clock.columns(), "time_setup_s": max(0.0, rest)})
    return time.perf_counter() - started, phases


@dataclass
class SweepRun:
    """One timed sweep: its wall seconds, its start and end (epoch seconds) and its trial rows."""

    seconds: float
    started: float
    finished: float
    trials: Any  # pandas.DataFrame


def sweep(space: Path, data_root: Path, results: Path, name: str, max_concurrent: int | None,
          selection_size: int) -> SweepRun:
    """``python -m raysel.sweep hiast --space SPACE ...`` through raysel's API, timed as the command runs: build the
    request, run the sweep, print the summary (into a discarded buffer); the command's exit code must be 0."""
    from raysel import store
    from raysel.orchestration import run_sweep
    from raysel.reporting.summary import print_sweep_summary
    from raysel.request_build import build_request

    options = {"space": space, "data_root": data_root, "results": results, "name": name,
               "selection_size": selection_size, "progress_interval": 600.0}
    if max_concurrent:
        options["max_concurrent"] = max_concurrent
    started_at, started = time.time(), time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = run_sweep(build_request(method="hiast", **options))
        print_sweep_summary(outcome)
        code = 0 if outcome.decisions else 1  # the command's exit code
    elapsed = time.perf_counter() - started
    assert code == 0, f"sweep {name} failed"
    return SweepRun(elapsed, started_at, started_at + elapsed, store.load(results, sweep_id=name))


def ray_floor() -> dict[str, float]:
    """Ray's fixed cost of one sweep with no work: start a local Ray as a sweep does (no dashboard), one worker
    process importing what a trial's process imports first, Ray's stop. A lower bound: Tune's controller, the store
    and the selection come on top."""
    import ray

    from raysel.execution import connect

    started = time.perf_counter()
    assert connect(None), "a Ray was already running: the floor needs a local Ray of its own"
    connected = time.perf_counter()

    @ray.remote(num_cpus=1)
    class TrialProcess:
        def ready(self) -> bool:
            import raysel.execution  # noqa: F401  (what unpickling a trial's function imports in its new process)

            return True

    ray.get(TrialProcess.remote().ready.remote())
    ready = time.perf_counter()
    ray.shutdown()
    stopped = time.perf_counter()
    return {"start a local Ray": connected - started,
            "one worker process importing raysel.execution (torch, torchvision, Ray Tune)": ready - connected,
            "stop Ray": stopped - ready, "total": stopped - started}


def floor_lines(floor: dict[str, float], plain_s: float, sequential_s: float) -> list[str]:
    """The floor's table and what it leaves of the overhead goal (1.10: a tenth of the plain loops' time)."""
    allowed = 0.10 * plain_s
    rows = [f"| {label} | {seconds:.2f} |" for label, seconds in floor.items() if label != "total"]
    return [
        f"Ray's floor (no Tune, no trial; measured after the runs above): **{floor['total']:.1f} s** per sweep, "
        f"against the {allowed:.1f} s that a ratio of 1.10 allows over these plain loops ({plain_s:.1f} s); the one-at-a-time "
        f"sweep spent {sequential_s - plain_s:.1f} s over them.",
        "",
        "| Ray's fixed cost | s |",
        "|---|---|",
        *rows,
    ]


def epoch_seconds(column: Any) -> Any:
    """A timestamp column as epoch seconds (floats)."""
    import pandas as pd

    return (pd.to_datetime(column, utc=True) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def breakdown_rows(plain: list[dict[str, float]], run: SweepRun, configs: int) -> list[str]:
    """Markdown rows: mean seconds per configuration in each phase, plain loop vs Ray trial (one at a time), then
    the sweep's time outside trials spread over the configurations, then the totals."""
    from raysel.store.schema import TRIAL_PHASES

    trials = run.trials.sort_values("started_at")
    rows = []
    for phase in TRIAL_PHASES:
        column = f"time_{phase}_s"
        plain_s = sum(entry.get(column, 0.0) for entry in plain) / len(plain)
        ray_s = float(trials[column].fillna(0.0).mean())
        rows.append(f"| {phase} | {plain_s:.2f} | {ray_s:.2f} | {ray_s - plain_s:+.2f} |")
    starts, ends = epoch_seconds(trials["started_at"]).to_numpy(), epoch_seconds(trials["finished_at"]).to_numpy()
    outside = {
        "before the first trial (Ray start, data and shared-stage checks, Tune start, first trial process)":
            starts[0] - run.started,
        "between trials (store write, Tune trial teardown, next trial's scheduling, process start, imports)":
            float((starts[1:] - ends[:-1]).sum()),
        "after the last trial (store write, selection of every selector, Ray shutdown)": run.finished - ends[-1],
    }
    for label, seconds in outside.items():
        rows.append(f"| {label} | 0.00 | {seconds / configs:.2f} | {seconds / configs:+.2f} |")
    plain_total = sum(sum(entry.values()) for entry in plain) / len(plain)
    ray_total = run.seconds / configs
    rows.append(f"| **total per configuration** | {plain_total:.2f} | {ray_total:.2f} | "
                f"{ray_total - plain_total:+.2f} |")
    return rows


def report_body(args: argparse.Namespace, alphas: list[float], plain_s: float, sequential_s: float,
                concurrent_s: float, breakdown: list[str], floor: list[str]) -> str:
    """The BENCHMARKS.md section: the three wall times with their ratios, then the per-phase breakdown."""
    per_config = (sequential_s - plain_s) / args.configs
    return "\n".join([
        f"{args.configs} HIAST configurations (alpha {alphas}), 1 round of {args.iterations} iterations each, "
        f"street_scenes game -> day_city, selection subset {args.selection_size}; shared warm-up/source stages cached "
        "before timing. Ratios are measured in this one run.",
        "",
        "| run | wall s | ratio to plain |",
        "|---|---|---|",
        f"| plain in-process loops, sequential, 1 thread | {plain_s:.1f} | 1.00 |",
        f"| `raysel.sweep`, `--max-concurrent 1` (orchestration overhead) | {sequential_s:.1f} | "
        f"{sequential_s / plain_s:.2f} |",
        f"| `raysel.sweep`, default concurrency (what users run) | {concurrent_s:.1f} | {concurrent_s / plain_s:.2f} |",
        "",
        f"Overhead per configuration when run one at a time: {per_config:.1f} s. Where it goes: mean seconds per "
        "configuration in each phase of a trial (the `time_<phase>_s` columns of its row; exclusive, `setup` is "
        "the rest of the trial function: store check, run context), then the sweep's time outside any trial "
        "spread over the configurations (from the rows' `started_at`/`finished_at` and the sweep's own start and "
        "end). Single-worker trials run the training loop inside the Tune trial; Ray Train's worker-group start-up "
        "(10-30 s per run here) is used only with `--workers > 1` or `--executor train`.",
        "",
        "| phase | plain loop s | Ray trial s (`--max-concurrent 1`) | difference s |",
        "|---|---|---|---|",
        *breakdown,
        "",
        *floor,
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=4, help="number of HIAST configurations (alpha values)")
    parser.add_argument("--iterations", type=int, default=60, help="self-training iterations per configuration")
    parser.add_argument("--selection-size", type=int, default=100)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true", help="print the table without touching BENCHMARKS.md")
    args = parser.parse_args(argv)

    from raysel import data

    data_root = args.data_root or data.default_data_root()
    data.prepare(data.get_family("street_scenes"), data_root)
    alphas = [round(0.2 + 0.6 * i / max(args.configs - 1, 1), 3) for i in range(args.configs)]
    fixed = {"rounds": 1, "iterations_per_round": args.iterations, "reports_per_round": 1}
    workdir = Path(tempfile.mkdtemp(prefix="raysel-overhead-"))
    space = workdir / "space.yaml"
    space.write_text(space_yaml(alphas, fixed))

    print("warming the shared stages (not timed) ...", flush=True)
    plain_loops(alphas[:1], fixed, data_root, workdir / "warm", args.selection_size)
    print("plain in-process loops ...", flush=True)
    plain_s, plain_phases = plain_loops(alphas, fixed, data_root, workdir, args.selection_size)
    print(f"  {plain_s:.1f} s\nsweep, one trial at a time ...", flush=True)
    sequential = sweep(space, data_root, workdir / "results", "overhead-sequential", 1, args.selection_size)
    print(f"  {sequential.seconds:.1f} s\nsweep, default concurrency ...", flush=True)
    concurrent = sweep(space, data_root, workdir / "results", "overhead-concurrent", None, args.selection_size)
    print(f"  {concurrent.seconds:.1f} s\nRay's floor ...", flush=True)
    floor = ray_floor()
    body = report_body(args, alphas, plain_s, sequential.seconds, concurrent.seconds,
                       breakdown_rows(plain_phases, sequential, args.configs),
                       floor_lines(floor, plain_s, sequential.seconds))
    print(body)
    if not args.no_write:
        write_section("sweep_overhead", command_line("sweep_overhead.py", argv), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
