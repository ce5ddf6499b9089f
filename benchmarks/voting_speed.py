"""Speed of raysel's fused vote + F-mIoU accumulation against scipy.stats.mode and against a plain memory copy.

Measures model-pixels per second (candidates × pixels processed per second) of
:class:`raysel.selection.voting.FusedVoteAccumulator` on a stream of synthetic candidate label maps, one image at
a time (the image's ``[n, H, W]`` uint8 stack is generated lazily and not timed, so memory stays O(n × image)):

* **raysel**: ``accumulator.update(stack)`` — majority vote (ties → lowest id) and every candidate's confusion
  counts against it, i.e. everything F-mIoU needs;
* **reference**: the straightforward implementation, ``scipy.stats.mode(stack, axis=0)`` plus
  :class:`raysel.metrics.ConfusionMatrix` updates per candidate. It is slow, so it runs on the first
  ``--reference-images`` images only and its rate is extrapolated per pixel (the work is linear in pixels);
  its outputs are checked to equal raysel's exactly;
* **memcpy**: ``np.copyto`` of the same stack bytes into a preallocated buffer (the speed-of-light baseline for
  touching the data once).

Synthetic predictions look like a sweep: a piecewise-constant scene, candidates of increasing skill that err on a
shared "hard" region (correlated errors) plus a little independent noise. A worst case with independent uniform
labels (no agreement to exploit) is timed on ``--worst-case-images`` images.

    python -m benchmarks.voting_speed                       # full size: 10 candidates, 500 images of 512x1024
    python -m benchmarks.voting_speed --images 20 --height 128 --width 256 --no-write   # quick run
    python -m benchmarks.voting_speed --paper-scale --paper-images 50,100,200   # 40 candidates' files, peak RSS

Writes the ``## voting_speed`` section of BENCHMARKS.md (``## voting_speed.paper_scale`` with ``--paper-scale``),
replacing an existing one, unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.stats

from benchmarks._common import SyntheticSweep, cpu_model, gpu_description, load_text, replace_section
from raysel.metrics import ConfusionMatrix
from raysel.selection import (CandidatePredictions, FusedVoteAccumulator, get_selector, load_predictions, pixel_runs,
                              save_predictions)

REPO = Path(__file__).resolve().parent.parent
SECTION = "voting_speed"
PAPER_SCALE_SECTION = "voting_speed.paper_scale"
BUSY_LOAD = 1.5  # a 1-minute load average from here up means other jobs shared the 2 cores
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("benchmarks/_common.py", "raysel/selection/voting.py", "raysel/selection/predictions.py",
            "raysel/selection/selectors.py", "raysel/metrics.py")


def reference_update(stack: np.ndarray, matrices: list[ConfusionMatrix]) -> np.ndarray:
    """The straightforward implementation: scipy's mode (ties → smallest value) and metrics' confusion matrices."""
    fused = scipy.stats.mode(stack, axis=0, keepdims=False).mode
    for candidate, matrix in zip(stack, matrices):
        matrix.update(candidate, fused)
    return fused


class Timer:
    """Per-image wall-clock and CPU (process) times of one implementation."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> "Timer":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu.append(time.process_time() - self._cpu)
        self.wall.append(time.perf_counter() - self._wall)

    def summary(self, model_pixels: int) -> dict:
        """Median CPU and wall time per image and the model-pixel rates they give."""
        cpu, wall = float(np.median(self.cpu)), float(np.median(self.wall))
        return {"images": len(self.cpu), "cpu_ms": 1e3 * cpu, "wall_ms": 1e3 * wall,
                "cpu_rate": model_pixels / max(cpu, 1e-9), "wall_rate": model_pixels / max(wall, 1e-9)}


def run(args: argparse.Namespace) -> dict:
    """Stream the images, time the three implementations per image, and check raysel against the reference."""
    sweep = SyntheticSweep(args.candidates, args.height, args.width, args.classes, args.seed)
    accumulator = FusedVoteAccumulator(args.candidates, args.classes)
    checked = FusedVoteAccumulator(args.candidates, args.classes)
    reference_matrices = [ConfusionMatrix(args.classes) for _ in range(args.candidates)]
    copy_buffer = np.empty((args.candidates, args.height, args.width), dtype=np.uint8)
    timers = {name: Timer() for name in ("raysel", "reference", "memcpy", "worst")}
    unanimous, run_length = [], []
    for k in range(args.images):
        stack = sweep.realistic()
        with timers["raysel"]:
            accumulator.update(stack)
        with timers["memcpy"]:
            np.copyto(copy_buffer, stack)
        if k < args.reference_images:
            with timers["reference"]:
                expected = reference_update(stack, reference_matrices)
            fused = checked.update(stack, return_fused=True)
            if not np.array_equal(fused, expected):
                raise AssertionError(f"image {k}: raysel's fused labels differ from scipy.stats.mode")
            unanimous.append(float((stack == fused).all(axis=0).mean()))
            runs = pixel_runs(stack.reshape(args.candidates, -1), max_fraction=1.0)
            run_length.append(stack[0].size / (runs[0].size if runs else stack[0].size))
    for k, expected in enumerate(reference_matrices):
        if not np.array_equal(checked.confusion_matrices[k], expected.matrix):
            raise AssertionError(f"candidate {k}: raysel's confusion counts differ from raysel.metrics")
    worst = FusedVoteAccumulator(args.candidates, args.classes)
    for _ in range(args.worst_case_images):
        stack = sweep.worst_case()
        with timers["worst"]:
            worst.update(stack)
    model_pixels = args.candidates * args.height * args.width
    return {
        "timing": {name: timer.summary(model_pixels) for name, timer in timers.items() if timer.cpu},
        "raysel_wall_s": float(np.sum(timers["raysel"].wall)), "raysel_cpu_s": float(np.sum(timers["raysel"].cpu)),
        "disagreement": float(1.0 - accumulator.accuracy().mean()),
        "unanimous": float(np.mean(unanimous)), "run_length": float(np.mean(run_length)),
    }


def machine() -> str:
    """Cores, CPU model and GPU (:func:`benchmarks._common.cpu_model`, :func:`~benchmarks._common.gpu_description`;
    the benchmark uses no GPU), with the numpy and scipy versions it runs on."""
    return (f"{os.cpu_count()} cores ({cpu_model()}), {gpu_description()}; numpy {np.__version__}, "
            f"scipy {scipy.__version__}")


def report(args: argparse.Namespace, result: dict, command: str, load: tuple[float, float]) -> str:
    """The markdown section: command, date, machine, table and the two ratios."""
    timing = result["timing"]
    raysel, reference, memcpy = timing["raysel"], timing["reference"], timing["memcpy"]

    def ratios(entry: dict, clock: str) -> str:
        rate = f"{clock}_rate"
        return (f"{entry[rate] / reference[rate]:.0f}x reference, "
                f"{100 * entry[rate] / memcpy[rate]:.1f}% of memcpy")

    rows = [("raysel: fused vote + F-mIoU counts", raysel),
            ("reference: scipy.stats.mode + metrics.ConfusionMatrix", reference),
            ("memcpy: np.copyto of the same bytes", memcpy)]
    if "worst" in timing:
        rows.append(("raysel, worst case: independent uniform labels", timing["worst"]))
    lines = [
        f"## {SECTION}",
        "",
        f"Command: `{command}`  ",
        f"Date: {dt.date.today().isoformat()}  ",
        f"Load average: {load_text(*load)}  ",
        f"Machine: {machine()}{shared_note(max(load))}  ",
        f"Workload: {args.candidates} candidates x {args.images} images of {args.height}x{args.width}, "
        f"{args.classes} classes, streamed one image at a time; mean candidate disagreement with the fused labels "
        f"{100 * result['disagreement']:.1f}%, unanimous pixels {100 * result['unanimous']:.1f}%, mean run length "
        f"{result['run_length']:.1f} px (synthetic sweep, see the script).",
        "",
        "| implementation | images timed | CPU ms / image | model-pixels/s (CPU) | wall ms / image | "
        "model-pixels/s (wall) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {entry['images']} | {entry['cpu_ms']:,.2f} | {entry['cpu_rate'] / 1e6:,.0f} M | "
              f"{entry['wall_ms']:,.2f} | {entry['wall_rate'] / 1e6:,.0f} M |" for name, entry in rows]
    lines += [
        "",
        f"**CPU time: raysel is {ratios(raysel, 'cpu')}**; wall clock: {ratios(raysel, 'wall')}. "
        "Goals: >= 10x the reference and >= 5% of memcpy.",
    ]
    if "worst" in timing:
        lines.append(f"Worst case (no agreement, no runs): {ratios(timing['worst'], 'cpu')} (CPU time).")
    lines += [
        "",
        "Times are medians over images. Model-pixels = candidates x pixels. On a busy machine a call of several ms is "
        "often descheduled mid-way while a sub-millisecond memcpy rarely is, so CPU time (`time.process_time`, "
        "single-threaded numpy) is the fair comparison; wall clock is shown for "
        f"completeness (raysel in total: {result['raysel_cpu_s']:.1f} s CPU in {result['raysel_wall_s']:.1f} s "
        f"wall). The reference ran on the first {reference['images']} images only and its rate is extrapolated "
        "per pixel; on those images raysel's fused labels and every candidate's confusion counts were checked to "
        "equal it exactly. Generating the synthetic images is not timed.",
        "",
    ]
    return "\n".join(lines)


def shared_note(load: float | None) -> str:
    """`` (shared with other jobs)`` when the load average reached ``BUSY_LOAD`` during the run, else nothing."""
    return " (shared with other jobs)" if load is not None and load >= BUSY_LOAD else ""


def write_section(path: Path, section: str, name: str = SECTION) -> None:
    """Replace (or append) the ``## <name>`` section of ``path`` (BENCHMARKS.md), leaving other sections
    untouched: atomically, under the lock, with the run's ``Commit:`` and ``Load average:`` lines added
    (:func:`benchmarks._common.replace_section`)."""
    replace_section(name, section, path=path)


# --------------------------------------------------------------------------------------------------------------
# --paper-scale: selection over 40 candidates' prediction files, streamed, peak RSS per image count
# --------------------------------------------------------------------------------------------------------------


def write_candidate_files(folder: Path, args: argparse.Namespace, num_images: int) -> list[Path]:
    """One real prediction cache per candidate (``save_predictions``, as trials write them), built one at a time."""
    sweep = SyntheticSweep(args.paper_candidates, args.height, args.width, args.classes, args.seed)
    paths = []
    for candidate in range(args.paper_candidates):
        labels = np.empty((num_images, args.height, args.width), dtype=np.uint8)
        for image in range(num_images):
            labels[image] = sweep.candidate_image(image, candidate, args.seed)
        predictions = CandidatePredictions(labels=labels, probabilities=None,
                                           image_ids=tuple(f"image_{i:04d}" for i in range(num_images)),
                                           image_indices=np.arange(num_images), num_classes=args.classes,
                                           task="segmentation")
        paths.append(save_predictions(folder / f"candidate_{candidate:02d}.npz", predictions))
        del labels, predictions
    return paths


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB: ``VmHWM`` of ``/proc/self/status`` where Linux has it.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries the parent's peak across fork and exec into it, so a child
    started by a parent that holds the candidates' labels would report the parent's memory as its own.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score_files(folder: Path) -> dict:
    """Child process: F-mIoU selection over every prediction file in ``folder`` through the product's reader and
    selector; wall/CPU time and peak RSS (:func:`peak_rss_mib`) of this process, which did nothing else."""
    rss_before = peak_rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    candidates = [load_predictions(path, with_probabilities=False) for path in sorted(folder.glob("*.npz"))]
    scores = get_selector("fmiou").score(candidates)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "peak_rss_mib": peak_rss_mib(), "rss_after_imports_mib": rss_before,
            "streamed": type(candidates[0].labels).__name__, "best": int(np.argmax(scores))}


def run_paper_scale(args: argparse.Namespace) -> list[dict]:
    """For each image count: write the candidates' files (not timed), then score them in a fresh process."""
    results = []
    for num_images in args.paper_images:
        with tempfile.TemporaryDirectory(prefix="raysel-paper-scale-") as scratch:
            folder = Path(scratch)
            started = time.perf_counter()
            paths = write_candidate_files(folder, args, num_images)
            written_s = time.perf_counter() - started
            child = subprocess.run([sys.executable, "-m", "benchmarks.voting_speed", "--score-files", str(folder)],
                                   check=True, capture_output=True, text=True, cwd=REPO)
            result = json.loads(child.stdout.strip().splitlines()[-1])
            result.update(images=num_images, written_s=written_s,
                          disk_mib=sum(path.stat().st_size for path in paths) / 2**20,
                          labels_mib=args.paper_candidates * num_images * args.height * args.width / 2**20)
            results.append(result)
            print(json.dumps(result), flush=True)
    return results


def paper_scale_report(args: argparse.Namespace, results: list[dict], command: str,
                       load: tuple[float, float]) -> str:
    """The ``## voting_speed.paper_scale`` section of the paper-scale run."""
    lines = [f"## {PAPER_SCALE_SECTION}", "",
             f"Command: `{command}`  ", f"Date: {dt.date.today().isoformat()}  ",
             f"Load average: {load_text(*load)}  ", f"Machine: {machine()}{shared_note(max(load))}  ", "",
             f"F-mIoU selection at paper scale: {args.paper_candidates} candidates x images of "
             f"{args.height}x{args.width}, streamed from disk with bounded memory.", "",
             "F-mIoU selection through the product's path: each candidate's labels written by `save_predictions` "
             "(compressed `.npz`, the sweep's prediction cache; the synthetic sweep of `## voting_speed`, "
             "reproducible per image and candidate), read by `load_predictions` (labels over 16 MiB stay in the "
             "file and are streamed a few images at a time) and scored by the `fmiou` selector, in a fresh process "
             "per row so that its peak RSS (`VmHWM`) is the selection's alone.", "",
             "| images | labels if held in memory | files on disk | selection wall | CPU | peak RSS | RSS after "
             "imports | wall per image |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['images']} | {r['labels_mib'] / 1024:.1f} GiB | {r['disk_mib']:.0f} MiB | {r['wall_s']:.1f} s "
              f"| {r['cpu_s']:.1f} s | {r['peak_rss_mib']:.0f} MiB | {r['rss_after_imports_mib']:.0f} MiB | "
              f"{1e3 * r['wall_s'] / r['images']:.0f} ms |" for r in results]
    largest = results[-1]
    per_image = largest["cpu_s"] / largest["images"]
    peaks = [result["peak_rss_mib"] for result in results]
    extrapolated = "" if largest["images"] >= 500 else f"; 500 images extrapolate to {500 * per_image:.0f} s of CPU"
    lines += ["", f"Peak RSS {min(peaks):.0f}-{max(peaks):.0f} MiB from {results[0]['images']} to {largest['images']} "
              f"images (what is read at a time is {args.paper_candidates} x one batch of images), where holding the "
              f"labels would take {largest['labels_mib'] / 1024:.1f} GiB at {largest['images']} images. CPU time "
              f"{1e3 * per_image:.0f} ms per image of {args.paper_candidates} candidates at {largest['images']} images "
              f"(decompression included){extrapolated}.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=10, help="number of candidates n (default 10)")
    parser.add_argument("--images", type=int, default=500, help="images in the stream (default 500)")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--reference-images", type=int, default=3,
                        help="images the slow reference runs on (its rate is extrapolated per pixel)")
    parser.add_argument("--worst-case-images", type=int, default=10,
                        help="images of independent uniform labels timed separately (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--paper-scale", action="store_true",
                        help="instead: time F-mIoU selection over --paper-candidates prediction files of "
                        "--paper-images images each (streamed from disk), with its peak RSS; writes the "
                        f"{PAPER_SCALE_SECTION} section")
    parser.add_argument("--paper-candidates", type=int, default=40)
    parser.add_argument("--paper-images", type=lambda text: [int(part) for part in text.split(",")],
                        default=[50, 100, 200], help="comma-separated image counts, one run each (default 50,100,200)")
    parser.add_argument("--score-files", type=Path, default=None, help=argparse.SUPPRESS)  # the --paper-scale child
    args = parser.parse_args(argv)
    if min(args.candidates, args.images, args.height, args.width, args.classes, args.reference_images) < 1:
        parser.error("--candidates, --images, --height, --width, --classes and --reference-images must be >= 1")
    if args.classes > 255:
        parser.error("--classes must be <= 255 (labels are uint8)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks.voting_speed" + ("" if not argv and len(sys.argv) <= 1 else
                                                      " " + shlex.join(argv if argv is not None else sys.argv[1:]))
    if args.score_files is not None:
        print(json.dumps(score_files(args.score_files)))
        return 0
    load_before = os.getloadavg()[0]
    if args.paper_scale:
        name, results = PAPER_SCALE_SECTION, run_paper_scale(args)
        section = paper_scale_report(args, results, command, (load_before, os.getloadavg()[0]))
    else:
        name, result = SECTION, run(args)
        section = report(args, result, command, (load_before, os.getloadavg()[0]))
    print(section)
    if not args.no_write:
        write_section(args.output, section, name)
        print(f"wrote the '## {name}' section of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
