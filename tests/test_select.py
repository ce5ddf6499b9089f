"""`python -m raysel.select` and the label-free guarantee: selection never opens a held-out label file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raysel.errors import UserError

REPO = Path(__file__).resolve().parent.parent


class OpenedFiles:
    """Record every file path opened in this process while active (a CPython audit hook sees every open)."""

    def __init__(self) -> None:
        self.active = False
        self.paths: list[str] = []
        sys.addaudithook(self._hook)  # audit hooks cannot be removed; `active` switches recording off

    def _hook(self, event: str, args: tuple) -> None:
        if self.active and event == "open" and args and isinstance(args[0], (str, bytes, Path)):
            self.paths.append(str(args[0]))


@pytest.mark.integration
def test_selection_never_opens_heldout_labels(tiny_hiast_sweep: dict, tmp_path: Path) -> None:
    """Re-select with every held-out label folder moved away AND an audit of every open: no label is touched."""
    from raysel.selection.decision import select_sweep
    from raysel.store import ResultStore

    data_root = Path(tiny_hiast_sweep["data_root"])
    results = tmp_path / "results"  # a copy: the shared sweep's own decisions stay as the sweep wrote them
    shutil.copytree(tiny_hiast_sweep["results"], results)
    label_folders = sorted(data_root.glob("street_scenes/*/gtFine"))
    assert label_folders, "the embedded targets should have gtFine label folders"
    hidden = [folder.with_name("gtFine.hidden-during-selection") for folder in label_folders]
    opened = OpenedFiles()
    for folder, away in zip(label_folders, hidden):
        folder.rename(away)
    try:
        opened.active = True
        decisions = select_sweep(ResultStore(results), "tiny",
                                 selectors=("fmiou", "soft_vote", "entropy", "im", "snd"))
        opened.active = False
    finally:
        opened.active = False
        for folder, away in zip(label_folders, hidden):
            away.rename(folder)
    assert {d["selector"] for d in decisions} == {"fmiou", "soft_vote", "entropy", "im", "snd"}
    assert any(path.endswith("predictions.npz") for path in opened.paths)
    touched = [p for p in opened.paths if "gtFine" in p or "labels" in Path(p).parts or "heldout" in Path(p).parts]
    assert touched == []


@pytest.mark.integration
def test_select_cli_rescoring_records_decisions(tiny_hiast_sweep: dict, tmp_path: Path) -> None:
    results = tmp_path / "results"  # a copy: the shared sweep's own decisions stay as the sweep wrote them
    shutil.copytree(tiny_hiast_sweep["results"], results)
    result = subprocess.run([sys.executable, "-m", "raysel.select", "tiny", "--results", str(results),
                             "--selector", "rank_mean"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "rank_mean" in result.stdout
    from raysel import store

    selections = store.load(results, table="selections", sweep_id="tiny")
    assert "rank_mean" in set(selections["selector"])


def test_select_unknown_sweep_is_a_clear_error(tmp_path: Path) -> None:
    from raysel.selection.decision import select_sweep
    from raysel.store import ResultStore

    store = ResultStore(tmp_path)
    store.check_writable()
    with pytest.raises(UserError, match="no-such-sweep"):
        select_sweep(store, "no-such-sweep")


def test_select_cli_unknown_sweep_exits_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "raysel.select", "no-such-sweep", "--results", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
