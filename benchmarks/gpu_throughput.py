"""raysel at the papers' scale on whatever GPU it finds: training speed, peak memory, voting, and a fractional-GPU sweep.

Parts (every one through raysel's own code: ``RunContext`` with a ``LocalSession``, the methods' step functions,
``raysel.quant``, ``raysel.selection.voting`` and ``raysel.orchestration.run_sweep``):

1. **HIAST** self-training iterations/s and peak GPU memory, DeepLab-V2/ResNet-101 at 512x1024, batch 6 (HIAST §5.1),
   with the default GPU switches (``auto``: mixed precision, channels-last, ...) and with all of them off (fp32);
   one ``hiast.self_training_step`` per iteration (strong/weak views, Eq. 4 losses, EMA teacher; HPLA off: its
   copy-paste is CPU work that needs a pseudo-label bank). Images and pseudo-labels are synthetic (speed only).
2. **GSDA** iterations/s and peak memory, ResNet-50 at 224x224, 32 source + 32 target images per iteration (the
   paper gives no batch size; 32 is raysel's default), 6 groups (Office-31), ``gsda.gsda_step``.
3. **HDRQ** block-reconstruction iterations/s (``raysel.quant.quantize_and_reconstruct``, W4A4, batch 1 as the
   code, 8 calibration images) on DeepLab-V2/ResNet-101 at 512x1024.
4. **F-mIoU voting** over 10 candidates x 500 images of 512x1024 (``FusedVoteAccumulator``, CPU work; the synthetic
   sweep of ``benchmarks/voting_speed.py``, generation not timed).
5. **A 4-configuration HIAST sweep** (``alpha`` grid) on the embedded street scenes resized to 512x1024 with
   DeepLab-V2, ``--gpus-per-worker 0.25`` (4 trials share the GPU) against the same 4 trials one after another:
   training images/s over the span from the first trial's start to the last trial's end, mean GPU utilisation
   (pynvml if installed, else nvidia-smi), and the ratio. Shared stages are built (short) and cached before both.

    python -m benchmarks.gpu_throughput                      # on a CUDA machine; writes '## gpu_throughput'
    python -m benchmarks.gpu_throughput --smoke --allow-cpu  # every code path at a tiny size, on CPU (tests)

Without CUDA it refuses to run (one ``error:`` line, exit 2) unless ``--allow-cpu``. ``--smoke`` uses the small
networks at 32x64, a few iterations and a 2-configuration sweep; its numbers mean nothing. BENCHMARKS.md is written only after a GPU run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import Dataset

from benchmarks._common import (SyntheticSweep, machine_description, prepare_benchmark_data, working_directory,
                                write_section)
from raysel import conventions, execution, orchestration
from raysel.errors import UserError, exits_cleanly_on_user_error
from raysel.methods import gsda, hiast, networks, optim, training
from raysel.methods.acceleration import SWITCHES
from raysel.methods.base import LocalSession, RunContext, RunSpec
from raysel.models import build_model
from raysel.quant import PtqConfig, quantize_and_reconstruct
from raysel.selection import FusedVoteAccumulator

SECTION = "gpu_throughput"
# What this benchmark measures: a later commit touching one makes its section stale (benchmarks._common).
MEASURES = ("benchmarks/_common.py", "raysel/methods/hiast.py", "raysel/methods/gsda.py", "raysel/methods/base.py",
            "raysel/methods/stages.py", "raysel/methods/training.py", "raysel/methods/optim.py",
            "raysel/methods/augment.py", "raysel/methods/losses.py", "raysel/methods/networks.py",
            "raysel/methods/acceleration.py", "raysel/models", "raysel/quant", "raysel/selection/voting.py",
            "raysel/orchestration", "raysel/execution")
FP32 = {"amp": "off", **{name: "off" for name in SWITCHES}}
SWEEP_ALPHAS = (0.3, 0.4, 0.5, 0.6)


@dataclass(frozen=True)
class Sizes:
    """Workload sizes: the papers' (default) or tiny (``--smoke``)."""

    segmentation_model: str = "deeplabv2_resnet101"
    segmentation_size: tuple[int, int] = (512, 1024)
    hiast_batch: int = 6  # HIAST §5.1
    classification_model: str = "resnet50"
    classification_size: tuple[int, int] = (224, 224)
    gsda_batch: int = 32  # per domain; not given by the GSDA paper
    iterations: int = 20  # timed iterations (after warmup_iterations untimed ones)
    warmup_iterations: int = 5
    hdrq_iterations: int = 20  # per reconstruction unit (paper 20000)
    calibration_images: int = 8
    vote_candidates: int = 10
    vote_images: int = 500
    vote_size: tuple[int, int] = (512, 1024)
    sweep_iterations: int = 40  # HIAST iterations per trial (1 round)
    sweep_configurations: int = 4  # alpha values, the first of SWEEP_ALPHAS
    stage_iterations: int = 10  # source-only and warm-up stages of the sweep (built once, not timed)
    selection_size: int = 48


SMOKE = Sizes(segmentation_model="small_segnet", segmentation_size=(32, 64), hiast_batch=2,
              classification_model="small_cnn", classification_size=(32, 32), gsda_batch=4, iterations=2,
              warmup_iterations=1, hdrq_iterations=2, calibration_images=2, vote_candidates=3, vote_images=4,
              vote_size=(32, 64), sweep_iterations=2, sweep_configurations=2, stage_iterations=2, selection_size=4)


@dataclass
class Row:
    """One measured line of the table."""

    part: str
    settings: str
    rate: float
    unit: str
    images_per_second: float
    peak_memory_gib: float | None = None


# --------------------------------------------------------------------------------------------------------------
# Synthetic data and contexts
# --------------------------------------------------------------------------------------------------------------


class SyntheticImages(Dataset):
    """Seeded random normalised images with labels: per pixel (and pseudo-labels with 30% ignored) or per image."""

    def __init__(self, count: int, size: tuple[int, int], num_classes: int, segmentation: bool, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, 3, *size, generator=generator)
        shape = (count, *size) if segmentation else (count,)
        self.labels = torch.randint(0, num_classes, shape, generator=generator)
        ignored = torch.rand(shape, generator=generator) < 0.3
        self.pseudo_labels = self.labels.masked_fill(ignored, conventions.IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": self.labels[index],
                "pseudo_label": self.pseudo_labels[index], "index": index}


def benchmark_context(dataset: str, model: str, device: torch.device, workdir: str,
                      acceleration: dict[str, Any]) -> RunContext:
    """A real RunContext (LocalSession) for a real-data family's label space; batches come from SyntheticImages."""
    spec = RunSpec(method="benchmark", dataset=dataset, model=model, seed=0, output_dir=workdir,
                   cache_dir=str(Path(workdir) / "cache"), acceleration=acceleration)
    return RunContext(spec, LocalSession(checkpoint_root=str(Path(workdir) / "checkpoints"), device=device))


def timed_iterations(step: Callable[[], Any], warmup: int, iterations: int,
                     device: torch.device) -> tuple[float, float | None]:
    """Iterations/s of ``step`` after ``warmup`` untimed calls, and the peak GPU memory (GiB; None on CPU)."""
    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return iterations / seconds, (torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None)


# --------------------------------------------------------------------------------------------------------------
# Parts 1-4: HIAST, GSDA, HDRQ, voting
# --------------------------------------------------------------------------------------------------------------


def hiast_throughput(sizes: Sizes, device: torch.device, workdir: str, acceleration: dict[str, Any]) -> Row:
    """HIAST self-training iterations/s: ``hiast.self_training_step`` on a frozen-BN student and its EMA teacher."""
    ctx = benchmark_context("cityscapes", sizes.segmentation_model, device, workdir, acceleration)
    torch.manual_seed(0)
    student = ctx.build_model(pretrained=False)
    networks.freeze_batchnorm(student)  # §5.1
    student.train()
    teacher = networks.make_ema_teacher(student)
    network = ctx.distributed(student)
    total = sizes.warmup_iterations + sizes.iterations
    config = hiast.HiastConfig(batch_size=sizes.hiast_batch, iterations_per_round=total, backbone_lr_ratio=0.1)
    optimizer = optim.build_optimizer(network, config.learning_rate, weight_decay=config.weight_decay,
                                       backbone_lr_ratio=config.backbone_lr_ratio)
    scheduler = optim.build_scheduler(optimizer, total, "cosine")
    data = SyntheticImages(3 * sizes.hiast_batch, sizes.segmentation_size, ctx.num_classes, True, seed=1)
    batches = training.infinite_batches(ctx.loader(data, config.batch_size))
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        hiast.self_training_step(config, ctx, network, teacher, next(batches), None, generator, optimizer, scheduler)

    rate, peak = timed_iterations(step, sizes.warmup_iterations, sizes.iterations, device)
    height, width = sizes.segmentation_size
    return Row(f"HIAST self-training, {sizes.segmentation_model} {height}x{width}, batch {sizes.hiast_batch}",
               ctx.acceleration.describe(), rate, "iterations/s", rate * sizes.hiast_batch, peak)


def gsda_throughput(sizes: Sizes, device: torch.device, workdir: str) -> Row:
    """GSDA iterations/s: ``gsda.gsda_step`` (D-step and E,C-step with gradient synchronization) per iteration."""
    ctx = benchmark_context("office31", sizes.classification_model, device, workdir, {})
    total = sizes.warmup_iterations + sizes.iterations
    config = gsda.GsdaConfig(groups=6, iterations=total, batch_size=sizes.gsda_batch, init_from_source=False)
    trainables = gsda.build_trainables(config, ctx, fresh=True)
    membership = gsda.group_membership(gsda.group_assignment(ctx.num_classes, config.groups, config.group_seed),
                                       config.groups).to(device)
    network = ctx.distributed(gsda.FeaturesAndLogits(trainables.model))
    trainables.model.train()
    size = sizes.classification_size
    source = training.infinite_batches(ctx.loader(SyntheticImages(2 * sizes.gsda_batch, size, ctx.num_classes, False, 2),
                                                config.batch_size, seed_offset=31))
    target = training.infinite_batches(ctx.loader(SyntheticImages(2 * sizes.gsda_batch, size, ctx.num_classes, False, 3),
                                                config.batch_size, seed_offset=32))
    iteration = [0]

    def step() -> None:
        gsda.gsda_step(config, ctx, network, trainables, membership, next(source), next(target), iteration[0])
        trainables.scheduler_step()
        iteration[0] += 1

    rate, peak = timed_iterations(step, sizes.warmup_iterations, sizes.iterations, device)
    return Row(f"GSDA, {sizes.classification_model} {size[0]}x{size[1]}, batch {sizes.gsda_batch}+{sizes.gsda_batch}",
               ctx.acceleration.describe(), rate, "iterations/s", rate * 2 * sizes.gsda_batch, peak)


def hdrq_throughput(sizes: Sizes, device: torch.device) -> Row:
    """HDRQ block-reconstruction iterations/s (capture excluded, as ``ReconstructionReport`` counts them)."""
    torch.manual_seed(0)
    model = build_model(sizes.segmentation_model, "segmentation", 19, pretrained=False).to(device).eval()
    images = torch.randn(sizes.calibration_images, 3, *sizes.segmentation_size)
    config = PtqConfig(method="hdrq", iterations=sizes.hdrq_iterations, calibration_images=sizes.calibration_images,
                       activation_calibration_images=sizes.calibration_images, batch_size=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _, report = quantize_and_reconstruct(model, images, config, base_model=copy.deepcopy(model))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    rate = report.iterations_per_second
    height, width = sizes.segmentation_size
    return Row(f"HDRQ reconstruction W4A4, {sizes.segmentation_model} {height}x{width}, batch 1, "
               f"{len(report.units)} units x {sizes.hdrq_iterations} iterations", "float32 (fake quantization)",
               rate, "iterations/s", rate, peak)


def voting_throughput(sizes: Sizes) -> Row:
    """F-mIoU voting: ``FusedVoteAccumulator.update`` per image of the synthetic sweep (generation untimed)."""
    height, width = sizes.vote_size
    sweep = SyntheticSweep(sizes.vote_candidates, height, width, 19, seed=0)
    accumulator = FusedVoteAccumulator(sizes.vote_candidates, 19)
    seconds = 0.0
    for _ in range(sizes.vote_images):
        stack = sweep.realistic()
        started = time.perf_counter()
        accumulator.update(stack)
        seconds += time.perf_counter() - started
    accumulator.miou()
    rate = sizes.vote_images / seconds
    return Row(f"F-mIoU voting, {sizes.vote_candidates} candidates x {sizes.vote_images} images of {height}x{width}",
               f"CPU (numpy), {seconds:.1f} s in all", rate, "images/s", rate)


# --------------------------------------------------------------------------------------------------------------
# Part 5: a 4-configuration HIAST sweep, fractional GPUs vs one after another
# --------------------------------------------------------------------------------------------------------------


class UtilisationSampler:
    """Samples the GPU's utilisation (%) every ``interval_s`` in a thread: pynvml if installed, else nvidia-smi."""

    def __init__(self, device: torch.device, interval_s: float = 0.5) -> None:
        self.device, self.interval_s = device, interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._read = self._reader() if device.type == "cuda" else None

    def _reader(self) -> Callable[[], float] | None:
        index = self.device.index or 0
        try:  # optional dependency (nvidia-ml-py): imported here because most machines lack it
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # no pynvml or no NVML library: fall back to nvidia-smi
            command = ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
                float(subprocess.run(command, capture_output=True, text=True, timeout=5).stdout.strip())
                return lambda: float(subprocess.run(command, capture_output=True, text=True, timeout=5).stdout)
        return None

    @contextlib.contextmanager
    def sampling(self) -> Iterator["UtilisationSampler"]:
        """Sample while the block runs."""
        thread = threading.Thread(target=self._loop, daemon=True) if self._read else None
        if thread:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            if thread:
                thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):
                self.samples.append(self._read())

    def mean(self) -> float | None:
        """Mean utilisation in percent (None without a GPU or without a way to read it)."""
        return sum(self.samples) / len(self.samples) if self.samples else None


def sweep_request(name: str, sizes: Sizes, data_root: Path, results: Path, gpus: float, concurrent: int) -> Any:
    """The sweep as ``raysel.sweep hiast`` would build it: an alpha grid (SWEEP_ALPHAS), one round each."""
    from raysel.request_build import build_request

    alphas = list(SWEEP_ALPHAS[:sizes.sweep_configurations])
    overrides = [f"alpha={{grid: {alphas}}}", "lambda_i=1.0", "gamma=8.0", "k=14", "lambda_cst=0.5",
                 "rounds=1", f"iterations_per_round={sizes.sweep_iterations}", f"batch_size={sizes.hiast_batch}",
                 "reports_per_round=1", f"source_iterations={sizes.stage_iterations}",
                 f"warmup_iterations={sizes.stage_iterations}"]
    return build_request(method="hiast", overrides=overrides, data="street_scenes", data_root=data_root,
                         source="game", target=["day_city"], model=sizes.segmentation_model,
                         image_size=sizes.segmentation_size, seed=0, selection_size=sizes.selection_size, workers=1,
                         cpus_per_worker=1.0 if gpus else 0.5, gpus_per_worker=gpus, executor="direct",
                         max_failures=0, max_concurrent=concurrent, results=results, name=name,
                         progress_interval=60)


def run_sweep_timed(name: str, sizes: Sizes, data_root: Path, results: Path, gpus: float, concurrent: int,
                    device: torch.device) -> dict[str, Any]:
    """One sweep through ``orchestration.run_sweep``: training images/s over the trials' span, mean GPU utilisation."""
    request = sweep_request(name, sizes, data_root, results, gpus, concurrent)
    sampler = UtilisationSampler(device)
    with sampler.sampling():
        outcome = orchestration.run_sweep(request, stream=sys.stderr)
    trials = outcome.trials
    failed = trials[trials["status"] != "finished"]
    if len(trials) != sizes.sweep_configurations or len(failed):
        raise RuntimeError(f"sweep {name}: {len(trials)} trials, failed: {failed['error'].tolist()}")
    span = trials["finished_at"].max() - trials["started_at"].min()  # a Timedelta from the store
    span = span.total_seconds() if hasattr(span, "total_seconds") else float(span)
    images = len(trials) * sizes.sweep_iterations * sizes.hiast_batch
    return {"trials": len(trials), "span_s": span, "images_per_second": images / span,
            "utilisation": sampler.mean()}


def sweep_comparison(sizes: Sizes, device: torch.device, data_root: Path, workdir: Path) -> dict[str, Any]:
    """The trials one after another, then all at once on fractional GPUs (0.25 each; on CPU half a core each)."""
    gpus = 0.25 if device.type == "cuda" else 0.0
    started_here = execution.connect(None)  # one Ray for both sweeps
    try:
        sequential = run_sweep_timed("sequential", sizes, data_root, workdir / "results", gpus, 1, device)
        shared = run_sweep_timed("fractional", sizes, data_root, workdir / "results", gpus,
                                 sizes.sweep_configurations, device)
    finally:
        if started_here:
            import ray

            ray.shutdown()
    return {"gpus_per_trial": gpus, "sequential": sequential, "fractional": shared,
            "ratio": shared["images_per_second"] / sequential["images_per_second"]}


# --------------------------------------------------------------------------------------------------------------
# Report and entry point
# --------------------------------------------------------------------------------------------------------------


def table(rows: list[Row], sweep: dict[str, Any]) -> str:
    """The markdown table of parts 1-4 and the sweep comparison of part 5."""

    def memory(row: Row) -> str:
        return f"{row.peak_memory_gib:.1f}" if row.peak_memory_gib is not None else "n/a"

    def utilisation(value: float | None) -> str:
        return f"{value:.0f}%" if value is not None else "n/a"

    lines = ["| part | settings | rate | images/s | peak GPU memory (GiB) |", "|---|---|---:|---:|---:|"]
    lines += [f"| {row.part} | {row.settings} | {row.rate:,.2f} {row.unit} | {row.images_per_second:,.1f} | "
              f"{memory(row)} |" for row in rows]
    resources = f"{sweep['gpus_per_trial']} GPU per trial" if sweep["gpus_per_trial"] else "CPU, 0.5 core per trial"
    lines += ["", f"{sweep['sequential']['trials']}-configuration HIAST sweep ({resources}):", "",
              "| schedule | trials | span (s) | training images/s | mean GPU utilisation |", "|---|---:|---:|---:|---:|"]
    for label, key in (("one after another", "sequential"), ("all at once (fractional)", "fractional")):
        entry = sweep[key]
        lines.append(f"| {label} | {entry['trials']} | {entry['span_s']:.1f} | {entry['images_per_second']:,.2f} | "
                     f"{utilisation(entry['utilisation'])} |")
    lines += ["", f"Fractional / one after another: **{sweep['ratio']:.2f}x** training images/s."]
    return "\n".join(lines)


def notes(sizes: Sizes) -> str:
    """What the figures are (appended to the BENCHMARKS.md section)."""
    return (f"Iterations/s: the rate over {sizes.iterations} timed iterations after {sizes.warmup_iterations} "
            "untimed, synchronised; images are synthetic (speed only). HIAST runs "
            "`hiast.self_training_step` without HPLA; GSDA `gsda.gsda_step` (batch per domain: the paper gives none); "
            "HDRQ `quantize_and_reconstruct` (capture excluded); voting `FusedVoteAccumulator` on the CPU. The sweep "
            "is `raysel.orchestration.run_sweep` on the embedded street scenes resized to the HIAST size; its span "
            "runs from the first trial's start to the last trial's end (pseudo-labels, training, held-out scoring and "
            "prediction files included; Ray start-up, cached shared stages and selection excluded).")


def run(args: argparse.Namespace, device: torch.device) -> tuple[list[Row], dict[str, Any]]:
    """Every part in order; progress lines go to stderr."""
    sizes = SMOKE if args.smoke else Sizes()
    if args.iterations:
        sizes = dataclasses.replace(sizes, iterations=args.iterations)
    with working_directory(args.workdir, "raysel-gpu-throughput-") as workdir:
        workdir = Path(workdir)
        rows = []
        for label, measure in (
            ("HIAST (GPU switches auto)", lambda: hiast_throughput(sizes, device, str(workdir / "hiast"), {})),
            ("HIAST (fp32, switches off)", lambda: hiast_throughput(sizes, device, str(workdir / "fp32"), FP32)),
            ("GSDA", lambda: gsda_throughput(sizes, device, str(workdir / "gsda"))),
            ("HDRQ", lambda: hdrq_throughput(sizes, device)),
            ("voting", lambda: voting_throughput(sizes)),
        ):
            print(f"measuring {label} ...", file=sys.stderr, flush=True)
            rows.append(measure())
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print("measuring the 4-configuration HIAST sweep (one after another, then fractional) ...",
              file=sys.stderr, flush=True)
        tiny = workdir / "data" if args.smoke and args.data_root is None else None
        data_root = prepare_benchmark_data(["street_scenes"], args.data_root, tiny_into=tiny)
        sweep = sweep_comparison(sizes, device, data_root, workdir)
    return rows, sweep


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_throughput", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="every part at a tiny size (small networks, 32x64)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (with --smoke: tests)")
    parser.add_argument("--iterations", type=int, default=None, help="timed training iterations per part")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where the embedded street scenes are (generated there if missing; default raysel's)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder kept afterwards (default: temp)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        raise UserError(f"--iterations must be at least 1, got {args.iterations}")
    return args


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise UserError("no CUDA device: gpu_throughput measures a GPU; run it on a machine with one "
                        "(or pass --smoke --allow-cpu to exercise its code paths on CPU)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, sweep = run(args, device)
    body = table(rows, sweep) + "\n\n" + notes(SMOKE if args.smoke else Sizes())
    print(body)
    if device.type == "cuda" and not args.no_write and not args.smoke:
        command = " ".join(["python -m benchmarks.gpu_throughput", shlex.join(arguments)]).strip()
        write_section(SECTION, command, body, machine=machine_description())
        print(f"wrote the '## {SECTION}' section of BENCHMARKS.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
