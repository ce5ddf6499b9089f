"""Benchmark: the README's main job, ``make sweep``, timed end to end from an empty data root as a new user runs it.

The command (``make sweep`` unless ``--command``) runs in the repository with ``RAYSEL_DATA_ROOT`` set to a new,
empty folder, so the embedded benchmark is generated as on a fresh machine, and ``RAYSEL_RESULTS`` set to a new
results folder, so no earlier sweep or shared stage is reused and ``./results`` is left alone. The virtual environment
must exist (make's stamp ``.venv/.installed``): its pip refresh is part of the figure only when ``pyproject.toml``
changed, as for a user who installed earlier. The command's output is kept in ``<workdir>/make_sweep.log``.

Reported, all from this one run: the wall time; the data generation (the data marker's own seconds); the shared
stages (the sweep's ``shared stages ready in N s`` line); the trials (finished and failed, the span from the first
start to the last finish, each trial's wall time and its phases from the rows' ``time_<phase>_s`` columns); the
held-out mIoU of the trials (an oracle check, day_city, a development target) and the headline F-mIoU pick with
its regret, beside the guarded decision.

Example::

    python -m benchmarks.make_sweep            # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks._common import REPO, command_line, write_section

# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("Makefile", "pyproject.toml", "search_spaces/hiast.yaml", "raysel/sweep.py", "raysel/orchestration",
            "raysel/request.py", "raysel/request_build.py", "raysel/execution", "raysel/methods", "raysel/models",
            "raysel/data", "raysel/selection", "raysel/store", "raysel/heldout.py", "raysel/metrics.py")
SECTION = "make_sweep"
HEADLINE_SELECTOR = "fmiou"
STAGES_LINE = re.compile(r"shared stages ready in (\d+(?:\.\d+)?) s")
PHASES = ("data", "model_build", "shared_stages", "train", "save_model", "predictions", "heldout",
          "selection_scores")


def run_command(command: str, data_root: Path, results: Path, log: Path) -> tuple[float, int, str]:
    """Run ``command`` in the repository with the fresh data root and results folder; return wall seconds, exit
    code and the output (also written to ``log``)."""
    env = dict(os.environ, RAYSEL_DATA_ROOT=str(data_root), RAYSEL_RESULTS=str(results))
    started = time.perf_counter()
    completed = subprocess.run(command, shell=True, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - started
    log.write_text(completed.stdout)
    return elapsed, completed.returncode, completed.stdout


def generation_seconds(data_root: Path) -> float | None:
    """The embedded street scenes' generation time as its completion marker records it (None when absent)."""
    marker = data_root / "street_scenes" / ".raysel_generated.json"
    try:
        return float(json.loads(marker.read_text())["seconds"])
    except (OSError, KeyError, ValueError):
        return None


def minutes(seconds: float) -> str:
    """``6 min 0 s``: rounded to the second first, so 359.6 s reads ``6 min 0 s``, not ``5 min 60 s``."""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s"


def trial_facts(results: Path) -> dict[str, Any]:
    """Counts, times and held-out mIoU (points) of the one sweep stored under ``results``, and its headline pick."""
    from raysel import store

    trials = store.load(results)
    selections = store.load(results, table="selections")
    finished = trials[trials["status"] == "finished"]
    started, ended = trials["started_at"], trials["finished_at"]
    facts: dict[str, Any] = {
        "finished": len(finished), "failed": int((trials["status"] == "failed").sum()),
        "span_s": (ended.max() - started.min()).total_seconds(),
        "trial_s": [float(value) for value in (ended - started).dt.total_seconds()],
        "phases": {phase: float(finished[f"time_{phase}_s"].mean()) for phase in PHASES
                   if f"time_{phase}_s" in finished},
        "heldout": {str(row.trial_id): 100.0 * float(row.heldout_miou) for row in finished.itertuples()},  # points
    }
    headline = selections[selections["selector"] == HEADLINE_SELECTOR]
    if len(headline):
        row = headline.iloc[0]
        facts["pick"] = str(row["selected_trial_id"])
        facts["guarded"] = str(row["guarded_trial_id"]) if row.get("guarded_trial_id") is not None else None
        facts["confident"] = row.get("guard_confident")
    return facts


def report_body(command: str, wall: float, code: int, generation: float | None, stages: float | None,
                facts: dict[str, Any], load: tuple[float, float]) -> str:
    """The section's markdown body."""
    heldout = facts["heldout"]
    best = max(heldout.values()) if heldout else float("nan")
    lines = [
        f"The README's main job, `{command}`, timed end to end from an empty data root (`RAYSEL_DATA_ROOT`) into a new "
        "results folder (`RAYSEL_RESULTS`), with the existing `.venv`; 2 cores, no GPU, no other job running "
        f"(load average {load[0]:.2f} before / {load[1]:.2f} after). Held-out scores are day_city's (a development "
        "target), read only to evaluate.", "",
        "| what | measured |", "|---|---:|",
        f"| wall time of `{command}` (exit {code}) | **{minutes(wall)}** (goal: 5 min) |",
        f"| generating the embedded street scenes (data marker) | {generation:.0f} s |" if generation is not None
        else "| generating the embedded street scenes | not recorded |",
        f"| shared stages (source model, adversarial warm-up; built once) | {stages:.0f} s |" if stages is not None
        else "| shared stages | not found in the output |",
        f"| trials: first start to last finish | {facts['span_s']:.0f} s ({facts['finished']} finished, "
        f"{facts['failed']} failed) |",
        f"| everything else (Ray start, checks, selection, report, Ray stop) | "
        f"{wall - (generation or 0) - (stages or 0) - facts['span_s']:.0f} s |",
    ]
    if facts["trial_s"]:
        lines.append(f"| one trial's wall time (2 at a time) | "
                     f"{min(facts['trial_s']):.0f}-{max(facts['trial_s']):.0f} s |")
    if heldout:
        lines.append(f"| held-out mIoU of the trials (oracle check) | {min(heldout.values()):.1f}-{best:.1f} |")
    if "pick" in facts:
        picked = heldout.get(facts["pick"], float("nan"))
        lines.append(f"| picked by F-mIoU | trial {facts['pick'].rsplit('_', 1)[-1]}, held-out {picked:.1f}; regret "
                     f"{best - picked:.2f} points |")
        if facts.get("guarded"):
            guarded = heldout.get(facts["guarded"], float("nan"))
            state = "confident" if facts.get("confident") else "no confident winner"
            lines.append(f"| guarded decision | {state}: trial {facts['guarded'].rsplit('_', 1)[-1]}, held-out "
                         f"{guarded:.1f}; regret {best - guarded:.2f} points |")
    if facts["phases"]:
        lines += ["", "Mean seconds per finished trial in each phase (the rows' `time_<phase>_s`; two trials share the "
                  "2 cores):", "", "| " + " | ".join(facts["phases"]) + " |",
                  "|" + "---:|" * len(facts["phases"]),
                  "| " + " | ".join(f"{value:.1f}" for value in facts["phases"].values()) + " |"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--command", default="make sweep", help="the command to time (default: make sweep)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the fresh data root, results and log go (default: a new temporary folder)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if not (REPO / ".venv" / ".installed").is_file() and args.command == "make sweep":
        parser.error("no .venv/.installed: run `make install` first (the figure is the job, not the install)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="raysel-make-sweep-"))
    data_root, results = workdir / "data", workdir / "results"
    if data_root.exists() and any(data_root.iterdir()):
        print(f"error: --workdir {workdir}: its data folder is not empty; the figure needs an empty data root",
              file=sys.stderr)
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    wall, code, output = run_command(args.command, data_root, results, workdir / "make_sweep.log")
    load_after = os.getloadavg()[0]
    stages = [float(match) for match in STAGES_LINE.findall(output)]
    facts = trial_facts(results) if results.exists() else {"finished": 0, "failed": 0, "span_s": float("nan"),
                                                           "trial_s": [], "phases": {}, "heldout": {}}
    body = report_body(args.command, wall, code, generation_seconds(data_root), stages[0] if stages else None,
                       facts, (load_before, load_after))
    print(body)
    if code != 0:
        print(f"error: `{args.command}` exited {code}; its output is in {workdir / 'make_sweep.log'}", file=sys.stderr)
        return 1
    if not args.no_write:
        write_section(SECTION, command_line("make_sweep", argv), body, load=(load_before, load_after))
        print(f"wrote the '## {SECTION}' section of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
