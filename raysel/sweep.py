"""`python -m raysel.sweep METHOD`: sweep a method's hyperparameters with Ray Tune and select without target labels.

Argument parsing only: the options become one checked :class:`~raysel.request.SweepRequest`
(:func:`raysel.request_build.build_request`, before Ray starts) and :func:`raysel.orchestration.run_sweep` runs it.
``--help`` and argument errors answer without importing torch or Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from raysel.acceleration_switches import add_acceleration_arguments
from raysel.conventions import RESULTS_ENV
from raysel.errors import exits_cleanly_on_user_error
from raysel.request import CONFIDENCE_OBJECTIVE, EXECUTORS, SCHEDULERS, SEARCH_ALGORITHMS, SweepOptions

DEFAULTS: dict[str, Any] = {field.name: field.default for field in dataclasses.fields(SweepOptions)}
INVOCATION_OPTIONS = ("resume", "address", "dashboard")  # how to run this time, not what the sweep is

EPILOG = """examples:
  python -m raysel.sweep hiast                                  # embedded benchmark, CPU, local Ray
  python -m raysel.sweep hiast --target day_city dusk_city --num-samples 2 --search random
  python -m raysel.sweep hiast --search optuna --num-samples 20 --scheduler asha
  python -m raysel.sweep gsda --include-default                 # the 6 grid points and the defaults: 7 trials
  python -m raysel.sweep hiast --data cityscapes --data-root /data --source gta5 --gpus-per-worker 0.5
  python -m raysel.sweep hiast --name my-sweep --resume        # continue a killed sweep
afterwards:
  python -m raysel.query "SELECT trial_id, hp_alpha, score_fmiou, heldout_miou FROM trials ORDER BY score_fmiou DESC"
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m raysel.sweep`` parser; its defaults are :class:`SweepOptions`' (declared once)."""
    parser = argparse.ArgumentParser(
        prog="python -m raysel.sweep",
        description="Sweep a UDA method's hyperparameters as Ray Tune trials, select the configuration to ship "
        "without target labels (fused-vote F-mIoU by default), and record every trial in the Parquet result store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("method", help="registered method name (e.g. hiast, source_only); an unknown name lists them")
    _add_search_arguments(parser.add_argument_group("what to sweep"))
    _add_data_arguments(parser.add_argument_group("data and model"))
    _add_resource_arguments(parser.add_argument_group("resources (per trial)"))
    add_acceleration_arguments(parser)
    _add_result_arguments(parser.add_argument_group("results"))
    return parser


def _add_search_arguments(what: argparse._ArgumentGroup) -> None:
    """What to sweep: the space, overrides, the search algorithm, scheduler, objective and seed."""
    what.add_argument("--space", type=Path, help="search-space YAML (default: search_spaces/METHOD.yaml)")
    what.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="fix a hyperparameter to one value, overriding the space (repeatable), e.g. --set rounds=1")
    what.add_argument("--num-samples", type=int, default=DEFAULTS["num_samples"],
                      help="samples per grid point (grid/random) or total trials (optuna); default "
                      f"{DEFAULTS['num_samples']}")
    what.add_argument("--include-default", action="store_true", default=DEFAULTS["include_default"],
                      help="run the method's default configuration (its defaults for every swept hyperparameter) as "
                      "the first candidate, so the guarded decision can fall back to it: one extra trial per target "
                      "((grid points x --num-samples + 1) x targets; optuna: --num-samples + 1); when the defaults "
                      "are already a grid point and nothing else is sampled, that configuration runs twice. Under "
                      "optuna each default must lie inside the space; grid and random run it as given")
    what.add_argument("--search", choices=SEARCH_ALGORITHMS, default=DEFAULTS["search"],
                      help="grid: every grid point; random: sample the distributions; optuna: TPE guided by the "
                      f"label-free target confidence (default: {DEFAULTS['search']})")
    what.add_argument("--scheduler", choices=SCHEDULERS, default=DEFAULTS["scheduler"],
                      help="fifo runs every trial to the end; asha stops weak trials early on the label-free "
                      f"target confidence (default: {DEFAULTS['scheduler']})")
    what.add_argument("--objective", default=DEFAULTS["objective"],
                      help=f"label-free score Optuna maximises and ASHA compares: {CONFIDENCE_OBJECTIVE} (reported "
                      "while training) or a trial-scored selector the task computes: consistency, and mixval (MixVal, "
                      "classification) or classmix_consistency (segmentation) (with asha computed at every report), "
                      f"merge_quality (hdrq; fifo only) (default: {DEFAULTS['objective']})")
    what.add_argument("--startup-trials", type=int, default=DEFAULTS["startup_trials"],
                      help=f"optuna: random trials before TPE models the objective (default "
                      f"{DEFAULTS['startup_trials']}, Optuna's)")
    what.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                      help=f"seed for training, data order and the search (default {DEFAULTS['seed']})")


def _add_data_arguments(data: argparse._ArgumentGroup) -> None:
    """The data and model options: family, root, source, targets, network, image size, selection subset."""
    data.add_argument("--data", default=None,
                      help="dataset family: the embedded street_scenes/digits benchmarks (default for the method's "
                      "task) or gta5, synthia, cityscapes, idd, office31, officehome with --data-root")
    data.add_argument("--data-root", type=Path, default=None,
                      help="folder holding the dataset (default: $RAYSEL_DATA_ROOT or ~/.cache/raysel/data; the "
                      "embedded benchmarks are generated there on first use)")
    data.add_argument("--source", default=None, help="source domain (default: the family's default source)")
    data.add_argument("--target", nargs="+", default=None,
                      help="one or more target domains; each target is swept and selected separately")
    data.add_argument("--model", default=None, help="network name (default: the small CPU model of the task)")
    data.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                      help="resize images to H W (default: the dataset's native size)")
    data.add_argument("--selection-size", type=int, default=DEFAULTS["selection_size"],
                      help="target training images in the label-free selection subset (default "
                      f"{DEFAULTS['selection_size']}, or all)")


def _add_result_arguments(out: argparse._ArgumentGroup) -> None:
    """Where results go and how the sweep is selected, resumed, reported and tracked."""
    out.add_argument("--results", type=Path, default=None,
                     help=f"result store folder (default ${RESULTS_ENV}, else ./results)")
    out.add_argument("--name", default=None, help="sweep id (default METHOD-YYYYmmdd-HHMMSS)")
    out.add_argument("--resume", action="store_true",
                     help="continue the sweep --name (default: the latest sweep of METHOD); finished trials are kept")
    out.add_argument("--selector", dest="selectors", action="append", default=None,
                     help="label-free selector(s) recorded after the sweep; the first decides (default: the method's, "
                          "fmiou; hdrq: merge_quality then fmiou)")
    out.add_argument("--progress-interval", type=float, default=DEFAULTS["progress_interval"],
                     help=f"seconds between progress lines (default {DEFAULTS['progress_interval']:g})")
    out.add_argument("--mlflow", metavar="URI", default=None,
                     help="also track the sweep in MLflow (off by default): one run per trial (hyperparameters, "
                     "metrics over time, label-free scores, held-out scores as oracle_*) under a parent run carrying "
                     "the selection decision; e.g. sqlite:///mlflow.db (no server) or http://HOST:5000")


def _add_resource_arguments(res: argparse._ArgumentGroup) -> None:
    """The per-trial resource options (workers, CPUs, GPUs, executor, failures, cluster address, dashboard)."""
    res.add_argument("--workers", type=int, default=DEFAULTS["workers"],
                     help=f"data-parallel Ray Train workers per trial (default {DEFAULTS['workers']})")
    res.add_argument("--cpus-per-worker", type=float, default=DEFAULTS["cpus_per_worker"],
                     help=f"CPUs per worker (default {DEFAULTS['cpus_per_worker']:g})")
    res.add_argument("--gpus-per-worker", type=float, default=DEFAULTS["gpus_per_worker"],
                     help=f"GPUs per worker; fractions share a GPU, e.g. 0.5 (default {DEFAULTS['gpus_per_worker']:g}: "
                     "CPU)")
    res.add_argument("--max-concurrent", type=int, default=None,
                     help="trials at once (default: as many as the local CPUs fit; on a cluster, Tune decides)")
    res.add_argument("--executor", choices=EXECUTORS, default=DEFAULTS["executor"],
                     help="auto: one worker runs inside the Tune trial, several use a Ray Train TorchTrainer; "
                     "train: always TorchTrainer; direct: always in the trial (default auto)")
    res.add_argument("--max-failures", type=int, default=DEFAULTS["max_failures"],
                     help=f"retries of a failed trial (Tune) and of killed workers (Train) (default "
                     f"{DEFAULTS['max_failures']})")
    res.add_argument("--address", default=None,
                     help="Ray cluster to join (default: $RAY_ADDRESS, as set by `ray job submit`, else start a "
                     "local Ray)")
    res.add_argument("--dashboard", action="store_true",
                     help="start Ray's dashboard with the local Ray and print its URL (off by default: about 1.5 s "
                     "more start-up on 2 cores; a joined cluster keeps its own)")


def options_from_arguments(args: argparse.Namespace) -> SweepOptions:
    """The sweep's options from the parsed command line (``--resume``, ``--address`` and ``--dashboard`` say how to
    run it)."""
    return SweepOptions.from_mapping({key: value for key, value in vars(args).items()
                                      if key not in INVOCATION_OPTIONS})


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m raysel.sweep`` and ``raysel sweep``: build the request, run it, print the summary."""
    args = build_parser().parse_args(argv)
    # Imported here, not at the top, for start-up time only: --help and argument errors answer without torch and Ray.
    from raysel.request_build import build_request, resume_request

    options = options_from_arguments(args)
    request = resume_request(options) if args.resume else build_request(options)  # checked before Ray starts
    from raysel.orchestration import run_sweep
    from raysel.reporting.summary import print_sweep_summary

    outcome = run_sweep(request, resume=args.resume, address=args.address, dashboard=args.dashboard)
    print_sweep_summary(outcome)
    return 0 if outcome.decisions else 1


if __name__ == "__main__":
    sys.exit(main())
