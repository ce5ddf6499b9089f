"""`python -m raysel.study FILE`: run many named sweeps as one resumable, time-boxed study.

Argument parsing only: :func:`raysel.orchestration.studies.load_study` checks every sweep of the file before anything runs and
:func:`raysel.orchestration.studies.run_study` runs them. ``--help`` and argument errors answer without importing torch or Ray.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raysel.errors import exits_cleanly_on_user_error

EXIT_STOPPED = 3  # raysel.orchestration.studies.EXIT_STOPPED, repeated here so --help needs no torch

EPILOG = """study file (YAML; relative paths are relative to the current directory, as on the command line):
  name: lr-study                      # the study: <results>/studies/lr-study/study.json holds its plan
  results: results                    # the result store every sweep writes to
  rows: benchmarks/results/lr-study.parquet   # optional: sweeps exported before (--export) count as finished
  defaults:                           # sweep options every sweep shares (raysel sweep's options, as fields)
    method: source_only
    data: digits
    overrides: ["iterations=200"]     # --set texts; a sweep's own overrides follow these (a later one wins)
  sweeps:                             # each: name (the sweep id) and options replacing the defaults
    - {name: lr-seed0, seed: 0, space: {learning_rate: {grid: [0.001, 0.002]}}}
    - {name: lr-seed1, seed: 1, space: search_spaces/source_only.yaml}

A finished sweep is reused, an interrupted one resumed (finished trials are kept); a sweep stored with another
request than its entry makes is refused, naming the fields that differ.

exit status:
  0  every sweep finished
  2  bad input (the file, a sweep's options, a stored sweep that differs): nothing ran or was written
  3  stopped by --max-minutes with work left: run the printed command to continue

examples:
  raysel study studies/lr.yaml
  raysel study studies/lr.yaml --max-minutes 60          # stops between trials after an hour; rerun to continue
  raysel status lr-study                                 # from another terminal: sweeps and trials done, time left
  raysel study studies/lr.yaml --export benchmarks/results/lr-study.parquet
  raysel study studies/lr.yaml --rows benchmarks/results/lr-study.parquet   # a new machine: exported sweeps reused
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m raysel.study`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m raysel.study",
        description="Run the sweeps a study file lists as one resumable, time-boxed study: every sweep is checked "
        "before anything runs, finished sweeps are reused, interrupted ones resumed, and the rest run on one Ray.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="the study YAML")
    parser.add_argument("--max-minutes", type=float, default=None, metavar="N",
                        help="stop between trials after N minutes (fractions allowed): no trial starts later, running "
                        f"trials finish, the study prints what is left and exits {EXIT_STOPPED}")
    parser.add_argument("--rows", type=Path, default=None, metavar="PATH",
                        help="a rows file written by --export: the sweeps it holds that this results folder lacks "
                        "are imported as finished and not run (overrides the file's rows:)")
    parser.add_argument("--export", type=Path, default=None, metavar="PATH",
                        help="write the trial and selection rows of the study's finished sweeps to one Parquet file "
                        "(no checkpoints, no prediction caches) and exit; nothing runs")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (default: $RAY_ADDRESS, else start a local Ray)")
    parser.add_argument("--dashboard", action="store_true",
                        help="start Ray's dashboard with the local Ray and print its URL (off by default: about 1.5 s "
                        "more start-up on 2 cores; a joined cluster keeps its own)")
    return parser


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m raysel.study`` and ``raysel study``: check the study, then run or export it."""
    args = build_parser().parse_args(argv)
    # Imported here, not at the top, for start-up time only: --help and argument errors answer without torch and Ray.
    from raysel.orchestration.studies import export_study_rows, load_study, run_study

    study = load_study(args.file, rows=args.rows)  # every sweep checked before anything runs
    if args.export is not None:
        print(export_study_rows(study, args.export).line())
        return 0
    return run_study(study, max_minutes=args.max_minutes, address=args.address, dashboard=args.dashboard).exit_code


if __name__ == "__main__":
    sys.exit(main())
