"""Light commands stay light (issue 27 item 5): entry modules, every ``--help``, and
``raysel query|select|report|status`` on a small real store import neither torch nor Ray.

Each check runs in a fresh interpreter (``sys.executable -c``) and reads ``sys.modules`` at the end, so nothing the test
session itself imported (conftest imports torch) can hide or fake an import. Timing is the benchmark's business
(``benchmarks/command_latency.py``); these tests only check what is imported, stage by stage.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raysel.cli import COMMANDS
from raysel.request import save_request
from raysel.request_build import build_request
from raysel.store import ResultStore
from raysel.study_state import PlannedSweep, StudyPlan, save_plan
from tests.test_report import CANDIDATES, NUM_CLASSES, build_store, trial_row
from tests.test_selection_voting import _saved_candidates

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "ray")
MARK = "HEAVY-MODULES-AFTER "  # a line the probe prints after each stage: the stage, then the heavy modules loaded
ENTRY_MODULES = ("raysel.cli", *(f"raysel.{command}" for command in COMMANDS), "raysel.store.compaction")
SWEEP = "sweep-a"
STUDY = "study-a"  # a study of the one sweep: `raysel status STUDY` stays light too
CLASS_NAMES = [f"class-{index}" for index in range(NUM_CLASSES)]


def heavy_modules_by_stage(stages: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Run each (name, code) stage in order in one fresh interpreter at the repository root; return, per stage, the
    heavy modules (torch, ray) loaded once that stage has run. A stage may end in SystemExit (``--help`` does)."""
    lines = ["import sys"]
    for name, code in stages:
        lines += ["try:", *(f"    {line}" for line in code.splitlines()), "except SystemExit:", "    pass",
                  f"print({MARK!r} + repr(({name!r}, sorted(set({HEAVY!r}) & set(sys.modules)))), flush=True)"]
    environment = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAYSEL_RESULTS")}
    result = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, cwd=REPO,
                            env=environment, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    reports = [ast.literal_eval(line[len(MARK):]) for line in result.stdout.splitlines() if line.startswith(MARK)]
    assert [name for name, _ in reports] == [name for name, _ in stages], result.stdout[-2000:]
    return dict(reports)


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_entry_module_and_its_help_import_neither_torch_nor_ray(module: str) -> None:
    """Importing the entry module, its ``main(["--help"])``, and the same help through the ``raysel`` console script."""
    command = module.removeprefix("raysel.")
    stages = [("import", f"import {module}"), ("--help", f"{module}.main(['--help'])")]
    if command in COMMANDS:
        stages.append(("raysel COMMAND --help", f"import raysel.cli\nraysel.cli.main([{command!r}, '--help'])"))
    assert heavy_modules_by_stage(stages) == {name: [] for name, _ in stages}


# --------------------------------------------------------------------------------------------------------------
# The commands on a small real store
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished segmentation sweep as raysel writes it, without training: four candidates with real prediction caches
    inside the store, per-class held-out IoU and class names, a failed trial, a recorded decision, its sweep.json."""
    results = tmp_path_factory.mktemp("light-commands") / "results"
    store = build_store(results)  # tests.test_report: t0..t3 finished, t9 failed, the fmiou decision
    caches = _saved_candidates(results / "sweeps" / SWEEP / "trials", num_candidates=len(CANDIDATES),
                               num_classes=NUM_CLASSES)
    for trial_id, cache in zip(CANDIDATES, caches):  # rewriting a trial replaces its row
        store.write_trial({**trial_row(trial_id), "predictions_path": str(cache), "class_names": CLASS_NAMES})
    # The sweep's request (sweep.json), as raysel.sweep saves it: its decision order is hiast's default, fmiou.
    request = build_request(method="hiast", data="street_scenes", target=["day_city"], name=SWEEP, results=results,
                            data_root=results.parent / "data")
    save_request(request)
    save_plan(StudyPlan(STUDY, str(results), (PlannedSweep(SWEEP, "hiast", request.expected_trials(),
                                                           request.to_dict()),)))
    return results


COMMAND_LINES = {
    "query": ["query", "SELECT count(*) AS trials FROM trials", "--results", "{results}"],
    "select": ["select", SWEEP, "--results", "{results}"],
    "report": ["report", SWEEP, "--results", "{results}", "--output", "{output}"],
    "status": ["status", SWEEP, "--results", "{results}"],
    "status-study": ["status", STUDY, "--results", "{results}"],
}


@pytest.mark.parametrize("command", sorted(COMMAND_LINES))
def test_light_command_on_a_small_store_imports_neither_torch_nor_ray(command: str, small_store: Path,
                                                                      tmp_path: Path) -> None:
    """``raysel query|select|report|status`` (of a sweep and of a study) run to completion (exit 0) on the store
    without loading torch or Ray."""
    results = tmp_path / "results"
    shutil.copytree(small_store, results)  # select and report write into the store: each command gets its own copy
    argv = [word.format(results=results, output=tmp_path / "report") for word in COMMAND_LINES[command]]
    stages = [("import raysel.cli", "import raysel.cli"),
              (f"raysel {command}", f"code = raysel.cli.main({argv!r})\nassert code == 0, code")]
    assert heavy_modules_by_stage(stages) == {name: [] for name, _ in stages}
    if command == "report":  # every plot drawn, the per-class one too (its class names come from the rows)
        assert (tmp_path / "report" / "report.html").is_file()
        assert "class_iou_day_city.png" in (tmp_path / "report" / "report.md").read_text()
    if command == "select":
        decisions = ResultStore(results).load("selections", sweep_id=SWEEP)
        assert set(decisions["selector"]) >= {"fmiou", "soft_vote", "snd"}  # scored from the cached predictions
