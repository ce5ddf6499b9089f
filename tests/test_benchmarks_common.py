"""benchmarks/_common.py: BENCHMARKS.md sections are replaced or appended atomically, other sections untouched, and
every section's header names the command, date, commit, load average and machine."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks._common as common
from benchmarks._common import (RunStart, command_line, format_section, load_text, machine_description,
                                replace_section, with_run_lines, write_section)

EXISTING = """# Benchmarks

## alpha

Alpha body.

## domain_gap

Command: `old`  
Old table.

### an old sub-heading

Old notes.

## domain_gap_quick

Not the same section.

## omega

Omega body.
"""


def write(path: Path, name: str = "domain_gap", body: str = "| a | b |\n|---|---|\n| 1 | 2 |") -> str:
    return write_section(name, "python -m benchmarks.domain_gap --seeds 0", body, path=path, date="2026-01-02",
                         machine="2 cores (test CPU), no GPU", commit="abc1234", load=(0.5, 1.25))


def sections(text: str) -> list[str]:
    return [line[3:] for line in text.splitlines() if line.startswith("## ")]


def test_creates_the_file_with_title_and_section(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    write(path)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\n## domain_gap\n")
    assert "Command: `python -m benchmarks.domain_gap --seeds 0`" in text
    assert "Date: 2026-01-02" in text and "Machine: 2 cores (test CPU), no GPU" in text
    assert "Commit: abc1234  \nLoad average: 0.5 before / 1.2 after  \n" in text
    assert text.endswith("| 1 | 2 |\n")


def test_replaces_only_its_section_in_place(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(EXISTING)
    write(path, body="New table.")
    text = path.read_text()
    assert sections(text) == ["alpha", "domain_gap", "domain_gap_quick", "omega"]
    assert "Old table." not in text and "an old sub-heading" not in text and "Old notes." not in text
    assert "New table.\n\n## domain_gap_quick\n\nNot the same section.\n" in text
    assert text.startswith("# Benchmarks\n\n## alpha\n\nAlpha body.\n\n## domain_gap\n")
    assert text.endswith("## omega\n\nOmega body.\n")


def test_appends_a_missing_section_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(EXISTING)
    write(path, name="hiast_gain", body="Gain.")
    text = path.read_text()
    assert sections(text) == ["alpha", "domain_gap", "domain_gap_quick", "omega", "hiast_gain"]
    assert text.startswith(EXISTING.rstrip("\n") + "\n\n## hiast_gain\n")
    assert "Old table." in text


def test_last_section_replaced_and_rewrite_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(EXISTING)
    write(path, name="omega", body="Omega v2.")
    once = path.read_text()
    write(path, name="omega", body="Omega v2.")
    assert path.read_text() == once
    assert once.endswith("Omega v2.\n") and "Omega body." not in once
    assert sections(once) == ["alpha", "domain_gap", "domain_gap_quick", "omega"]


def test_sub_headings_stay_inside_the_section(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(EXISTING)
    write(path, body="### digits\n\nTable one.\n\n### Runtime\n\nTable two.")
    write(path, body="Short.")
    text = path.read_text()
    assert "Table one." not in text and "### Runtime" not in text
    assert sections(text) == ["alpha", "domain_gap", "domain_gap_quick", "omega"]


def test_leaves_no_temporary_or_lock_files(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    write(path)
    write(path, name="other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BENCHMARKS.md"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    path = tmp_path / "BENCHMARKS.md"
    path.write_text(EXISTING)

    def failing_replace(source: str, destination: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write(path, body="New table.")
    assert path.read_text() == EXISTING
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BENCHMARKS.md"]


@pytest.mark.parametrize("body", ["## sneaky heading\n\ntext", "fine\n## second\n"])
def test_rejects_a_level_two_heading_in_the_body(tmp_path: Path, body: str) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(EXISTING)
    with pytest.raises(ValueError, match="level-2"):
        write(path, body=body)
    assert path.read_text() == EXISTING


@pytest.mark.parametrize("name", ["", "two words", "a\nb", "## x"])
def test_rejects_bad_section_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="section name"):
        write(tmp_path / "BENCHMARKS.md", name=name)


@pytest.fixture()
def started(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that started at commit abc1234 under load 0.5; the load is 1.5 when its section is written."""
    monkeypatch.setattr(common, "_run_start", RunStart("abc1234", 0.5))
    monkeypatch.setattr(common, "one_minute_load", lambda: 1.5)


def test_replace_section_takes_a_preformatted_section(tmp_path: Path, started: None) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(EXISTING)
    replace_section("alpha", "## alpha\n\nCommand: `x`  \nAlpha v2.\n", path=path)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\n## alpha\n\nCommand: `x`  \nCommit: abc1234  \n"
                           "Load average: 0.5 before / 1.5 after  \nAlpha v2.\n\n## domain_gap\n")
    with pytest.raises(ValueError, match="heading line"):
        replace_section("alpha", "## omega\n\nwrong heading\n", path=path)


def test_format_section_and_helpers(started: None) -> None:
    section = format_section("s", "python -m benchmarks.s", "\n\nbody\n\n", date="2026-01-02", machine="m")
    assert section == ("## s\n\nCommand: `python -m benchmarks.s`  \nDate: 2026-01-02  \nCommit: abc1234  \n"
                       "Load average: 0.5 before / 1.5 after  \nMachine: m\n\nbody\n")
    given = format_section("s", "c", "body", date="d", machine="m", commit="def5678 (+ uncommitted changes)",
                           load=(None, 2.04))
    assert "Commit: def5678 (+ uncommitted changes)  \nLoad average: not recorded before / 2.0 after  \n" in given
    assert command_line("s.py", ["--seeds", "0", "1", "--note", "a b"]) == \
        "python -m benchmarks.s --seeds 0 1 --note 'a b'"
    assert command_line("s.py", []) == "python -m benchmarks.s"
    description = machine_description()
    assert "cores" in description and ("GPU" in description)


def test_load_text() -> None:
    assert load_text(0.44, 1.46) == "0.4 before / 1.5 after"
    assert load_text(None, None) == "not recorded"
    assert load_text(3.0, None) == "3.0 before / not recorded after"


def test_a_run_records_its_start_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "_run_start", None)
    monkeypatch.setattr(common, "describe_commit", lambda: "fff0000")
    monkeypatch.setattr(common, "one_minute_load", lambda: 0.25)
    start = common.run_start()
    assert start == RunStart("fff0000", 0.25)
    monkeypatch.setattr(common, "one_minute_load", lambda: 9.0)
    assert common.run_start() is start  # later calls read the recorded start
    assert common.begin_run() == RunStart("fff0000", 9.0)  # a main called again records its own


def test_with_run_lines_fills_a_self_formatted_header(started: None) -> None:
    hiast_like = ("## hiast_gain\n\nCommand: `c`  \nDate: 2026-11-23 21:31  \nMachine: m; 2 runs in parallel  \n"
                  "Data: embedded.\n\n| table |\n")
    assert with_run_lines(hiast_like) == (
        "## hiast_gain\n\nCommand: `c`  \nDate: 2026-11-23 21:31  \nCommit: abc1234  \n"
        "Load average: 0.5 before / 1.5 after  \nMachine: m; 2 runs in parallel  \nData: embedded.\n\n| table |\n")
    complete = format_section("s", "c", "body", date="d", machine="m", commit="1234567", load=(1.0, 2.0))
    assert with_run_lines(complete) == complete
    assert with_run_lines("## s\n\nJust a body.\n") == (
        "## s\n\nCommit: abc1234  \nLoad average: 0.5 before / 1.5 after  \n\nJust a body.\n")
    assert with_run_lines("## s\n") == "## s\n\nCommit: abc1234  \nLoad average: 0.5 before / 1.5 after  \n"


def test_campaign_plans_become_one_checked_study(tmp_path: Path) -> None:
    """Campaign plans are study entries: every one passes ``build_request`` (through ``study_from_mapping``) in plan
    order, expects the trials the plan counts, and keeps its ``--set`` texts as the request's overrides."""
    from benchmarks import search_guidance, selection_quality, selection_wide
    from tests.test_benchmarks_selection_wide import options as wide_options

    plans = search_guidance.build_plans("quick", search_guidance.BUDGETS["quick"], search_guidance.ARMS,
                                        search_guidance.GUIDE, tmp_path)
    plans += selection_wide.build_plans(wide_options(tmp_path))
    quality = selection_quality.RunOptions(results=tmp_path, data_root=tmp_path, targets=("day_city",), seeds=(0,),
                                           method_seeds=(0,), methods=selection_quality.METHODS, budget="quick",
                                           selection_size=12, random_samples=4,
                                           values=dict(selection_quality.TABLE8_VALUES))
    plans += selection_quality.build_plans(quality)
    study = common.campaign_study("campaign", tmp_path / "store", plans)
    assert [sweep.name for sweep in study.sweeps] == [plan.sweep_id for plan in plans]
    for plan, sweep in zip(plans, study.sweeps):
        assert sweep.request.expected_trials() == plan.expected_trials, plan.sweep_id
        assert list(sweep.request.space.overrides) == list(plan.options.get("overrides", ())), plan.sweep_id
        assert sweep.request.search.seed == plan.seed and tuple(sweep.request.data.targets) == plan.targets
    assert not (tmp_path / "store").exists()  # checking writes nothing


def test_a_partial_note_heads_the_section_until_every_sweep_finished(tmp_path: Path, started: None) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(EXISTING)
    note = common.partial_note(3, 7)
    assert note.startswith("**partial: 3 of 7 sweeps**") and common.partial_note(7, 7) is None
    write_section("alpha", "python -m benchmarks.alpha", "Body.", path=path, date="d", machine="m", note=note)
    text = path.read_text()
    assert text.startswith(f"# Benchmarks\n\n## alpha\n\n{note}\n\nCommand: `python -m benchmarks.alpha`  \n")
    assert text.count("Commit: abc1234") == 1 and text.count("Load average:") == 1
    write_section("alpha", "python -m benchmarks.alpha", "Body.", path=path, date="d", machine="m")
    assert "partial" not in path.read_text()
