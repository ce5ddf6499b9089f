"""Helpers shared by the benchmark scripts: machine description, BENCHMARKS.md sections, in-process method runs.

* :func:`machine_description` — cores, CPU model, GPU or not, torch version (what a reader needs to compare runs).
* :func:`write_section` — replace (or append) one ``## <name>`` section of ``BENCHMARKS.md`` at the repo root,
  with the command, date and machine, atomically (temp file + ``os.replace``) and under a file lock, so
  concurrent benchmarks never lose each other's sections; :func:`replace_section` does the same for a section
  text the caller formatted itself.
* :func:`run_method_and_score_heldout` — train a registered method in-process (``LocalSession``) and score the
  returned model on the held-out labels of one or more target domains. Held-out labels are read here only
  through :func:`raysel.heldout.heldout_scores` (benchmark/evaluation code, never a method);
  :func:`build_shared_stages` builds a method's cached stages first, as a sweep does, so runs time one configuration.
* :func:`run_in_processes`, :func:`working_directory`, :func:`prepare_benchmark_data` — job pools, scratch folders
  and data for the scripts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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
# BENCHMARKS.md sections
# --------------------------------------------------------------------------------------------------------------


def _section_pattern(name: str) -> re.Pattern[str]:
    """The ``## <name>`` heading line (exact name) and everything up to the next ``## `` heading or the end."""
    return re.compile(rf"^## {re.escape(name)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)


def format_section(name: str, command: str, body_markdown: str, *, date: str | None = None,
                   machine: str | None = None) -> str:
    """The section text: heading, command, date, machine, then the body (ending with a newline)."""
    lines = [
        f"## {name}",
        "",
        f"Command: `{command}`  ",
        f"Date: {date or dt.date.today().isoformat()}  ",
        f"Machine: {machine or machine_description()}",
        "",
        body_markdown.strip("\n"),
    ]
    return "\n".join(lines) + "\n"


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
    or append it; other sections are untouched. Atomic (temp file + ``os.replace``) and under a lock."""
    _check_section_name(name)
    section = section.strip("\n") + "\n"
    if not section.startswith(f"## {name}\n"):
        raise ValueError(f"section must start with the heading line '## {name}'")
    if re.search(r"^## ", section[len(name) + 4:], re.M):
        raise ValueError("a section must not contain another level-2 '## ' heading (use '###')")
    path = Path(path) if path is not None else BENCHMARKS_PATH
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
                  date: str | None = None, machine: str | None = None) -> str:
    """Replace the ``## <name>`` section of BENCHMARKS.md (or append it), leaving every other section untouched.

    The section holds the command, the date (today unless given), the machine (:func:`machine_description`
    unless given) and ``body_markdown``. The file is rewritten atomically under a lock (:func:`replace_section`).
    The body may use ``###`` sub-headings but no ``## `` line, which would split the section. Returns the
    section text written.
    """
    _check_section_name(name)
    if re.search(r"^## ", body_markdown, re.M):
        raise ValueError("body_markdown must not contain a level-2 '## ' heading (use '###')")
    section = format_section(name, command, body_markdown, date=date, machine=machine)
    replace_section(name, section, path=path)
    return section


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
    from raysel.store_schema import primary_heldout_column

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
    """The registered method's default hyperparameters as a dict (for documenting a run)."""
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
