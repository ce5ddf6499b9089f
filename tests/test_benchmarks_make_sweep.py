"""benchmarks.make_sweep: the table it writes from one run's facts, the output line it reads, and its refusals."""

from __future__ import annotations

import json

import pytest

from benchmarks import make_sweep


FACTS = {"finished": 6, "failed": 0, "span_s": 190.0, "trial_s": [60.0, 66.0],
         "phases": {"train": 40.0, "selection_scores": 4.5},
         "heldout": {"hiast_00000": 35.0, "hiast_00001": 39.5}, "pick": "hiast_00000", "guarded": "hiast_00001",
         "confident": False}


def test_the_table_splits_the_wall_time_and_gives_the_picks_regret() -> None:
    body = make_sweep.report_body("make sweep", 330.0, 0, 17.0, 80.0, FACTS, (0.4, 1.9))
    assert "**5 min 30 s**" in body and "| 17 s |" in body and "| 80 s |" in body
    assert "| 43 s |" in body  # everything else: 330 - 17 - 80 - 190
    assert "held-out 35.0; regret 4.50 points" in body and "no confident winner: trial 00001" in body
    assert "| 40.0 | 4.5 |" in body


def test_minutes_rounds_to_the_second_before_splitting() -> None:
    assert make_sweep.minutes(359.6) == "6 min 0 s" and make_sweep.minutes(374.2) == "6 min 14 s"
    assert make_sweep.minutes(59.4) == "0 min 59 s"


def test_the_shared_stages_line_is_read_from_the_sweep_output() -> None:
    output = "building shared stages ...\n  shared stages ready in 91 s\n"
    assert [float(value) for value in make_sweep.STAGES_LINE.findall(output)] == [91.0]


def test_generation_seconds_come_from_the_data_marker(tmp_path) -> None:
    (tmp_path / "street_scenes").mkdir()
    assert make_sweep.generation_seconds(tmp_path) is None
    (tmp_path / "street_scenes" / ".raysel_generated.json").write_text(json.dumps({"seconds": 17.5}))
    assert make_sweep.generation_seconds(tmp_path) == 17.5


def test_a_workdir_with_data_is_refused_before_anything_runs(tmp_path, capsys) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "leftover").write_text("x")
    assert make_sweep.main(["--workdir", str(tmp_path), "--command", "false", "--no-write"]) == 2
    assert "not empty" in capsys.readouterr().err
