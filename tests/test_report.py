"""`python -m raysel.report`: PNG plots and a Markdown summary from a real Parquet store (tmp_path, real files)."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raysel.errors import DataError, UserError
from raysel.report import main
from raysel.reporting.sweep_report import write_report
from raysel.selection.evaluate import evaluate_selector
from raysel.store import ResultStore

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NUM_CLASSES = 19

# trial id -> (alpha, k, final_model, fmiou, entropy, held-out mIoU); fmiou picks t2, the best held-out is t1.
CANDIDATES = {
    "t0": (0.3, 2, "teacher", 0.80, -0.50, 0.40),
    "t1": (0.5, 4, "student", 0.85, -0.40, 0.48),
    "t2": (0.7, 4, "teacher", 0.90, -0.45, 0.46),
    "t3": (0.9, 6, "student", 0.70, -0.60, 0.30),
}


def trial_row(trial_id: str, *, heldout: bool = True, target: str = "day_city", status: str = "finished") -> dict:
    """One stored trial of a segmentation sweep, with swept and fixed hyperparameters and two selector scores."""
    alpha, k, final_model, fmiou, entropy, heldout_miou = CANDIDATES[trial_id]
    per_class = np.linspace(0.0, 2 * heldout_miou, NUM_CLASSES)
    per_class[-1] = np.nan  # a class absent from the held-out split
    row = {
        "sweep_id": "sweep-a", "trial_id": trial_id, "method": "hiast", "task": "segmentation",
        "dataset": "street_scenes", "source": "game", "target": target, "model": "small_segnet", "seed": 0,
        "status": status, "retries": 0, "wall_time_s": 10.0, "started_at": 1_700_000_000.0,
        "finished_at": 1_700_000_010.0, "checkpoint_path": f"/checkpoints/{trial_id}/model.pt",
        "predictions_path": f"/checkpoints/{trial_id}/predictions.npz",
        "hyperparameters": {"alpha": alpha, "k": k, "final_model": final_model, "rounds": (1, 2), "use_hpla": True},
        "scores": {"fmiou": fmiou, "entropy": entropy} if status == "finished" else {},
    }
    if heldout and status == "finished":
        row.update(heldout_miou=heldout_miou, heldout_iou=per_class.tolist())
    return row


def build_store(root: Path, *, heldout: bool = True, decision: bool = True) -> ResultStore:
    """A store with four finished candidates, one failed trial and (optionally) the recorded fmiou decision."""
    store = ResultStore(root)
    for trial_id in CANDIDATES:
        store.write_trial(trial_row(trial_id, heldout=heldout))
    failed = trial_row("t0", status="failed")
    failed.update(trial_id="t9", error="RuntimeError: out of memory", checkpoint_path=None, predictions_path=None)
    store.write_trial(failed)
    if decision:
        store.write_selection({"sweep_id": "sweep-a", "method": "hiast", "target": "day_city", "selector": "fmiou",
                               "selected_trial_id": "t2", "score": 0.90, "num_candidates": 4})
    return store


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    with open(path, "rb") as stream:
        assert stream.read(8) == PNG_SIGNATURE, f"{path} is not a PNG"
    assert path.stat().st_size > 2000  # a real plot, not an empty canvas


def linked_images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_report_writes_valid_pngs_and_markdown_that_embeds_them(tmp_path: Path) -> None:
    store = build_store(tmp_path / "results")
    path = write_report(store, "sweep-a", tmp_path / "report")

    assert path == tmp_path / "report" / "report.md"
    expected = ["score_vs_heldout_day_city.png", "hyperparameters_day_city.png", "class_iou_day_city.png"]
    for name in expected:
        assert_png(tmp_path / "report" / name)
    markdown = path.read_text()
    assert linked_images(markdown) == expected
    # The evaluation figures come from raysel.selection.evaluate, for every scored selector.
    heldout = [CANDIDATES[t][5] for t in sorted(CANDIDATES)]
    fmiou = evaluate_selector([CANDIDATES[t][3] for t in sorted(CANDIDATES)], heldout)
    entropy = evaluate_selector([CANDIDATES[t][4] for t in sorted(CANDIDATES)], heldout)
    assert math.isclose(fmiou["regret"], 2.0) and entropy["regret"] == 0.0
    for selector, chosen, result in (("fmiou", "t2", fmiou), ("entropy", "t1", entropy)):
        assert (f"| {selector} | `{chosen}` | {result['regret']:.2f} | {result['top3_regret']:.2f} | "
                f"{result['gap_closed']:.2f} | {result['kendall_tau']:.2f} | {result['spearman_rho']:.2f} | 4 |"
                in markdown)
    assert "Kendall τ" in markdown and "gap closed" in markdown and "regret" in markdown
    # The recorded decision is listed, and the failed trial is no candidate.
    assert "| day_city | fmiou (headline) | `t2` | 0.9000 | 4 |" in markdown
    assert "selectors agree on day_city: the only one picks t2." in markdown
    assert "`t2` (selected)" in markdown and "`t1` (best)" in markdown and "t9" not in markdown.split("## Target")[1]
    # Swept hyperparameters are the varying ones only (alpha, k, final_model), not rounds or use_hpla.
    candidates_header = next(line for line in markdown.splitlines() if line.startswith("| trial |"))
    assert candidates_header.startswith("| trial | alpha | k | final_model | score_entropy | score_fmiou |")


def test_report_without_heldout_scores_plots_hyperparameters_only(tmp_path: Path) -> None:
    store = build_store(tmp_path / "results", heldout=False, decision=False)
    path = write_report(store, "sweep-a")  # default folder: <results>/reports/<sweep>

    assert path == tmp_path / "results" / "reports" / "sweep-a" / "report.md"
    assert sorted(p.name for p in path.parent.glob("*.png")) == ["hyperparameters_day_city.png"]
    assert_png(path.parent / "hyperparameters_day_city.png")
    markdown = path.read_text()
    assert linked_images(markdown) == ["hyperparameters_day_city.png"]
    assert "No held-out scores were stored" in markdown and "No decision is recorded yet" in markdown
    assert "oracle evaluation" not in markdown


def test_report_one_section_per_target(tmp_path: Path) -> None:
    store = build_store(tmp_path / "results")
    for trial_id in ("t0", "t1"):
        row = trial_row(trial_id, target="night_city")
        row["trial_id"] = f"night-{trial_id}"
        store.write_trial(row)
    path = write_report(store, "sweep-a", tmp_path / "out")
    markdown = path.read_text()
    assert "## Target `day_city`" in markdown and "## Target `night_city`" in markdown
    for name in ("score_vs_heldout_night_city.png", "hyperparameters_night_city.png", "class_iou_night_city.png"):
        assert_png(tmp_path / "out" / name)
        assert f"({name})" in markdown


def test_report_follows_the_requested_selector_and_rejects_an_unscored_one(tmp_path: Path) -> None:
    store = build_store(tmp_path / "results")
    markdown = write_report(store, "sweep-a", tmp_path / "out", selector="entropy").read_text()
    assert "Selected by `entropy`: `t1`" in markdown
    with pytest.raises(UserError, match="selector 'snd' has no scores.*raysel.select"):
        write_report(store, "sweep-a", tmp_path / "out", selector="snd")


def test_report_shows_each_selectors_pick_side_by_side_and_follows_the_headline(tmp_path: Path) -> None:
    store = build_store(tmp_path / "results")
    store.write_selection({"sweep_id": "sweep-a", "method": "hiast", "target": "day_city", "selector": "entropy",
                           "selected_trial_id": "t1", "score": -0.40, "num_candidates": 4, "headline": True})
    markdown = write_report(store, "sweep-a", tmp_path / "out").read_text()
    assert "| day_city | entropy (headline) | `t1` |" in markdown and "| day_city | fmiou | `t2` |" in markdown
    assert "selectors disagree on day_city: fmiou → t2; entropy → t1." in markdown
    assert "Selected by `entropy`: `t1`" in markdown


def test_report_follows_the_methods_default_selector_without_a_headline() -> None:
    import pandas

    from raysel.reporting.sweep_report import choose_selector

    trials = pandas.DataFrame({"method": ["hdrq", "hdrq"], "score_fmiou": [0.1, 0.2],
                               "score_merge_quality": [0.5, 0.4]})
    assert choose_selector(trials, pandas.DataFrame(), None) == "merge_quality"
    assert choose_selector(trials.assign(method="hiast"), pandas.DataFrame(), None) == "fmiou"
    assert choose_selector(trials, pandas.DataFrame(), "fmiou") == "fmiou"


def test_class_names_come_from_the_rows_else_from_the_dataset_family() -> None:
    import pandas

    from raysel.data import get_family
    from raysel.reporting.sweep_report import class_names_of

    stored = [f"c{index}" for index in range(NUM_CLASSES)]
    rows = pandas.DataFrame({"dataset": ["street_scenes"] * 2, "class_names": [None, stored]})
    assert class_names_of(rows, NUM_CLASSES) == stored  # what the trials stored: no data package needed
    family = list(get_family("street_scenes").class_names)
    assert class_names_of(rows.drop(columns="class_names"), NUM_CLASSES) == family  # rows written before they stored it
    assert class_names_of(rows.assign(dataset="unknown", class_names=None), 3) == ["class 0", "class 1", "class 2"]


def test_report_cli_unknown_sweep_and_empty_store_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    ResultStore(empty).check_writable()
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep-a", "--results", str(empty)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.startswith("error: ") and "is empty" in error
    assert error.count("\n") == 1 and "Traceback" not in error

    build_store(tmp_path / "results")
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-sweep", "--results", str(tmp_path / "results")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error == f"error: sweep 'no-such-sweep' is not in the result store {tmp_path / 'results'}; sweeps there: " \
                    "sweep-a\n"

    with pytest.raises(DataError, match="no result store"):
        write_report(ResultStore(tmp_path / "missing"), "sweep-a")


def test_raysel_report_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from raysel import cli

    build_store(tmp_path / "results")
    assert cli.main(["report", "sweep-a", "--results", str(tmp_path / "results"), "--output", str(tmp_path / "o")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "o" / "report.md").is_file()
    cli.main(["--help"])
    assert "report" in capsys.readouterr().out


@pytest.mark.integration
def test_report_on_a_real_sweep(tiny_hiast_sweep: dict, tmp_path: Path) -> None:
    results = tmp_path / "results"  # a copy: the shared sweep's own files stay as the sweep wrote them
    shutil.copytree(tiny_hiast_sweep["results"], results)
    result = subprocess.run([sys.executable, "-m", "raysel.report", "tiny", "--results", str(results),
                             "--output", str(tmp_path / "report")], capture_output=True, text=True, timeout=300,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    images = linked_images(markdown)
    assert images == ["score_vs_heldout_day_city.png", "hyperparameters_day_city.png", "class_iou_day_city.png"]
    for name in images:
        assert_png(tmp_path / "report" / name)
    assert "| day_city | fmiou (headline) |" in markdown and "| day_city | im |" in markdown  # every selector
    assert "selectors agree on day_city" in markdown or "selectors disagree on day_city" in markdown
    assert "Kendall τ" in markdown
