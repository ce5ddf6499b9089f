"""BENCHMARKS.md: every section names its command, date, commit and load average; staleness is decided by git.

The first tests read the repository's BENCHMARKS.md and its benchmark modules (``MEASURES``). The staleness tests
build a tiny git repository in ``tmp_path`` (a benchmark module, the code it measures, code it does not, and a
BENCHMARKS.md section naming its commit) and check that only a later commit touching what the section measures makes
it stale, and that ``--mark`` writes and removes the stale line.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from benchmarks._common import (BENCHMARKS_PATH, REPO, STALE_PREFIX, check_staleness, declared_measures,
                                describe_commit, mark_stale, measured_paths, split_sections, stale_command)

# Sections dated before this may say "not recorded" for the load average (they predate the header); later ones
# are written by the helpers, which always measure it.
HEADER_DATE = "2026-12-06"
LOAD = re.compile(r"\d+(\.\d+)? before / \d+(\.\d+)? after\b")


def header(section: str) -> dict[str, str]:
    """The ``Key: value`` lines of a section's header: the first paragraph under the heading that is not a bold note
    (a stale line, a ``**partial: k of n ...**`` line)."""
    paragraphs = [part.strip() for part in re.split(r"\n\s*\n", section.split("\n", 1)[1]) if part.strip()]
    first = next(part for part in paragraphs if not part.startswith((STALE_PREFIX, "**partial: ")))
    return {key: value.strip() for key, value in re.findall(r"^([A-Z][a-z ]+): (.*)$", first, re.M)}


SECTIONS = split_sections(BENCHMARKS_PATH.read_text())


def test_benchmarks_md_has_sections() -> None:
    assert len(SECTIONS) >= 10


@pytest.mark.parametrize("name, section", SECTIONS, ids=[name for name, _ in SECTIONS])
def test_every_section_names_command_date_commit_and_load(name: str, section: str) -> None:
    lines = header(section)
    assert {"Command", "Date", "Commit", "Load average", "Machine"} <= set(lines), f"{name}: {sorted(lines)}"
    assert re.match(r"\d{4}-\d{2}-\d{2}\b", lines["Date"]), lines["Date"]
    assert re.match(r"[0-9a-f]{7,40}\b", lines["Commit"]), f"{name}: Commit must start with a hash"
    load = lines["Load average"]
    if "not recorded" in load:
        assert lines["Date"][:10] < HEADER_DATE, f"{name} is dated {lines['Date']}: it must record its load average"
    else:
        assert LOAD.match(load), f"{name}: Load average must read 'X before / Y after', got {load!r}"


@pytest.mark.parametrize("name", [name for name, _ in SECTIONS])
def test_every_section_declares_what_it_measures(name: str) -> None:
    paths = measured_paths(name)
    assert paths
    assert [path for path in paths if not (REPO / path).exists()] == []


@pytest.mark.parametrize("module", sorted(path.name for path in (REPO / "benchmarks").glob("[a-z]*.py")))
def test_every_benchmark_module_declares_measures(module: str) -> None:
    measures = declared_measures(REPO / "benchmarks" / module)
    assert measures, f"benchmarks/{module} has no MEASURES constant"
    assert [path for path in measures if not (REPO / path).exists()] == []


def git(repo: Path, *arguments: str) -> str:
    """Run git in ``repo`` with a fixed identity and no signing (whatever the machine's configuration)."""
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false",
               *arguments]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def full_history() -> bool:
    """Whether this checkout has its whole git history (a shallow clone lacks the sections' commits)."""
    try:
        return git(REPO, "rev-parse", "--is-shallow-repository") == "false"
    except (OSError, subprocess.CalledProcessError):
        return False


@pytest.mark.skipif(not full_history(), reason="needs the repository's full git history")
def test_every_recorded_commit_exists_and_every_section_can_be_checked() -> None:
    assert [(result.section, result.problem) for result in check_staleness() if result.problem] == []


# --------------------------------------------------------------------------------------------------------------
# Staleness on a tiny git repository
# --------------------------------------------------------------------------------------------------------------


def commit_all(repo: Path, message: str) -> str:
    """Commit every file in ``repo``; returns the new commit's short hash."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "--short", "HEAD")


def section_at(commit: str) -> str:
    """A ``## bench`` section whose figures were measured at ``commit``."""
    return (f"## bench\n\nCommand: `python -m benchmarks.bench`  \nDate: 2026-12-07  \nCommit: {commit}  \n"
            "Load average: 0.5 before / 0.7 after  \nMachine: test\n\n| figure |\n|---|\n| 1.0 |\n")


@pytest.fixture()
def repo(tmp_path: Path) -> tuple[Path, str]:
    """A git repository whose first commit holds a benchmark measuring ``lib/measured.py``; returns it and the hash."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "benchmarks" / "bench.py").write_text('MEASURES = ("lib/measured.py",)\n')
    (tmp_path / "lib" / "measured.py").write_text("SPEED = 1\n")
    (tmp_path / "lib" / "other.py").write_text("UNRELATED = 1\n")
    git(tmp_path, "init", "-q")
    first = commit_all(tmp_path, "benchmark and code")
    (tmp_path / "BENCHMARKS.md").write_text(f"# Benchmarks\n\nPreamble.\n\n{section_at(first)}")
    return tmp_path, first


def test_a_commit_touching_only_other_code_leaves_the_section_fresh(repo: tuple[Path, str]) -> None:
    root, first = repo
    (root / "lib" / "other.py").write_text("UNRELATED = 2\n")
    commit_all(root, "unrelated change")
    [result] = check_staleness(root / "BENCHMARKS.md")
    assert (result.section, result.commits, result.problem, result.stale) == ("bench", (first,), None, False)
    assert mark_stale([result], root / "BENCHMARKS.md") == []


def test_a_commit_touching_measured_code_makes_the_section_stale(repo: tuple[Path, str]) -> None:
    root, first = repo
    original = (root / "BENCHMARKS.md").read_text()
    (root / "lib" / "measured.py").write_text("SPEED = 2\n")
    (root / "lib" / "other.py").write_text("UNRELATED = 2\n")
    second = commit_all(root, "faster")
    [result] = check_staleness(root / "BENCHMARKS.md")
    assert result.stale and [change.commit for change in result.changes] == [second]
    assert result.files() == ["lib/measured.py"]  # the unrelated file of the same commit is not listed

    assert mark_stale([result], root / "BENCHMARKS.md") == ["bench"]
    marked = (root / "BENCHMARKS.md").read_text()
    assert marked.startswith("# Benchmarks\n\nPreamble.\n\n## bench\n\n**Stale since ")
    assert f":** lib/measured.py changed in 1 commit(s) after {first}" in marked
    assert marked.replace(result.note() + "\n\n", "") == original
    assert mark_stale(check_staleness(root / "BENCHMARKS.md"), root / "BENCHMARKS.md") == []  # idempotent

    # The benchmark reruns at the new commit (its section names it): the tool removes the stale line.
    (root / "BENCHMARKS.md").write_text(marked.replace(f"Commit: {first}", f"Commit: {second}"))
    assert mark_stale(check_staleness(root / "BENCHMARKS.md"), root / "BENCHMARKS.md") == ["bench"]
    assert STALE_PREFIX not in (root / "BENCHMARKS.md").read_text()


def test_a_change_to_the_benchmark_itself_makes_the_section_stale(repo: tuple[Path, str]) -> None:
    root, _ = repo
    (root / "benchmarks" / "bench.py").write_text('MEASURES = ("lib/measured.py",)\nBATCH = 2\n')
    commit_all(root, "benchmark changed")
    [result] = check_staleness(root / "BENCHMARKS.md")
    assert result.files() == ["benchmarks/bench.py"]


def test_sections_that_cannot_be_checked_are_reported_not_marked(repo: tuple[Path, str],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root, first = repo
    path = root / "BENCHMARKS.md"
    path.write_text(path.read_text() + "\n" + section_at(first).replace("## bench", "## unknown_bench")
                    + "\n## no_commit\n\nCommand: `x`  \n")
    results = {result.section: result for result in check_staleness(path)}
    assert "no benchmarks/unknown_bench.py declaring MEASURES" in str(results["unknown_bench"].problem)
    assert "Commit" in str(results["no_commit"].problem)
    before = path.read_text()
    assert stale_command(["--file", str(path), "--mark"]) == 1
    assert path.read_text() == before
    assert "fresh   bench" in capsys.readouterr().out


def test_describe_commit_marks_uncommitted_changes(repo: tuple[Path, str]) -> None:
    root, first = repo
    assert describe_commit(root) == first  # BENCHMARKS.md is untracked and outside raysel/ and benchmarks/
    (root / "benchmarks" / "bench.py").write_text("MEASURES = ()\n")
    assert describe_commit(root) == f"{first} (+ uncommitted changes)"
    assert describe_commit(root / "lib").startswith(first)
    assert describe_commit(Path("/")).startswith("not recorded")
