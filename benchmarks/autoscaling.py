"""GPU autoscaling on one machine: how fast a raysel sweep scales fake GPU nodes up from zero and back down.

Ray's fake multi-node provider (raysel/testing/fake_cluster.py) runs a token-authenticated cluster whose head has one
CPU and no GPU and whose ``gpu_worker`` node type advertises ``{"CPU": 1, "GPU": 1}`` (min 0 nodes). A
``python -m raysel.sweep source_only --gpus-per-worker 1 --address ...`` sweep (a learning-rate grid) runs against
it while a separate driver samples the alive worker nodes and busy GPUs every 0.5 s. The trials compute on CPU
(``RAYSEL_FAKE_GPUS=1`` on the nodes); the point is the autoscaler's behaviour, not training speed.

Reported: time to first scale-up and to the peak (from the sweep command's start; ``source_only`` has no shared stage
to build first, so every trial asks for its GPU as soon as Tune starts), peak nodes and busy GPUs, time from the last
trial's end to zero worker nodes (idle timeout plus autoscaler loop and node shutdown), trials finished and rows in the
store, and the node-count timeline.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import command_line, write_section
from raysel.testing.fake_cluster import FakeCluster, NodeSampler, SweepRun, Timeline, run_sweep_cli, summarize

SWEEP_ID = "autoscaling"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("raysel/testing/fake_cluster.py", "raysel/sweep.py", "raysel/orchestration", "raysel/request.py",
            "raysel/request_build.py", "raysel/execution", "raysel/search_space.py", "raysel/hyperparameters.py",
            "raysel/store", "raysel/methods/source_only.py")


def learning_rates(count: int) -> list[float]:
    """``count`` distinct learning rates for the grid (one trial each)."""
    return [round(0.001 + 0.0005 * index, 6) for index in range(count)]


def sweep_args(rates: list[float], iterations: int, selection_size: int, data_root: Path, results: Path) -> list[str]:
    """The sweep's command-line arguments: a source_only learning-rate grid, one fake GPU per trial."""
    grid = ", ".join(str(rate) for rate in rates)
    return ["source_only", "--results", str(results), "--name", SWEEP_ID, "--data-root", str(data_root),
            "--set", f"learning_rate={{grid: [{grid}]}}", "--set", f"iterations={iterations}",
            "--selection-size", str(selection_size), "--gpus-per-worker", "1", "--progress-interval", "30"]


def fmt(seconds: float | None) -> str:
    return "not observed" if seconds is None else f"{seconds:.1f} s"


def format_body(args: argparse.Namespace, timeline: Timeline, sweep: SweepRun, trials: object) -> str:
    """Scenario, summary table and change-only timeline as Markdown."""
    finished = int((trials["status"] == "finished").sum()) if len(trials) else 0
    lines = [
        f"Fake multi-node provider (Ray's `fake_multinode`, autoscaler v1, 1-s update loop): head 1 CPU / 0 GPU, "
        f"`gpu_worker` nodes `{{CPU: 1, GPU: 1}}`, min 0, max {args.max_nodes}, idle timeout {args.idle_timeout_min} "
        f"min. Sweep: `source_only`, {args.trials} learning rates x {args.iterations} iterations, "
        f"`--gpus-per-worker 1`, street_scenes game -> day_city, selection subset {args.selection_size}; trials "
        "compute on CPU (`RAYSEL_FAKE_GPUS=1`). Times are seconds from the sweep command's start; node counts are "
        "sampled every 0.5 s by a separate driver.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| time to first scale-up (first worker node alive) | {fmt(timeline.first_scale_up_s)} |",
        f"| time to peak | {fmt(timeline.peak_reached_s)} |",
        f"| peak worker nodes (max {args.max_nodes}) | {timeline.peak_workers} |",
        f"| peak busy GPUs | {timeline.peak_gpus_busy:g} |",
        f"| last trial end | {fmt(timeline.last_trial_end_s)} |",
        f"| last trial end -> 0 worker nodes | {fmt(timeline.scale_down_s)} |",
        f"| sweep command wall time (exit code {sweep.returncode}) | {sweep.ended - sweep.started:.1f} s |",
        f"| trials finished / rows in the store / trials | {finished} / {len(trials)} / {args.trials} |",
        "",
        "Timeline (a row whenever the worker-node count or busy GPUs changed):",
        "",
        "| s | worker nodes | busy GPUs |",
        "|---|---|---|",
    ]
    lines += [f"| {seconds:.1f} | {workers} | {busy:g} |" for seconds, workers, busy in timeline.rows]
    return "\n".join(lines)


def run(args: argparse.Namespace, workdir: Path) -> tuple[Timeline, SweepRun, object]:
    """Start the cluster and the sampler, run the sweep, wait for scale-down; return the timeline and the rows."""
    from raysel import data, store

    data_root = (args.data_root or data.default_data_root()).expanduser().resolve()
    data.prepare(data.get_family("street_scenes"), data_root)
    results = workdir / "results"
    argv = sweep_args(learning_rates(args.trials), args.iterations, args.selection_size, data_root, results)
    with FakeCluster(max_workers=args.max_nodes, idle_timeout_minutes=args.idle_timeout_min) as cluster:
        print(f"fake cluster up at {cluster.gcs_address}; starting the sampler ...", flush=True)
        with NodeSampler(cluster) as sampler:
            print("running the sweep ...", flush=True)
            sweep = run_sweep_cli(cluster, argv, workdir / "sweep.log", timeout_s=args.sweep_timeout)
            print(sweep.output[-3000:], flush=True)
            if sweep.returncode != 0:
                print(cluster.autoscaler_log(), flush=True)
            try:
                sampler.wait_until(lambda s: s.workers == 0 and s.time > sweep.ended, args.scale_down_wait,
                                   what="scale-down to 0 worker nodes")
            except TimeoutError as error:  # reported as "not observed" in the table
                print(f"warning: {error}", flush=True)
            samples = list(sampler.samples)
    trials = store.load(results, sweep_id=SWEEP_ID) if results.exists() else _empty()
    last_end = trials["finished_at"].max().timestamp() if len(trials) else None
    return summarize(samples, sweep.started, last_end), sweep, trials


def _empty() -> object:
    import pandas as pd

    return pd.DataFrame({"status": [], "finished_at": []})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6, help="trials (learning rates) in the sweep (default 6)")
    parser.add_argument("--max-nodes", type=int, default=3, help="max fake GPU worker nodes (default 3)")
    parser.add_argument("--iterations", type=int, default=40, help="training iterations per trial (default 40)")
    parser.add_argument("--idle-timeout-min", type=float, default=0.2,
                        help="autoscaler idle timeout in minutes (default 0.2)")
    parser.add_argument("--selection-size", type=int, default=12)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--sweep-timeout", type=float, default=1800, help="seconds before the sweep is abandoned")
    parser.add_argument("--scale-down-wait", type=float, default=300,
                        help="seconds to wait for 0 worker nodes after the sweep (default 300)")
    parser.add_argument("--no-write", action="store_true", help="print the section without touching BENCHMARKS.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="raysel-autoscaling-"))
    started = time.perf_counter()
    try:
        timeline, sweep, trials = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    body = format_body(args, timeline, sweep, trials)
    print(body)
    print(f"(benchmark wall time {time.perf_counter() - started:.0f} s)")
    if sweep.returncode != 0:
        return 1
    if not args.no_write:
        write_section("autoscaling", command_line("autoscaling.py", argv), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
