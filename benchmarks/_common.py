"""Helpers shared by the benchmark scripts: machine description, BENCHMARKS.md sections, in-process method runs.

* :func:`machine_description` — cores, CPU model, GPU or not, torch version (what a reader needs to compare runs).
* :func:`write_section` — replace (or append) one ``## <name>`` section of ``BENCHMARKS.md`` at the repo root,
  atomically (temp file + ``os.replace``) and under a file lock, so concurrent benchmarks never lose each other's
  sections; :func:`replace_section` does the same for a section text the caller formatted itself. Every section
  starts with the same header (:func:`format_section`)::

      Command: `python -m benchmarks.<name> ...`
      Date: 2026-12-06
      Commit: 5c7fa3e (+ uncommitted changes)
      Load average: 0.4 before / 1.5 after
      Machine: 2 cores (...), no GPU; Python ..., torch ...

  ``Commit`` is HEAD's short hash when the run started, marked when tracked files under raysel/ or benchmarks/
  differed from it; ``Load average`` is the 1-minute load when the run started (:func:`begin_run`, called when
  this module is imported, i.e. when ``python -m benchmarks.<name>`` starts) and when the section is written, unless
  the benchmark passes its own ``load=(before, after)``. A section a benchmark formatted itself gets the two lines
  it lacks from :func:`replace_section`.
* Staleness — each benchmark module declares what it measures in a constant ``MEASURES`` (paths: raysel files or
  folders, its private helpers); :data:`OTHER_SECTION_MEASURES` does it for sections no module writes. A section
  is stale when ``git log <its Commit>..HEAD`` touches its benchmark module or anything in ``MEASURES``
  (:func:`check_staleness`). ``python -m benchmarks._common stale`` prints every section's state;
  ``python -m benchmarks._common stale --mark`` writes a ``**Stale since <date>:** <files changed>`` line under
  each stale section's heading and removes it from sections that are fresh again (rerunning the benchmark
  rewrites the section, which drops the line). Stale lines are the tool's output, never written by hand.
* :func:`run_method_and_score_heldout` — train a registered method in-process (``LocalSession``) and score the
  returned model on the held-out labels of one or more target domains. Held-out labels are read here only
  through :func:`raysel.heldout.heldout_scores` (benchmark/evaluation code, never a method);
  :func:`build_shared_stages` builds a method's cached stages first, as a sweep does, so runs time one configuration.
* :func:`run_in_processes`, :func:`working_directory`, :func:`prepare_benchmark_data` — job pools, scratch folders
  and data for the scripts.
* Sweep campaigns (selection_quality, search_guidance, selection_wide): :class:`SweepPlan` (one real raysel sweep:
  its id and :class:`raysel.request.SweepOptions` fields, a study entry), :func:`campaign_study` (the plans as one
  study, :func:`raysel.orchestration.studies.study_from_mapping`), :func:`run_campaign` (``run_study`` on one local
  Ray: finished sweeps reused, a rows file's imported, interrupted ones resumed, ``--max-minutes`` stopping it
  between trials), :func:`partial_note` (``**partial: k of n sweeps**`` under the heading of a section written from
  the finished sweeps), :func:`export_campaign` (their rows to ``benchmarks/results/<section>.parquet``, committed
  with the section), :func:`evaluate_plans` (re-score each offline with every applicable selector, or read an
  imported sweep's stored decisions, and compare with held-out scores, as :class:`SweepCase` s) and the table cells
  the three share.
* :func:`data_identity` (which generated data a run used) and :class:`SyntheticSweep` (synthetic candidate label
  maps for voting_speed and gpu_throughput).

Every benchmark is an outside user of raysel: it imports only names raysel exports in ``__all__``, never ``tests``
and never another benchmark (import-linter contracts in pyproject.toml, tests/test_benchmarks_imports.py). What two
benchmarks share lives here; a helper module of one benchmark only is private to it (``_hdrq_merge_tables``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime as dt
import fcntl
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from raysel.selection import SelectorSummary

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_PATH = REPO / "BENCHMARKS.md"
BENCHMARKS_TITLE = "# Benchmarks\n"


# --------------------------------------------------------------------------------------------------------------
# Machine and command
# --------------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform's processor string elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def gpu_description() -> str:
    """``"no GPU"`` or the CUDA device name(s) torch sees."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "no GPU"
    if not torch.cuda.is_available():
        return "no GPU"
    names = sorted({torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())})
    return f"{torch.cuda.device_count()} GPU ({', '.join(names)})"


def machine_description() -> str:
    """One line: cores (``os.cpu_count``), CPU model, GPU or not, Python and torch versions."""
    versions = f"Python {platform.python_version()}"
    with contextlib.suppress(ImportError):
        import torch

        versions += f", torch {torch.__version__}"
    return f"{os.cpu_count()} cores ({cpu_model()}), {gpu_description()}; {versions}"


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The exact command that reproduces this run: ``python -m benchmarks.<script> <args>`` (shell-quoted; ``script``
    with or without ``.py``)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    module = f"benchmarks.{script.removesuffix('.py')}"
    return " ".join(["python", "-m", module, *([shlex.join(arguments)] if arguments else [])])


# --------------------------------------------------------------------------------------------------------------
# The run a section records: its commit and its load average
# --------------------------------------------------------------------------------------------------------------

NOT_RECORDED = "not recorded"
UNCOMMITTED_NOTE = " (+ uncommitted changes)"
# Tracked changes under these make the code a run measured differ from its commit.
MEASURED_TREES = ("raysel", "benchmarks")


def git(arguments: Sequence[str], repo: Path = REPO) -> str:
    """``git <arguments>`` in ``repo``, its standard output (raises ``CalledProcessError`` or ``OSError``)."""
    return subprocess.run(["git", *arguments], cwd=repo, capture_output=True, text=True, check=True).stdout


def describe_commit(repo: Path = REPO) -> str:
    """HEAD's short hash, plus ``(+ uncommitted changes)`` when tracked files under raysel/ or benchmarks/ differ from
    it: which code a run measured (``not recorded (...)`` outside a git checkout)."""
    try:
        head = git(["rev-parse", "--short", "HEAD"], repo).strip()
        trees = [f":(top){tree}" for tree in MEASURED_TREES]
        changed = git(["status", "--porcelain", "--untracked-files=no", "--", *trees], repo).strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{NOT_RECORDED} (not a git checkout)"
    return head + (UNCOMMITTED_NOTE if changed else "")


def one_minute_load() -> float | None:
    """The 1-minute load average now (None where the system has none): how busy the shared machine was."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_text(before: float | None, after: float | None) -> str:
    """The ``Load average:`` value, ``0.4 before / 1.5 after``; ``not recorded`` stands for an unknown one."""
    if before is None and after is None:
        return NOT_RECORDED
    return " / ".join(f"{NOT_RECORDED if value is None else f'{value:.1f}'} {when}"
                      for value, when in ((before, "before"), (after, "after")))


@dataclass(frozen=True)
class RunStart:
    """What a benchmark run records as it starts: the code it runs (:func:`describe_commit`) and the load then."""

    commit: str
    load_before: float | None

    @classmethod
    def now(cls) -> RunStart:
        """The commit and the 1-minute load average at this moment."""
        return cls(describe_commit(), one_minute_load())


_run_start: RunStart | None = None


def begin_run() -> RunStart:
    """Record this run's start now. Importing this module does it, which is when a ``python -m benchmarks.<name>``
    run starts; a ``main`` called again in one process may call it to record its own start."""
    global _run_start
    _run_start = RunStart.now()
    return _run_start


def run_start() -> RunStart:
    """The start :func:`begin_run` recorded (recorded now when none was)."""
    return _run_start or begin_run()


begin_run()


# --------------------------------------------------------------------------------------------------------------
# BENCHMARKS.md sections
# --------------------------------------------------------------------------------------------------------------

# The lines under every section's heading, in this order; ``Commit`` and ``Load average`` come from :func:`run_start`.
HEADER_KEYS = ("Command", "Date", "Commit", "Load average", "Machine")


def _section_pattern(name: str) -> re.Pattern[str]:
    """The ``## <name>`` heading line (exact name) and everything up to the next ``## `` heading or the end."""
    return re.compile(rf"^## {re.escape(name)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)


def format_section(name: str, command: str, body_markdown: str, *, date: str | None = None,
                   machine: str | None = None, commit: str | None = None,
                   load: tuple[float | None, float | None] | None = None, note: str | None = None) -> str:
    """The section text: heading, the header lines (:data:`HEADER_KEYS`), then the body (ending with a newline).

    ``commit`` defaults to the run's (:func:`run_start`); ``load`` is the 1-minute load average (before, after),
    by default the run's start and now, so every section states how busy the machine was the same way. ``note``
    is a bold line right under the heading, before the header (a campaign's ``**partial: k of n sweeps**``).
    """
    before, after = load if load is not None else (run_start().load_before, one_minute_load())
    lines = [
        f"## {name}",
        "",
        *([note, ""] if note else []),
        f"Command: `{command}`  ",
        f"Date: {date or dt.date.today().isoformat()}  ",
        f"Commit: {commit or run_start().commit}  ",
        f"Load average: {load_text(before, after)}  ",
        f"Machine: {machine or machine_description()}",
        "",
        body_markdown.strip("\n"),
    ]
    return "\n".join(lines) + "\n"


def with_run_lines(section: str) -> str:
    """``section`` with the ``Commit:`` and ``Load average:`` lines its header lacks added (from :func:`run_start`,
    the load after measured now), before its ``Machine:`` line, else after its ``Date:`` or ``Command:`` line: a
    section a benchmark formatted itself states them like every other."""
    heading, _, rest = section.partition("\n")
    lines = [heading, "", *rest.lstrip("\n").split("\n")]
    header = _header_span(lines)
    if header.start < len(lines) and lines[header.start].startswith("**") and header.stop < len(lines):
        header = _header_span(lines, header.stop + 1)  # a note under the heading (partial, stale): the header follows
    keys = [line.split(":", 1)[0] for line in lines[header]]
    values = {"Commit": run_start().commit, "Load average": load_text(run_start().load_before, one_minute_load())}
    missing = [f"{key}: {value}  " for key, value in values.items() if key not in keys]
    if not missing:
        return section
    at = (header.start + keys.index("Machine") if "Machine" in keys
          else max((header.start + i + 1 for i, key in enumerate(keys) if key in ("Command", "Date")),
                   default=header.start))
    body_follows = not set(keys) & set(HEADER_KEYS) and bool(lines[at].strip())  # no header: a blank line after
    return "\n".join(lines[:at] + missing + ([""] if body_follows else []) + lines[at:])


def _header_span(lines: Sequence[str], start: int = 2) -> slice:
    """The header's lines in ``[heading, "", ...]``: from index ``start`` (2) up to the first blank line."""
    stop = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return slice(start, stop)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file's folder while reading and replacing it (other benchmark scripts may
    write their sections meanwhile). Locking the folder, not a ``.lock`` file, leaves nothing behind in the repo."""
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _check_section_name(name: str) -> None:
    if not re.fullmatch(r"[\w.\-]+", name):
        raise ValueError(f"section name must be one word of letters, digits, '_', '-', '.', got {name!r}")


def replace_section(name: str, section: str, *, path: Path | str | None = None) -> None:
    """Put ``section`` (a complete text starting with ``## <name>``) in place of the file's ``## <name>`` section,
    or append it; other sections are untouched. Atomic (temp file + ``os.replace``) and under a lock. A header
    without ``Commit:`` or ``Load average:`` gets them (:func:`with_run_lines`)."""
    _check_section_name(name)
    section = with_run_lines(section.strip("\n") + "\n")
    if not section.startswith(f"## {name}\n"):
        raise ValueError(f"section must start with the heading line '## {name}'")
    if re.search(r"^## ", section[len(name) + 4:], re.M):
        raise ValueError("a section must not contain another level-2 '## ' heading (use '###')")
    _store_section(name, section, Path(path) if path is not None else BENCHMARKS_PATH)


def _store_section(name: str, section: str, path: Path) -> None:
    """Swap the file's ``## <name>`` section for ``section`` (or append it), under the lock, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        text = path.read_text() if path.exists() else BENCHMARKS_TITLE
        pattern = _section_pattern(name)
        if pattern.search(text):
            # The replaced span runs up to the next heading: keep one blank line before it.
            text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
        else:
            text = text.rstrip("\n") + "\n\n" + section
        _atomic_write(path, text)


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it over ``path`` (readers never see half a file)."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_section(name: str, command: str, body_markdown: str, *, path: Path | str | None = None,
                  date: str | None = None, machine: str | None = None, commit: str | None = None,
                  load: tuple[float | None, float | None] | None = None, note: str | None = None) -> str:
    """Replace the ``## <name>`` section of BENCHMARKS.md (or append it), leaving every other section untouched.

    The section holds the command, the date (today unless given), the commit and the load average before and
    after (the run's, :func:`run_start`, unless given), the machine (:func:`machine_description` unless given) and
    ``body_markdown``, with ``note`` (a bold line) right under the heading when given. The file is rewritten
    atomically under a lock (:func:`replace_section`). The body may use ``###`` sub-headings but no ``## `` line,
    which would split the section. Returns the section text written.
    """
    _check_section_name(name)
    if re.search(r"^## ", body_markdown, re.M):
        raise ValueError("body_markdown must not contain a level-2 '## ' heading (use '###')")
    section = format_section(name, command, body_markdown, date=date, machine=machine, commit=commit, load=load,
                             note=note)
    replace_section(name, section, path=path)
    return section


# --------------------------------------------------------------------------------------------------------------
# Staleness: a section whose benchmark or measured code changed after its commit
# --------------------------------------------------------------------------------------------------------------

# What a section measures, for the sections no benchmark module writes (each module declares its own MEASURES);
# none today: make_sweep has its module since the figure comes from benchmarks/make_sweep.py.
OTHER_SECTION_MEASURES: dict[str, tuple[str, ...]] = {}
STALE_PREFIX = "**Stale since "
LISTED_FILES = 8  # a stale note names this many changed files, then counts the rest


@dataclass(frozen=True)
class Change:
    """One commit after a section's commit that touched what the section measures: hash, date, files touched."""

    commit: str
    date: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class Staleness:
    """One BENCHMARKS.md section checked against what it measures: the later commits that touched it (none: fresh),
    or the ``problem`` that kept it from being checked."""

    section: str
    commits: tuple[str, ...]
    changes: tuple[Change, ...] = ()
    problem: str | None = None

    @property
    def stale(self) -> bool:
        """Whether a commit after the section's touched its benchmark or the code it measures."""
        return bool(self.changes)

    def files(self) -> list[str]:
        """Every file the later commits changed, sorted."""
        return sorted({name for change in self.changes for name in change.files})

    def note(self) -> str:
        """The ``**Stale since <date>:** <files changed>`` line ``--mark`` writes under the section's heading."""
        files = self.files()
        listed = ", ".join(files[:LISTED_FILES]) + (f" and {len(files) - LISTED_FILES} more files"
                                                    if len(files) > LISTED_FILES else "")
        first = min(change.date for change in self.changes)
        return (f"{STALE_PREFIX}{first}:** {listed} changed in {len(self.changes)} commit(s) after "
                f"{', '.join(self.commits)} (marked by `python -m benchmarks._common stale --mark`).")

    def summary(self) -> str:
        """One line for the command's output."""
        if self.problem:
            return f"unknown {self.section}: {self.problem}"
        if not self.stale:
            return f"fresh   {self.section}: nothing it measures changed after {', '.join(self.commits)}"
        return f"stale   {self.section}: {self.note()}"


def split_sections(text: str) -> list[tuple[str, str]]:
    """Every ``## <name>`` section of a BENCHMARKS.md text: (name, its text from the heading to the next one)."""
    headings = list(re.finditer(r"^## (\S+)[ \t]*$", text, re.M))
    ends = [heading.start() for heading in headings[1:]] + [len(text)]
    return [(heading.group(1), text[heading.start():end]) for heading, end in zip(headings, ends)]


def recorded_commits(section: str) -> tuple[str, ...]:
    """The hashes of a section's ``Commit:`` lines: its header's and those of sub-sections measured apart."""
    return tuple(dict.fromkeys(re.findall(r"^Commit: ([0-9a-f]{7,40})\b", section, re.M)))


def declared_measures(module: Path) -> tuple[str, ...] | None:
    """A benchmark module's ``MEASURES`` constant, read with ``ast`` (nothing imported); None when it has none."""
    for node in ast.parse(module.read_text(), filename=str(module)).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "MEASURES" for target in node.targets):
            return tuple(ast.literal_eval(node.value))
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "MEASURES" and node.value:
            return tuple(ast.literal_eval(node.value))
    return None


def measured_paths(section: str, repo: Path = REPO) -> tuple[str, ...]:
    """The paths whose change makes a section stale: its benchmark module (``selection_wide.standard``'s is
    ``benchmarks/selection_wide.py``) and the module's ``MEASURES``, or :data:`OTHER_SECTION_MEASURES`' entry."""
    if section in OTHER_SECTION_MEASURES:
        return OTHER_SECTION_MEASURES[section]
    module = f"benchmarks/{section.split('.')[0]}.py"
    measures = declared_measures(repo / module) if (repo / module).is_file() else None
    if measures is None:
        raise LookupError(f"no {module} declaring MEASURES, and no entry in OTHER_SECTION_MEASURES")
    return (module, *measures)


def changes_since(commit: str, paths: Sequence[str], repo: Path = REPO) -> list[Change]:
    """The commits in ``<commit>..HEAD`` that touched any of ``paths``, oldest first, each with the files it touched
    among them."""
    output = git(["log", "--reverse", "--format=%x00%h %cs", "--name-only", f"{commit}..HEAD", "--", *paths], repo)
    changes = []
    for record in output.split("\0")[1:]:
        first, *files = [line for line in record.splitlines() if line.strip()]
        short, date = first.split()
        changes.append(Change(short, date, tuple(files)))
    return changes


def check_section(name: str, section: str, repo: Path = REPO) -> Staleness:
    """Whether a section is stale: a commit after (any of) its ``Commit:`` touched what it measures."""
    commits = recorded_commits(section)
    if not commits:
        return Staleness(name, (), problem="no 'Commit: <hash>' line")
    try:
        paths = measured_paths(name, repo)
        found = {change.commit: change for commit in commits for change in changes_since(commit, paths, repo)}
    except LookupError as error:
        return Staleness(name, commits, problem=str(error))
    except subprocess.CalledProcessError as error:
        return Staleness(name, commits, problem=f"git log failed: {error.stderr.strip()}")
    return Staleness(name, commits, tuple(sorted(found.values(), key=lambda change: change.date)))


def check_staleness(path: Path | str | None = None, repo: Path | None = None) -> list[Staleness]:
    """Every section of BENCHMARKS.md (``path``; the repo's by default) checked by :func:`check_section` against
    the git history of ``repo`` (by default the folder that holds the file)."""
    path = Path(path) if path is not None else BENCHMARKS_PATH
    repo = repo if repo is not None else path.resolve().parent
    return [check_section(name, section, repo) for name, section in split_sections(path.read_text())]


def with_stale_note(section: str, note: str | None) -> str:
    """``section`` with the ``**Stale since ...**`` line under its heading replaced by ``note`` (removed if None)."""
    heading, _, rest = section.partition("\n")
    rest = rest.lstrip("\n")
    if rest.startswith(STALE_PREFIX):
        rest = rest.partition("\n")[2].lstrip("\n")
    return f"{heading}\n\n" + (f"{note}\n\n" if note else "") + rest


def mark_stale(results: Sequence[Staleness], path: Path | str | None = None) -> list[str]:
    """Write each checked section's stale line (added, updated, or removed when fresh) into BENCHMARKS.md,
    atomically under the lock; sections with a problem are left as they are. Returns the sections changed."""
    path = Path(path) if path is not None else BENCHMARKS_PATH
    notes = {result.section: result.note() if result.stale else None for result in results if not result.problem}
    with _locked(path):
        text = path.read_text()
        sections = split_sections(text)
        preamble = text[:text.index(sections[0][1])] if sections else text
        marked = [(name, with_stale_note(section, notes[name]) if name in notes else section)
                  for name, section in sections]
        changed = [name for (name, old), (_, new) in zip(sections, marked) if old != new]
        if changed:
            _atomic_write(path, preamble + "".join(section for _, section in marked))
    return changed


def stale_command(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks._common stale [--mark] [--file PATH]``: print every section's staleness; ``--mark``
    writes the stale lines. Exits 1 when a section could not be checked."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._common stale",
                                     description="Which BENCHMARKS.md sections are stale: a commit after the "
                                     "section's touched its benchmark or the code it measures (MEASURES).")
    parser.add_argument("--mark", action="store_true", help="write or remove the '**Stale since**' lines")
    parser.add_argument("--file", type=Path, default=BENCHMARKS_PATH, help="the BENCHMARKS.md to check")
    args = parser.parse_args(argv)
    results = check_staleness(args.file)
    for result in results:
        print(result.summary())
    if args.mark:
        changed = mark_stale(results, args.file)
        print(f"marked {len(changed)} section(s): {', '.join(changed) or 'none changed'}")
    return 1 if any(result.problem for result in results) else 0


# --------------------------------------------------------------------------------------------------------------
# In-process method runs scored on held-out target labels
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ScoredRun:
    """One trained model and its held-out score per target (``score`` is mIoU or accuracy, as a fraction)."""

    method: str
    dataset: str
    seed: int
    scores: dict[str, float]
    details: dict[str, dict[str, Any]]
    train_seconds: float
    eval_seconds: float
    reports: list[dict[str, Any]]

    @property
    def seconds(self) -> float:
        """Training plus evaluation wall time."""
        return self.train_seconds + self.eval_seconds


def heldout_score_key(task: str) -> str:
    """The headline key of :func:`raysel.heldout.heldout_scores` for a task."""
    from raysel.store.schema import primary_heldout_column

    return primary_heldout_column(task)


def default_device() -> "Any":
    """CUDA when available (benchmarks report which), else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_method_and_score_heldout(
    method: str, dataset: str, targets: Sequence[str], seed: int, workdir: Path | str, *,
    config_overrides: dict[str, Any] | None = None, data_root: Path | str | None = None,
    source: str | None = None, spec_target: str | None = None, image_size: tuple[int, int] | None = None,
    num_threads: int | None = None, context_class: Callable[..., Any] | None = None, prepare_data: bool = True,
    cache_dir: Path | str | None = None,
) -> ScoredRun:
    """Train ``method`` in-process (LocalSession, fresh cache and output folders under ``workdir``), then score
    the returned model on the held-out split of every domain in ``targets``.

    ``spec_target`` is the target the run is trained for (default: the first of ``targets``); ``source`` the
    source domain (default: the family's). ``context_class`` replaces :class:`RunContext` (e.g. an oracle
    context that trains on labelled target data). The stage cache lives in ``workdir`` so nothing is reused
    from earlier runs and the measured training time is real. ``prepare_data=False`` skips
    :func:`raysel.data.prepare` (the caller prepared the data once and must not regenerate it mid-benchmark).
    ``cache_dir`` shares one stage cache between runs (stages built beforehand with :func:`build_shared_stages`,
    so the measured time is one sweep configuration's); default: a fresh cache in ``workdir``.
    """
    from raysel import data
    from raysel.execution import run_local
    from raysel.heldout import heldout_scores
    from raysel.methods.base import RunContext, RunSpec

    family = data.get_family(dataset)
    root = Path(data_root) if data_root is not None else data.default_data_root()
    if prepare_data:
        data.prepare(family, root)
    workdir = Path(workdir)
    spec = RunSpec(method=method, dataset=family.name, data_root=str(root), source=source,
                   target=spec_target or targets[0], image_size=image_size, seed=seed,
                   output_dir=str(workdir / "output"), cache_dir=str(cache_dir or workdir / "cache"),
                   num_threads=num_threads)
    device = default_device()
    run = run_local(method, dict(config_overrides or {}), spec, device=device,
                    checkpoint_root=workdir / "checkpoints", context_class=context_class or RunContext)
    if run.result is None:
        raise RuntimeError(f"{method} run failed: {run.final.get('error')}")
    started = time.perf_counter()
    key = heldout_score_key(family.task)
    details = {target: heldout_scores(run.result.model, family, root, target, device, image_size=image_size)
               for target in targets}
    eval_seconds = time.perf_counter() - started
    return ScoredRun(method=method, dataset=family.name, seed=seed,
                     scores={target: float(result[key]) for target, result in details.items()},
                     details=details, train_seconds=float(run.final["train_time_s"]), eval_seconds=eval_seconds,
                     reports=run.reports)


def build_shared_stages(
    method: str, dataset: str, target: str, seed: int, cache_dir: Path | str, *,
    config_overrides: dict[str, Any] | None = None, data_root: Path | str | None = None,
    image_size: tuple[int, int] | None = None, num_threads: int | None = None,
) -> float:
    """Build the method's hyperparameter-independent stages (``Method.prepare_shared``: source model, HIAST warm-up)
    into ``cache_dir`` for one target and seed, in-process, as a sweep does before its trials; returns the seconds
    taken (about 0 when they were cached already). Runs that later use ``cache_dir`` then time one configuration."""
    from raysel import data
    from raysel.hyperparameters import config_from_dict
    from raysel.methods.base import LocalSession, RunContext, RunSpec
    from raysel.registry import get_method

    registered = get_method(method)
    if registered.prepare_shared is None:
        return 0.0
    started = time.perf_counter()
    config = config_from_dict(registered.config_class, dict(config_overrides or {}), context=f"{method} overrides")
    root = Path(data_root) if data_root is not None else data.default_data_root()
    with tempfile.TemporaryDirectory(prefix="raysel-shared-") as scratch:
        spec = RunSpec(method=method, dataset=dataset, data_root=str(root), target=target, image_size=image_size,
                       seed=seed, output_dir=scratch, cache_dir=str(cache_dir), num_threads=num_threads)
        session = LocalSession(checkpoint_root=scratch, device=default_device())
        registered.prepare_shared(config, RunContext(spec, session))
    return time.perf_counter() - started


def config_defaults(method: str) -> dict[str, Any]:
    """The registered method's config-dataclass defaults as a dict (the configuration the paper/raysel ships)."""
    from raysel.registry import get_method

    return dataclasses.asdict(get_method(method).config_class())


def working_directory(path: Path | str | None, prefix: str) -> contextlib.AbstractContextManager[str]:
    """``path`` (created, kept afterwards) or a temporary folder named ``<prefix>...`` removed afterwards."""
    if path is None:
        return tempfile.TemporaryDirectory(prefix=prefix)
    Path(path).mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(str(path))


def prepare_benchmark_data(families: Sequence[str], data_root: Path | str | None = None, *,
                           tiny_into: Path | None = None) -> Path:
    """The data root with every family prepared once (raysel's default root unless ``data_root``); with
    ``tiny_into``: both embedded families generated at test size in that folder (smoke runs; the numbers mean
    nothing)."""
    from raysel import data

    if tiny_into is not None:
        from raysel.data.digits import DigitsConfig, prepare_digits
        from raysel.data.street_scenes import StreetScenesConfig, prepare_street_scenes

        prepare_street_scenes(tiny_into, StreetScenesConfig.small())
        prepare_digits(tiny_into, DigitsConfig.small())
        return tiny_into
    root = Path(data_root) if data_root is not None else data.default_data_root()
    for family in families:
        data.prepare(data.get_family(family), root)
    return root


def run_in_processes(function: Callable[[Any], Any], jobs: Sequence[Any], parallel: int) -> Iterator[Any]:
    """Yield ``function(job)`` results: in order in this process, or as they complete in ``parallel`` spawned
    processes (spawn, so each run starts with a clean torch and its own thread setting)."""
    if parallel <= 1:
        yield from map(function, jobs)
        return
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=parallel, mp_context=context) as pool:
        for future in concurrent.futures.as_completed([pool.submit(function, job) for job in jobs]):
            yield future.result()


# --------------------------------------------------------------------------------------------------------------
# Sweep campaigns: plans of real raysel sweeps, run as one study (raysel.orchestration.studies)
# --------------------------------------------------------------------------------------------------------------


# Street-scene training budgets per method (selection_quality's --budget; selection_wide's street sweeps).
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {"hiast": {}, "t2sda": {}, "sfda": {}},
    "reduced": {"hiast": {"rounds": 1, "iterations_per_round": 120, "reports_per_round": 1},
                "t2sda": {"iterations": 80}, "sfda": {"iterations": 100}},
    # "short": what fits a 2-core machine in under an hour (148 HIAST trials); hyperparameters still act within it.
    "short": {"hiast": {"rounds": 1, "iterations_per_round": 60, "reports_per_round": 1},
              "t2sda": {"iterations": 60}, "sfda": {"iterations": 60}},
    "quick": {"hiast": {"rounds": 1, "iterations_per_round": 4, "reports_per_round": 1, "warmup_iterations": 4,
                        "source_iterations": 8},
              "t2sda": {"iterations": 4, "report_interval": 2, "warmup_iterations": 1, "source_iterations": 8},
              "sfda": {"iterations": 4, "reports": 1, "source_iterations": 8}},
}
# HIAST Table 8's hyperparameters: a sweep of one of these kinds varies only that one (one-at-a-time).
HIAST_PARAMS = ("alpha", "gamma", "k", "lambda_i", "lambda_cst")
DEFAULT_KIND = "default"  # a one-configuration sweep of the default configuration (nothing to select)


@dataclass(frozen=True)
class SweepPlan:
    """One sweep of a campaign: its id, its :class:`raysel.request.SweepOptions` fields (a study entry:
    :meth:`entry`), and what the benchmark's tables need to know of it."""

    method: str
    seed: int
    kind: str  # a HIAST hyperparameter (one-at-a-time), "random", "space" (the method's YAML) or "default"
    sweep_id: str
    options: dict[str, Any]  # SweepOptions fields but name and results (the study's): --set texts are ``overrides``
    expected_trials: int
    swept: tuple[str, ...]  # the hyperparameters that define "the default configuration" for this method
    targets: tuple[str, ...]
    num_samples: int = 1
    # budget settings that replace the method's defaults in "the default configuration" (e.g. a shorter training)
    default_overrides: tuple[tuple[str, Any], ...] = ()

    def entry(self) -> dict[str, Any]:
        """The plan as a study entry: ``name`` (the sweep id) and its sweep options."""
        return {"name": self.sweep_id, **self.options}


def plan_defaults(plan: SweepPlan) -> dict[str, Any]:
    """The default configuration of a plan: the method's defaults with the plan's budget overrides."""
    return {**config_defaults(plan.method), **dict(plan.default_overrides)}


def space_swept_names(method: str) -> tuple[str, ...]:
    """The hyperparameters the method's default search-space YAML varies."""
    from raysel.registry import get_method
    from raysel.search_space import load_search_space

    registered = get_method(method)
    return tuple(load_search_space(registered.search_space_path, registered).swept_names())


def yaml_value(value: Any) -> str:
    """A Python scalar or list as the YAML text ``--set`` parses (JSON is valid YAML)."""
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def set_texts(entries: dict[str, str]) -> list[str]:
    """``key=value`` texts in order: a study entry's ``overrides`` (``--set`` on the command line)."""
    return [f"{name}={text}" for name, text in entries.items()]


# Where a campaign's evidence is committed: the rows of its finished sweeps, one Parquet file per section.
ROWS_FOLDER = REPO / "benchmarks" / "results"
PARTIAL_PREFIX = "**partial: "


def rows_path(section: str) -> Path:
    """``benchmarks/results/<section>.parquet``: the committed rows of a section's finished sweeps."""
    return ROWS_FOLDER / f"{section}.parquet"


def add_campaign_arguments(parser: argparse.ArgumentParser, section_of: str) -> None:
    """``--max-minutes`` and ``--rows``, as every sweep campaign takes them (``section_of`` names the rows file in the
    help: ``selection_wide`` or ``selection_wide[.BUDGET]``)."""
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop between trials after N minutes (running trials finish); the finished sweeps make a "
                        "section headed 'partial: k of n sweeps', and the same command continues")
    parser.add_argument("--rows", type=Path, default=None,
                        help="a rows file of finished sweeps (raysel's study export): those sweeps are imported, not "
                        f"run (default: benchmarks/results/{section_of}.parquet when it exists)")


def rows_problem(path: Path) -> str | None:
    """Why ``path`` is no rows file a campaign can import (missing, a folder, not a raysel study rows Parquet), in one
    line; None when it is one."""
    from raysel.errors import UserError
    from raysel.orchestration.study_rows import read_study_rows

    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    try:
        read_study_rows(path)  # the reader the study uses, so whatever it rejects is rejected here, before any work
    except UserError as error:
        return " ".join(str(error).split())
    return None


def check_rows_argument(rows: Path | None) -> None:
    """Stop with exit status 2 and one line naming ``--rows`` and its problem when the given rows file is unusable:
    before any sweep starts, not as a traceback from inside the study."""
    from raysel.errors import EXIT_USER_ERROR

    problem = None if rows is None else rows_problem(rows)
    if problem:
        print(f"error: --rows {rows}: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def campaign_study(name: str, results: Path, plans: Sequence[SweepPlan], rows: Path | None = None) -> Any:
    """The campaign as a checked :class:`raysel.orchestration.studies.Study` (every entry through ``build_request``):
    one sweep per plan, in order, in ``results``; ``rows`` imports the finished sweeps a rows file holds."""
    from raysel.orchestration.studies import study_from_mapping

    mapping: dict[str, Any] = {"name": name, "results": str(results), "sweeps": [plan.entry() for plan in plans]}
    if rows is not None:
        mapping["rows"] = str(rows)
    return study_from_mapping(mapping)


def default_rows(section: str, given: Path | None) -> Path | None:
    """The rows file a run imports: ``--rows``, else the section's committed file when it exists."""
    if given is not None:
        return given
    path = rows_path(section)
    return path if path.is_file() else None


def needs_ray(study: Any) -> bool:
    """Whether running the study trains anything: a sweep neither finished in its results folder nor importable from
    its rows file (one the folder lacks)."""
    from raysel.orchestration.study_rows import read_study_rows
    from raysel.study_state import study_state

    exported = {sweep.sweep_id for sweep in read_study_rows(study.rows).sweeps} if study.rows else set()
    return any(not sweep.finished and (sweep.started or sweep.stored or sweep.sweep_id not in exported)
               for sweep in study_state(study.plan()).sweeps)


def run_campaign(study: Any, cpus: int, *, max_minutes: float | None = None, command: str | None = None) -> Any:
    """Run the study (:func:`raysel.orchestration.studies.run_study`): finished sweeps reused, rows imported,
    interrupted ones resumed, the rest run in order on one local Ray of ``cpus`` CPUs, started only when something
    trains (or the caller's Ray); ``max_minutes`` stops it between trials and ``command`` is what it prints to
    continue. Returns the :class:`~raysel.orchestration.studies.StudyOutcome`."""
    import ray

    from raysel.orchestration.studies import run_study

    temp_dir = start_ray(cpus) if needs_ray(study) and not ray.is_initialized() else None
    try:
        return run_study(study, max_minutes=max_minutes, continue_command=command)
    finally:
        if temp_dir is not None:
            stop_ray(temp_dir)


def finished_plans(plans: Sequence[SweepPlan], outcome: Any) -> list[SweepPlan]:
    """The plans whose sweeps have finished (what a section is written from)."""
    done = {sweep.sweep_id for sweep in outcome.state.sweeps if sweep.finished}
    return [plan for plan in plans if plan.sweep_id in done]


def partial_note(finished: int, total: int) -> str | None:
    """The line under a partial section's heading (None once every sweep has finished)."""
    if finished >= total:
        return None
    return (f"{partial_line(finished, total, 'sweeps')} finished; rerunning the same command continues the rest "
            "(the tables below hold the finished sweeps only).")


def export_campaign(study: Any, path: Path) -> str | None:
    """Write the rows of the study's finished sweeps to ``path`` (:func:`raysel.orchestration.studies.
    export_study_rows`); returns its summary line, None when no sweep has finished."""
    from raysel.orchestration.studies import export_study_rows
    from raysel.study_state import study_state

    if not any(sweep.finished for sweep in study_state(study.plan()).sweeps):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_study_rows(study, path).line()


def start_ray(cpus: int) -> str:
    """One local Ray for the whole benchmark (explicit CPUs, capped object store, our own temp dir)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    temp_dir = tempfile.mkdtemp(prefix="rs-sq-", dir="/tmp")
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=512 * 1024 * 1024, _temp_dir=temp_dir)
    return temp_dir


def stop_ray(temp_dir: str) -> None:
    """Shut down the Ray this script started (only that one) and remove its temp dir."""
    import ray

    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# Campaign evaluation: every sweep re-scored offline, compared with held-out scores
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SweepCase:
    """One sweep on one target: candidates' held-out mIoU (evaluation only) and every selector's evaluation.

    ``evaluations[name]`` holds ``regret`` and ``top3_regret`` (mIoU points), ``gap_closed``, ``kendall_tau``,
    ``spearman_rho`` and ``selected_trial_id``. ``values`` is the swept hyperparameter's value per candidate (one-at-
    a-time sweeps only). ``default_heldout`` is the default configuration's held-out mIoU (this sweep's trial, else
    the reference from the method's other sweeps), None when unknown. ``decision_picks`` names the trials of the
    sweep's headline and guarded decisions (``raysel.selection.decision_picks``).
    """

    method: str
    seed: int
    target: str
    kind: str
    sweep_id: str
    trial_ids: list[str]
    heldout: list[float]
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    values: list[Any] = field(default_factory=list)
    default_heldout: float | None = None
    default_in_sweep: bool = False
    # the sweep's own decisions on this target: the headline pick and the guarded decision's trial (decision_picks)
    decision_picks: dict[str, str] = field(default_factory=dict)

    def all_evaluations(self) -> dict[str, dict[str, Any]]:
        """The selectors' evaluations plus the two baselines."""
        from raysel.selection import baseline_evaluations

        return {**self.evaluations, **baseline_evaluations(self.heldout, self.default_heldout)}

    def value_of(self, trial_id: str | None) -> Any:
        """The swept value of one candidate (None when unknown)."""
        if trial_id is None or not self.values or trial_id not in self.trial_ids:
            return None
        return self.values[self.trial_ids.index(trial_id)]

    def best_trial_id(self) -> str:
        """The candidate with the highest held-out mIoU (the oracle's pick)."""
        return self.trial_ids[int(np.argmax(self.heldout))]


def finished_trials(results: Path, name: str) -> Any:
    """The sweep's finished trials with a held-out score, copied into column ``heldout`` (mIoU, or accuracy for
    classification); a pandas DataFrame, possibly empty."""
    from raysel.store import ResultStore
    from raysel.store.schema import heldout_column_with_values

    trials = ResultStore(results).load_sweep(name)
    column = None if trials.empty else heldout_column_with_values(trials)
    if column is None:
        return trials.iloc[0:0]
    trials = trials.assign(heldout=trials[column])
    keep = (trials["status"] == "finished") & trials["heldout"].notna()
    return trials[keep].sort_values("trial_id")


def rescore(results: Path, name: str, default_trials: dict[str, str] | None = None
            ) -> dict[tuple[str, str], dict[str, Any]]:
    """Re-score a finished sweep with every selector that applies, as ``python -m raysel.select`` does; decisions by
    (target, selector). Selectors that cannot run are skipped with the reason printed. ``default_trials`` (target ->
    the default configuration's trial) is what the guarded decision keeps when it is not confident."""
    from raysel.selection import recorded_selectors, select_sweep
    from raysel.store import ResultStore

    printed = io.StringIO()
    decisions = select_sweep(ResultStore(results), name, selectors=recorded_selectors(), stream=printed,
                             default_trials=default_trials or {})
    for line in printed.getvalue().splitlines():
        print(f"  {name}: {line}", flush=True)
    return {(decision["target"], decision["selector"]): decision for decision in decisions}


def default_heldouts(frames: dict[str, Any], plans: Sequence[SweepPlan]) -> dict[tuple[str, int, str], list[float]]:
    """Held-out mIoU of every default-configuration trial, per (method, seed, target), over all sweeps."""
    from raysel.selection import matches_defaults

    collected: dict[tuple[str, int, str], list[float]] = {}
    for plan in plans:
        frame = frames.get(plan.sweep_id)
        if frame is None or frame.empty:
            continue
        chosen = frame[matches_defaults(frame, plan_defaults(plan), plan.swept)]
        for target, heldout in zip(chosen["target"], chosen["heldout"]):
            collected.setdefault((plan.method, plan.seed, str(target)), []).append(float(heldout))
    return collected


def build_cases(plan: SweepPlan, frame: Any, decisions: dict[tuple[str, str], dict[str, Any]],
                references: dict[tuple[str, int, str], float]) -> list[SweepCase]:
    """One case per target of a sweep, with every selector's evaluation and the default configuration's score."""
    from raysel.selection import decision_picks, matches_defaults, stored_evaluation

    cases = []
    defaults = plan_defaults(plan)
    for target, group in frame.groupby("target", sort=True):
        if len(group) < 2:
            continue
        case = SweepCase(plan.method, plan.seed, str(target), plan.kind, plan.sweep_id, list(group["trial_id"]),
                         [float(v) for v in group["heldout"]])
        if plan.kind in HIAST_PARAMS:
            case.values = list(group[f"hp_{plan.kind}"])
        own = group[matches_defaults(group, defaults, plan.swept)]
        case.default_in_sweep = not own.empty
        case.default_heldout = (float(own["heldout"].mean()) if not own.empty
                                else references.get((plan.method, plan.seed, str(target))))
        for (decision_target, selector), decision in decisions.items():
            if decision_target == target and decision.get("heldout_regret") is not None:
                case.evaluations[selector] = stored_evaluation(decision)
            if decision_target == target and decision.get("headline"):
                case.decision_picks = decision_picks(decision)
        cases.append(case)
    return cases


def plan_default_trials(plan: SweepPlan, frame: Any) -> dict[str, str]:
    """target -> the sweep's default-configuration trial under the plan's defaults (its budget included), the one
    the benchmark's default-configuration baseline also reads."""
    from raysel.selection import default_trial_ids

    return default_trial_ids(frame, plan_defaults(plan), plan.swept)


def has_prediction_caches(frame: Any) -> bool:
    """Whether a sweep's finished trials have their prediction caches on this machine (an imported sweep has none)."""
    if frame.empty or "predictions_path" not in frame:
        return False
    return any(isinstance(path, str) and Path(path).is_file() for path in frame["predictions_path"])


def stored_decisions(results: Path, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The latest stored decision per (target, selector) of a sweep: what the last re-scoring (:func:`rescore`)
    wrote, read back where the prediction caches are gone (a sweep imported from a rows file)."""
    from raysel.selection import recorded_selectors
    from raysel.store import ResultStore

    rows = ResultStore(results).load("selections", sweep_id=name)
    if rows.empty:
        return {}
    rows = rows.sort_values("created_at", kind="stable") if "created_at" in rows else rows
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in rows.to_dict("records"):
        clean = {key: None if isinstance(value, float) and math.isnan(value) else value
                 for key, value in record.items()}
        latest[(str(clean["target"]), str(clean["selector"]))] = clean
    order = {name: index for index, name in enumerate(recorded_selectors())}  # rescore's order
    return dict(sorted(latest.items(), key=lambda item: (item[0][0], order.get(item[0][1], len(order)))))


def sweep_decisions(results: Path, plan: SweepPlan, frame: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Every applicable selector's decision on a sweep: re-scored (:func:`rescore`) where its prediction caches are
    on disk, else the decisions its rows file brought (exported after a re-scoring)."""
    if has_prediction_caches(frame):
        return rescore(results, plan.sweep_id, plan_default_trials(plan, frame))
    return stored_decisions(results, plan.sweep_id)


def evaluate_plans(plans: Sequence[SweepPlan], results: Path) -> tuple[list[SweepCase], list[str], dict[str, Any]]:
    """Re-score every sweep with every applicable selector (an imported sweep: its stored decisions); returns the
    cases, the selectors and the trial frames."""
    frames = {plan.sweep_id: finished_trials(results, plan.sweep_id) for plan in plans
              if (results / "sweeps" / plan.sweep_id).exists()}
    references = {key: float(np.mean(values)) for key, values in default_heldouts(frames, plans).items()}
    cases: list[SweepCase] = []
    used: list[str] = []
    for plan in plans:
        frame = frames.get(plan.sweep_id)
        if plan.kind == DEFAULT_KIND or frame is None or frame.empty:
            continue
        decisions = sweep_decisions(results, plan, frame)
        used += [selector for _, selector in decisions if selector not in used]
        cases += build_cases(plan, frame, decisions, references)
    return cases, used, frames


# --------------------------------------------------------------------------------------------------------------
# Campaign tables
# --------------------------------------------------------------------------------------------------------------


def row_by_name(rows: Sequence[SelectorSummary], name: str | None) -> SelectorSummary | None:
    """The summary row of ``name`` (None when absent)."""
    return next((row for row in rows if row.name == name), None)


def regret_of(case: SweepCase, name: str | None) -> float:
    """One case's regret for a selector or baseline (NaN when absent)."""
    evaluation = case.all_evaluations().get(name or "")
    return math.nan if evaluation is None else float(evaluation["regret"])


def fmt(value: float | None, digits: int = 2) -> str:
    """A number with ``digits`` decimals, or an em dash for NaN/None."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}"


def selector_cell(row: SelectorSummary, best: str | None) -> str:
    """A table row's name: the best selector in bold, baselines in italics."""
    from raysel.selection import BASELINES

    return f"**{row.name}**" if row.name == best else (f"*{row.name}*" if row.name in BASELINES else row.name)


def worse_cell(row: SelectorSummary) -> str:
    """``n/m`` sweeps worse than the default configuration, or ``—`` for baselines that are not compared."""
    return "—" if row.worse_than_default is None else worse_text(row)


def worse_text(row: SelectorSummary) -> str:
    """``n/m`` sweeps in which a selector did worse than the default configuration."""
    return f"{row.worse_than_default}/{row.compared_with_default}"


def trial_facts(frames: dict[str, Any], plans: Sequence[SweepPlan], results: Path) -> tuple[int, int, dict[str, float]]:
    """Finished and failed trial counts, and the mean wall seconds of a finished trial per method."""
    from raysel.store import ResultStore

    store = ResultStore(results)
    finished, failed, seconds = 0, 0, {}
    for method in dict.fromkeys(plan.method for plan in plans):
        times = []
        for plan in (p for p in plans if p.method == method and (results / "sweeps" / p.sweep_id).exists()):
            trials = store.load_sweep(plan.sweep_id)
            finished += int((trials["status"] == "finished").sum()) if not trials.empty else 0
            failed += int((trials["status"] != "finished").sum()) if not trials.empty else 0
            if not trials.empty:
                times += list(trials.loc[trials["status"] == "finished", "wall_time_s"].dropna())
        if times:
            seconds[method] = float(np.mean(times))
    return finished, failed, seconds


# --------------------------------------------------------------------------------------------------------------
# Generated data and synthetic predictions
# --------------------------------------------------------------------------------------------------------------


def data_identity(folder: Path) -> str:
    """What identifies the generated data: the generation marker (generator, version, config) and its time."""
    from raysel.data.generation import MARKER

    marker = folder / MARKER
    if not marker.exists():  # a real (downloaded) dataset: no marker
        return f"{folder} (not generated)"
    content = json.loads(marker.read_text())
    stamp = dt.datetime.fromtimestamp(marker.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    return f"{content.get('generator', folder.name)} generator version {content.get('version')}, generated {stamp}"


# Rough Cityscapes class frequencies (road, building, vegetation, car, sky dominate).
CLASS_WEIGHTS = np.array([37, 6, 22, 1, 1, 1.5, .2, .6, 16, 1, 3.5, 1.2, .2, 6.5, .3, .3, .2, .1, .4])


class SyntheticSweep:
    """Lazily generated ``[n, H, W]`` uint8 label stacks of a simulated sweep (voting_speed, gpu_throughput).

    Like a sweep's predictions: a piecewise-constant scene, candidates of increasing skill that err on a shared
    "hard" region (correlated errors) plus a little independent noise; :meth:`worst_case` has no agreement at all.
    """

    def __init__(self, num_candidates: int, height: int, width: int, num_classes: int, seed: int) -> None:
        self.num_candidates, self.height, self.width, self.num_classes = num_candidates, height, width, num_classes
        self.rng = np.random.default_rng(seed)
        weights = np.resize(CLASS_WEIGHTS, num_classes)
        self.class_probabilities = weights / weights.sum()
        # Candidate skill: the fraction of the "hard" region each candidate gets right, spread over the sweep.
        self.skills = np.linspace(0.78, 0.96, num_candidates)
        self._scenes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # candidate_image's per-image scenes

    def _upsample(self, blocks: np.ndarray, factor: int) -> np.ndarray:
        full = blocks.repeat(factor, axis=0).repeat(factor, axis=1)
        return np.ascontiguousarray(full[: self.height, : self.width])

    def realistic(self) -> np.ndarray:
        """One image: scene blocks of 32 px, errors on 8-px blocks (shared difficulty + 2 % independent noise)."""
        rng, block = self.rng, 8
        coarse = (-(-self.height // 32), -(-self.width // 32))
        fine = (-(-self.height // block), -(-self.width // block))
        truth = rng.choice(self.num_classes, size=coarse, p=self.class_probabilities).astype(np.uint8)
        truth = truth.repeat(32 // block, axis=0).repeat(32 // block, axis=1)[: fine[0], : fine[1]]
        wrong = ((truth.astype(np.int64) + rng.integers(1, 4, fine)) % self.num_classes).astype(np.uint8)
        difficulty = rng.random(fine)
        stack = np.empty((self.num_candidates, self.height, self.width), dtype=np.uint8)
        for i, skill in enumerate(self.skills):
            errs = (difficulty > skill) | (rng.random(fine) < 0.02)
            stack[i] = self._upsample(np.where(errs, wrong, truth), block)
        return stack

    def candidate_image(self, image: int, candidate: int, seed: int) -> np.ndarray:
        """Candidate ``candidate``'s labels of image ``image``, like :meth:`realistic` but reproducible per
        (image, candidate), so one candidate's file is written without holding every candidate's labels."""
        block = 8
        if image not in self._scenes:  # the image's scene, shared by every candidate (small: 8-px blocks)
            shared = np.random.default_rng([seed, image])
            coarse = (-(-self.height // 32), -(-self.width // 32))
            fine = (-(-self.height // block), -(-self.width // block))
            truth = shared.choice(self.num_classes, size=coarse, p=self.class_probabilities).astype(np.uint8)
            truth = truth.repeat(32 // block, axis=0).repeat(32 // block, axis=1)[: fine[0], : fine[1]]
            wrong = ((truth.astype(np.int64) + shared.integers(1, 4, fine)) % self.num_classes).astype(np.uint8)
            self._scenes[image] = (truth, wrong, shared.random(fine).astype(np.float32))
        truth, wrong, difficulty = self._scenes[image]
        own = np.random.default_rng([seed, image, candidate + 1])
        errs = (difficulty > self.skills[candidate]) | (own.random(truth.shape, dtype=np.float32) < 0.02)
        return self._upsample(np.where(errs, wrong, truth), block)

    def worst_case(self) -> np.ndarray:
        """One image of independent uniform labels: no agreement for the fast paths to exploit."""
        return self.rng.integers(0, self.num_classes, (self.num_candidates, self.height, self.width), dtype=np.uint8)


# ==============================================================================================================
# CHUNKED BENCHMARKS (hdrq_merge, method_gains, hiast_gain, domain_gap; issue 28 item 2): finished units saved and
# never repeated, time-boxed runs (--max-minutes), partial sections. One block, kept at the end of this module.
# ==============================================================================================================

STOPPED_EXIT = 3  # exit status of a run stopped at its --max-minutes deadline (rerun the same command to go on)
DATA_CHANGED_EXIT = 4  # the data was regenerated during the run: results mix two versions, nothing written
UNITS_SCHEMA = 1  # bumped when a unit's saved result changes shape: older units are then not reused
EVIDENCE_DIR = REPO / "benchmarks" / "results"  # committed: finished units that outlive the machine


def partial_line(done: int, total: int, what: str) -> str:
    """The line right under a section's heading while it is incomplete, e.g. ``**partial: 3 of 27 units**``."""
    return f"{PARTIAL_PREFIX}{done} of {total} {what}**"


def default_workdir(section: str, quick: bool = False) -> Path:
    """A chunked benchmark's persistent workdir: ``results/<section>`` (``-quick`` for smoke runs) under the repo
    root, git-ignored; stage caches and finished units live there and are reused by the next run."""
    return REPO / "results" / (f"{section}-quick" if quick else section)


def evidence_path(section: str) -> Path:
    """``benchmarks/results/<section>.json``: the finished units of a section, committed with the benchmark."""
    return EVIDENCE_DIR / f"{section}.json"


def data_version(folder: Path | str) -> dict[str, Any]:
    """What determines generated data (generator, version, config; not when it was generated), for unit keys; a
    real (downloaded) dataset: its folder name."""
    from raysel.data.generation import MARKER

    marker = Path(folder) / MARKER
    if not marker.exists():
        return {"dataset": Path(folder).name, "generated": False}
    content = json.loads(marker.read_text())
    return {key: value for key, value in content.items() if key not in ("generated", "seconds")}


def unit_key(fields: dict[str, Any]) -> str:
    """A short hash of everything that determines a unit's result (``fields``: JSON-able, order-free)."""
    import hashlib

    text = json.dumps({"schema": UNITS_SCHEMA, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(value, indent=1, sort_keys=True, default=str) + "\n")


@dataclass(frozen=True)
class UnitStore:
    """Finished units of one benchmark section: ``<folder>/<key>.json`` (the workdir's, one file per unit, written
    atomically) and, when ``evidence`` is set, the same units merged into that one committed JSON file (under a
    lock: parallel workers add to it). Lookups read both, so a run on a new machine skips what the evidence holds.
    Picklable (paths only): spawned workers save their own units."""

    folder: Path
    evidence: Path | None = None

    def _evidence_units(self) -> dict[str, Any]:
        if self.evidence is None or not self.evidence.exists():
            return {}
        return json.loads(self.evidence.read_text()).get("units", {})

    def get(self, key: str) -> dict[str, Any] | None:
        """The saved result of a unit (its ``result`` value), None when it is not finished anywhere."""
        path = self.folder / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())["result"]
        record = self._evidence_units().get(key)
        return None if record is None else record["result"]

    def load(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Key -> saved result for those of ``keys`` that are finished."""
        evidence = self._evidence_units()
        found = {}
        for key in keys:
            path = self.folder / f"{key}.json"
            if path.exists():
                found[key] = json.loads(path.read_text())["result"]
            elif key in evidence:
                found[key] = evidence[key]["result"]
        return found

    def ran_here(self, key: str) -> bool:
        """Whether the workdir holds the unit (it ran with this workdir, so the stages it cached are there too), not
        only the evidence file (it ran on another machine)."""
        return (self.folder / f"{key}.json").exists()

    def save(self, key: str, fields: dict[str, Any], result: dict[str, Any]) -> None:
        """Save one finished unit (workdir file, then the evidence file)."""
        record = {"key": key, "fields": fields, "result": result,
                  "saved": dt.datetime.now().isoformat(timespec="seconds")}
        _write_json(self.folder / f"{key}.json", record)
        if self.evidence is not None:
            self.evidence.parent.mkdir(parents=True, exist_ok=True)
            with _locked(self.evidence):
                content = json.loads(self.evidence.read_text()) if self.evidence.exists() else {}
                content.setdefault("units", {})[key] = record
                content["schema"] = UNITS_SCHEMA
                _write_json(self.evidence, content)


@dataclass(frozen=True)
class Deadline:
    """When a time-boxed run stops starting units (``at``: ``time.time()``; None = never). Picklable."""

    at: float | None = None

    @classmethod
    def after_minutes(cls, minutes: float | None) -> "Deadline":
        return cls(None if minutes is None else time.time() + 60 * minutes)

    def passed(self) -> bool:
        return self.at is not None and time.time() >= self.at


def stop_message(done: int, total: int, what: str, pending: Sequence[str], command: str) -> str:
    """What a run stopped at its deadline prints: what is left and the exact command that continues it."""
    listed = "".join(f"\n  - {name}" for name in pending[:40])
    more = f"\n  ... and {len(pending) - 40} more" if len(pending) > 40 else ""
    return (f"stopped at the --max-minutes deadline: {done} of {total} {what} finished, {len(pending)} left:"
            f"{listed}{more}\nContinue with the same command (finished {what} are loaded, not rerun):\n  {command}")


def write_partial_section(name: str, command: str, body_markdown: str, *, done: int, total: int, what: str,
                          path: Path | str | None = None, load: tuple[float | None, float | None] | None = None
                          ) -> str:
    """:func:`write_section`, with :func:`partial_line` as its note right under the heading while ``done < total``."""
    note = partial_line(done, total, what) if done < total else None
    return write_section(name, command, body_markdown, path=path, load=load, note=note)


@dataclass(frozen=True)
class UnitTask:
    """One unit to run, in this process or a spawned worker (:func:`run_unit_task`): ``function(job)`` gives the
    unit's JSON-able result, saved under ``key`` when ``save`` (False: a finished unit run again only to rebuild
    the cached stages a pending unit needs, its saved result kept). Picklable: ``function`` is a module-level one."""

    function: Callable[[Any], dict[str, Any]]
    job: Any
    key: str
    fields: dict[str, Any]
    store: UnitStore
    deadline: Deadline
    save: bool = True


def run_unit_task(task: UnitTask) -> tuple[UnitTask, dict[str, Any] | None]:
    """Run one task and save its result (when ``task.save``); no result when the deadline had passed: a run stops
    between units, never inside one."""
    if task.deadline.passed():
        return task, None
    result = task.function(task.job)
    if task.save:
        task.store.save(task.key, task.fields, result)
    return task, result


def run_unit_phases(phases: Sequence[Sequence[UnitTask]], parallel: int,
                    progress: Callable[[UnitTask, dict[str, Any]], str],
                    title: Callable[[int, Sequence[UnitTask]], str | None] = lambda index, tasks: None) -> int:
    """Run the phases' tasks one phase after another, each in ``parallel`` spawned processes (so no two runs build
    one cached stage at once: a later phase finds it built), printing ``title(index, tasks)`` as a phase starts and
    ``progress(task, result)`` as a unit finishes; tasks after the deadline do nothing. Returns how many units were
    run and saved (a rebuild is not counted)."""
    ran = 0
    for index, tasks in enumerate(phases):
        if not tasks:
            continue
        heading = title(index, tasks)
        if heading:
            print(heading, flush=True)
        for task, result in run_in_processes(run_unit_task, tasks, parallel):
            if result is not None:
                print(progress(task, result) + ("" if task.save else " (cached stages rebuilt)"), flush=True)
                ran += task.save
    return ran


def pending_lines(pending: Sequence[str], what: str) -> list[str]:
    """The paragraph of a partial section that lists its pending ``what`` (unit, run), whose cells read "-"."""
    if not pending:
        return []
    return [f"Pending ({len(pending)} {what}(s); their cells read \"-\", rerun the command above to continue): "
            + "; ".join(pending) + ".", ""]


def add_chunk_arguments(parser: argparse.ArgumentParser, section: str, what: str, keeps: str) -> None:
    """``--workdir``, ``--evidence`` and ``--max-minutes``, as every chunked benchmark takes them (``what``: its unit,
    singular; ``keeps``: what else its workdir holds); :func:`resolve_chunk_arguments` fills in their defaults."""
    parser.add_argument("--workdir", type=Path, default=None,
                        help=f"{keeps} and finished {what}s, kept and reused (default: results/{section} under the "
                             f"repo root, git-ignored; --quick: results/{section}-quick)")
    parser.add_argument("--evidence", type=Path, default=None,
                        help=f"committed JSON of the finished {what}s, read and updated (default: "
                             f"benchmarks/results/{section}.json; not with --quick or --no-write)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help=f"start no {what} after this many minutes (a started one finishes); the section is "
                             f"written as partial, the same command continues (exit status {STOPPED_EXIT})")


def resolve_chunk_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, section: str,
                            writes: bool) -> None:
    """Check ``--max-minutes`` and fill in the defaults of :func:`add_chunk_arguments`' options: the section's
    persistent workdir (a separate one for --quick) and, when the run ``writes`` its section, its evidence file."""
    if args.max_minutes is not None and args.max_minutes < 0:
        parser.error("--max-minutes must be >= 0")
    args.workdir = args.workdir or default_workdir(section, args.quick)
    if args.evidence is None and writes:
        args.evidence = evidence_path(section)


def finish_chunked_run(section: str, command: str, body_markdown: str, *, done: int, total: int,
                       pending: Sequence[str], ran: int, loaded: int, store: UnitStore, output: Path | None,
                       what: str = "units", complete_status: int = 0) -> int:
    """The end of every chunked benchmark's ``main``: write the section from the finished units (headed
    :func:`partial_line` while units are pending; nothing written when ``output`` is None: --quick, --no-write),
    say how many units ran now and how many were loaded, and while units are pending print what is left and the
    command that continues (:func:`stop_message`). Returns :data:`STOPPED_EXIT` while units are pending, else
    ``complete_status`` (the benchmark's own verdict)."""
    if output is not None:
        write_partial_section(section, command, body_markdown, done=done, total=total, what=what, path=output)
        state = f" (partial: {done} of {total} {what})" if pending else ""
        print(f"wrote the '## {section}' section of {output}{state}")
    print(f"{ran} {what} run now, {loaded} loaded; finished {what} in {store.folder}"
          + (f" and {store.evidence}" if store.evidence else ""))
    if pending:
        print(stop_message(done, total, what, pending, command), flush=True)
        return STOPPED_EXIT
    return complete_status


# ==============================================================================================================
# END OF THE CHUNKED-BENCHMARKS BLOCK
# ==============================================================================================================


def main(argv: Sequence[str] | None = None) -> int:
    """This module's command line; ``stale`` (:func:`stale_command`) is its one command."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] != ["stale"]:
        print("usage: python -m benchmarks._common stale [--mark] [--file PATH]", file=sys.stderr)
        return 2
    return stale_command(arguments[1:])


if __name__ == "__main__":
    sys.exit(main())
