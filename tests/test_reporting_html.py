"""report.html: one self-contained page (plots as data URIs) from a real Parquet store and real matplotlib PNGs."""

from __future__ import annotations

import base64
import re
import shlex
from pathlib import Path

import pytest

from raysel.report import main
from raysel.reporting.html import reproduce_commands
from raysel.reporting.sweep_report import write_report
from raysel.store import ResultStore
from tests.test_report import PNG_SIGNATURE, build_store, trial_row
from tests.test_status import save_sweep


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[str, Path]:
    """The page of a 4-candidate sweep (fmiou picks t2, entropy picks t1 = the best held-out) with one failed trial."""
    root = tmp_path_factory.mktemp("html")
    build_store(root / "results")
    save_sweep(root / "results")
    write_report(ResultStore(root / "results"), "sweep-a", root / "report")
    return (root / "report" / "report.html").read_text(), root


def test_every_plot_is_embedded_as_a_png_data_uri_and_nothing_is_fetched(page) -> None:
    text, root = page
    sources = re.findall(r'<img[^>]* src="([^"]+)"', text)
    assert len(sources) == 3 == len(list((root / "report").glob("*.png")))
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == PNG_SIGNATURE
    assert not re.search(r'(src|href)="(https?:)?//', text)


def test_decision_and_every_selectors_pick_side_by_side_with_agreement(page) -> None:
    text, _ = page
    picks = text.split("Decision and every selector's pick", 1)[1].split("</table>", 1)[0]
    assert "1 of 2 selectors pick the decided trial <code>t2</code>" in picks
    assert re.search(r"fmiou \(decision\)</td><td><code>t2</code>.*agrees", picks)
    assert re.search(r"entropy</td><td><code>t1</code>.*differs", picks)
    assert "oracle" in picks and "48.00" in picks  # the held-out mIoU of entropy's pick, marked as the oracle


def test_failed_trials_and_the_commands_to_reproduce(page) -> None:
    text, root = page
    assert "<code>t9</code>" in text and "RuntimeError: out of memory" in text
    assert "python -m raysel.sweep hiast --name sweep-a" in text
    assert f"python -m raysel.report sweep-a --results {root / 'results'}" in text


def test_reproduce_command_round_trips_through_the_sweep_parser(tmp_path: Path) -> None:
    from raysel.reporting.html import read_saved_settings
    from raysel.sweep import build_parser

    save_sweep(tmp_path)
    command = reproduce_commands(read_saved_settings(tmp_path, "sweep-a"), "sweep-a", tmp_path)[0]
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert (args.method, args.name, args.target, args.search) == ("hiast", "sweep-a", ["day_city"], "grid")


def test_no_finished_trial_is_one_line_exit_2_and_nothing_written(tmp_path: Path, capsys) -> None:
    store = ResultStore(tmp_path / "results")
    failed = trial_row("t0", status="failed")
    failed["error"] = "RuntimeError: boom"
    store.write_trial(failed)
    with pytest.raises(SystemExit) as exited:
        main(["sweep-a", "--results", str(tmp_path / "results"), "--output", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "out").exists()
