"""benchmarks/_common.py: BENCHMARKS.md sections are replaced or appended atomically, other sections untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks._common import (command_line, format_section, machine_description,
                                replace_section, write_section)

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
                         machine="2 cores (test CPU), no GPU")


def sections(text: str) -> list[str]:
    return [line[3:] for line in text.splitlines() if line.startswith("## ")]


def test_creates_the_file_with_title_and_section(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    write(path)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\n## domain_gap\n")
    assert "Command: `python -m benchmarks.domain_gap --seeds 0`" in text
    assert "Date: 2026-01-02" in text and "Machine: 2 cores (test CPU), no GPU" in text
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


def test_replace_section_takes_a_preformatted_section(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(EXISTING)
    replace_section("alpha", "## alpha\n\nCommand: `x`  \nAlpha v2.\n", path=path)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\n## alpha\n\nCommand: `x`  \nAlpha v2.\n\n## domain_gap\n")
    with pytest.raises(ValueError, match="heading line"):
        replace_section("alpha", "## omega\n\nwrong heading\n", path=path)


def test_format_section_and_helpers() -> None:
    section = format_section("s", "python -m benchmarks.s", "\n\nbody\n\n", date="2026-01-02", machine="m")
    assert section == "## s\n\nCommand: `python -m benchmarks.s`  \nDate: 2026-01-02  \nMachine: m\n\nbody\n"
    assert command_line("s.py", ["--seeds", "0", "1", "--note", "a b"]) == \
        "python -m benchmarks.s --seeds 0 1 --note 'a b'"
    assert command_line("s.py", []) == "python -m benchmarks.s"
    description = machine_description()
    assert "cores" in description and ("GPU" in description)
