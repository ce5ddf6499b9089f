"""HDRQ (Shin, Seok, Kim, Park, ICML 2025): merge-friendly post-training quantization for multi-target DA.

One trial runs the paper's pipeline (§5: "models are first adapted independently to each target domain and then
merged ... Quantization is applied between the single-target domain adaptation and the merging process"):

1. **Source model**: the shared cached source stage (:func:`raysel.methods.stages.source_stage`) that every
   per-target adaptation starts from. Its BN-folded weights are HDRQ's distance anchor (§4.2, eq. 10).
2. **One adapted model per target** (``targets``, default every target of the dataset family): a registered UDA
   method (``adaptation``; ``auto`` = a short HIAST for segmentation, GSDA for classification; the paper uses HRDA
   and SHOT) run in-process on that target and cached per (target, method, settings, seed), so every trial of a
   sweep shares them. ``adaptation_settings`` overrides the method's hyperparameters.
3. **Per-target PTQ** on ``calibration_images`` unlabeled target training images with ``ptq_method`` (brecq, qdrop
   or hdrq; ``none`` keeps full precision, the FP reference) at ``weight_bits``/``activation_bits``
   (:func:`raysel.quant.quantize_and_reconstruct`). HDRQ adds noise-based quantization (§4.1, eq. 9;
   ``quantization_noise``) and the distance term ``lambda_distance * sum ||W - W_src||`` (§4.2); both act only
   when ``ptq_method`` is hdrq. Quantized specialists are cached per (target, PTQ settings), so trials that differ
   only in how they merge reuse them. How far reconstruction moved each specialist (codes changed, step and
   weight movement; :mod:`raysel.quant.movement`) is kept in its stage and reported as ``ptq_<measure>`` metrics.
4. **Merging** (:func:`raysel.quant.merge_models`): mid-point averaging (Li et al. 2024). Quantized models merge on
   the quantization grid with HDRQ's noise-sampling rounding (§4.3, eq. 12, cosine-similarity rejection over
   ``merge_samples`` draws) when ``noise_sampling``, else the plain float-domain rounding (eq. 11); FP models merge
   with moment-matched BN statistics.
5. **Label-free merge quality** (:func:`raysel.quant.merge_quality.merge_quality`): harmonic mean over targets
   of the merged model's agreement with each target's (quantized) specialist on that target's selection subset,
   reported as ``merge_quality`` and stored as the trial's ``score_merge_quality`` (the sweep selects with it);
   plus the label-free error barrier (eq. 2) between specialists, averaged over target pairs.

The merged model is returned in a :class:`~raysel.methods.result.TrainResult` saved as a whole module (no builder
makes a quantized merged model): the targets to evaluate, the label-free score and metrics.
:func:`raysel.execution.trial.finish_run` scores it on every target's held-out labels
(``heldout_miou_<target>`` and their harmonic mean ``heldout_miou``; accuracy for classification). This module
never reads a target label.

Paper vs code choices live in :mod:`raysel.quant.ptq_config` (iterations, learning rates, noise distribution,
non-squared distance norm). Here: calibration on 32 target images (code) by default; one merge seed per trial (the
paper averages 30 merge draws, the code 32 seeds). PTQ and merging are not data-parallel: with several Ray Train
workers every worker computes them (identically seeded); the adaptation stage itself trains with DDP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import torch
import yaml
from torch import nn

from raysel.errors import ConfigError
from raysel.hyperparameters import bounded, check_fields, config_from_dict
from raysel.methods import networks, stages, training
from raysel.methods.base import LocalSession, RunContext, require
from raysel.methods.reports import TARGET_CONFIDENCE, EpochReport
from raysel.methods.result import MODULE, TrainResult
from raysel.quant import PTQ_METHODS, PtqConfig, merge_models, quantize_and_reconstruct, validate_bits
from raysel.quant.movement import MOVEMENT_MEASURES
from raysel.quant.ptq_config import CODE_ITERATIONS
from raysel.registry import Method, get_method, register
from raysel.quant.merge_quality import error_barrier, merge_quality, specialist_references
from raysel.data.common import selection_subset

__all__ = [
    "FULL_PRECISION", "PTQ_CHOICES", "BITS_PATTERN", "DEFAULT_BITS", "DEFAULT_ADAPTATION", "SHORT_ADAPTATION",
    "BARRIER_IMAGES", "HDRQ_ONLY_FIELDS", "HdrqConfig", "parse_settings", "adaptation_config", "resolve_adaptation",
    "source_settings_of", "merge_targets", "target_context", "adaptation_key", "adapted_stage", "unlabeled_images",
    "quantized_stage", "load_model", "selection_images", "prepare_hdrq", "Specialists", "Merge", "build_specialists",
    "merge_specialists", "mean_movement", "train_hdrq", "merged_result", "mean_error_barrier",
]

FULL_PRECISION = "none"
PTQ_CHOICES = (*PTQ_METHODS, FULL_PRECISION)
BITS_PATTERN = re.compile(r"^W(\d+)A(\d+)$")
DEFAULT_BITS = "W4A4"
# adaptation="auto": the registered method that adapts one target, per task, and its short CPU preset
# (adaptation_settings is applied on top of the preset).
DEFAULT_ADAPTATION = {"segmentation": "hiast", "classification": "gsda"}
SHORT_ADAPTATION: dict[str, dict[str, Any]] = {"hiast": {"rounds": 1, "reports_per_round": 1},
                                               "gsda": {"num_reports": 1}}
BARRIER_IMAGES = 32  # images per target on which the error barrier is measured (each path point re-predicts them)
# PtqConfig fields that only HDRQ reads: left out of the cache key of BRECQ/QDrop specialists.
HDRQ_ONLY_FIELDS = ("lambda_distance", "noise", "weight_lr", "warmup_start_multiplier", "real_quant_fraction",
                    "histogram_samples", "weight_lr_reference_iterations")


@dataclass(frozen=True)
class HdrqConfig:
    """HDRQ hyperparameters (paper names). ``bits`` is the paired shorthand ``W<weight>A<activation>`` that sweeps
    grid over; ``weight_bits``/``activation_bits``, when given, win over it, and ``bits`` is rewritten to match."""

    weight_bits: int | None = None  # W; None: from ``bits``
    activation_bits: int | None = None  # A; None: from ``bits``
    bits: str = DEFAULT_BITS  # paper settings: W8A8 W8A4 W6A6 W4A8 W4A4 W3A3
    ptq_method: Literal["brecq", "qdrop", "hdrq", "none"] = "hdrq"  # none: full precision, the FP reference
    lambda_distance: float = bounded(5e-2, ge=0.0)  # λ of the distance regularization (§4.2); paper 5e-2; hdrq only
    quantization_noise: Literal["histogram", "uniform", "none"] = "histogram"  # §4.1: code | paper | Table 3 ablation
    noise_sampling: bool = True  # merge rounding: §4.3 noise sampling (eq. 12) or plain float rounding (eq. 11)
    merge_samples: int = bounded(100, ge=1)  # noise draws of the cosine-similarity rejection (code: 100)
    reconstruction_iterations: int = bounded(300, ge=1)  # per block (paper/code 20000)
    weight_lr: float = bounded(1e-4, gt=0.0)  # HDRQ lr of the float weights and weight steps (code 1e-4, paper text 1e-3)
    # scaled: weight_lr x 20000 / reconstruction_iterations (at most 100x), the code's lr x steps budget in a short
    # run (raysel.quant.ptq_config); fixed: weight_lr as given. hdrq only.
    weight_lr_schedule: Literal["scaled", "fixed"] = "scaled"
    calibration_images: int = bounded(32, ge=1)  # unlabeled target training images per target (code 32)
    targets: tuple[str, ...] = ()  # target domains to adapt, quantize and merge; () = the family's default targets
    adaptation: str = "auto"  # registered method adapting each target; auto = hiast (segmentation) / gsda
    adaptation_settings: str = ""  # "key=value, key=value" hyperparameters of the adaptation method
    barrier_points: int = bounded(5, ge=0)  # points on the interpolation path of the error barrier (0 = not measured)

    def __post_init__(self) -> None:
        """Resolve the bit-widths: explicit weight/activation bits win over ``bits``, which then names them.

        The config is frozen, so the resolved values are set once here (``object.__setattr__``) and never again.
        """
        parsed = BITS_PATTERN.match(self.bits.strip()) if isinstance(self.bits, str) else None
        if parsed is None and (self.weight_bits is None or self.activation_bits is None):
            raise ConfigError(f"bits must look like W4A4 (W<weight bits>A<activation bits>), got {self.bits!r}")
        if parsed is not None and self.weight_bits is None:
            object.__setattr__(self, "weight_bits", int(parsed.group(1)))
        if parsed is not None and self.activation_bits is None:
            object.__setattr__(self, "activation_bits", int(parsed.group(2)))
        if isinstance(self.weight_bits, int) and isinstance(self.activation_bits, int):
            object.__setattr__(self, "bits", f"W{self.weight_bits}A{self.activation_bits}")
        object.__setattr__(self, "targets", tuple(self.targets))

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid hyperparameter (declared ranges, then cross-field checks)."""
        validate_bits(self.weight_bits, "weight_bits")
        validate_bits(self.activation_bits, "activation_bits")
        check_fields(self)
        require(self.barrier_points == 0 or self.barrier_points >= 3,  # 2 points are the endpoints only
                f"barrier_points must be 0 (not measured) or >= 3, got {self.barrier_points}")
        if self.targets:
            require(len(set(self.targets)) == len(self.targets), f"targets has duplicates: {list(self.targets)}")
            require(len(self.targets) >= 2, "HDRQ merges at least two target domains; targets lists "
                    f"{len(self.targets)} ({', '.join(self.targets)})")
        require(self.adaptation != "hdrq", "adaptation must be a single-target method, not hdrq itself")
        settings = parse_settings(self.adaptation_settings)
        if self.adaptation != "auto":
            method = get_method(self.adaptation)  # ConfigError listing the registered methods
            adaptation_config(method, settings)

    def ptq_config(self, seed: int) -> PtqConfig:
        """The PTQ settings of one specialist (raysel.quant); ptq_method 'none' has none."""
        return PtqConfig(method=self.ptq_method, weight_bits=self.weight_bits, activation_bits=self.activation_bits,
                         iterations=self.reconstruction_iterations, calibration_images=self.calibration_images,
                         lambda_distance=self.lambda_distance, noise=self.quantization_noise, seed=seed,
                         weight_lr=self.weight_lr, weight_lr_reference_iterations=(
                             CODE_ITERATIONS if self.weight_lr_schedule == "scaled" else None)).validate()


def parse_settings(text: str) -> dict[str, Any]:
    """``"rounds=1, iterations_per_round=40"`` -> ``{"rounds": 1, "iterations_per_round": 40}`` (values as YAML)."""
    values: dict[str, Any] = {}
    for item in (part.strip() for part in str(text or "").split(",")):
        if not item:
            continue
        key, separator, raw = item.partition("=")
        if not separator or not key.strip() or not raw.strip():
            raise ConfigError(f"adaptation_settings: expected key=value pairs separated by commas, got {item!r}")
        try:
            values[key.strip()] = yaml.safe_load(raw.strip())
        except yaml.YAMLError:
            raise ConfigError(f"adaptation_settings: {item!r} has a value that is not valid YAML") from None
    return values


def adaptation_config(method: Method, settings: dict[str, Any]) -> Any:
    """The adaptation method's config: its short preset, then ``settings`` (ConfigError names a bad key)."""
    values = {**SHORT_ADAPTATION.get(method.name, {}), **settings}
    return config_from_dict(method.config_class, values, context=f"adaptation_settings of {method.name}")


def resolve_adaptation(config: HdrqConfig, task: str) -> tuple[Method, Any]:
    """The registered method (``auto``: by task) and its config that adapt each target."""
    name = DEFAULT_ADAPTATION[task] if config.adaptation == "auto" else config.adaptation
    method = get_method(name)
    method.check_task(task, role="adaptation method")
    return method, adaptation_config(method, parse_settings(config.adaptation_settings))


def source_settings_of(method: Method, adapt_config: Any) -> stages.SourceStageSettings:
    """The shared source stage the adaptation starts from (its ``source_settings()``, or source_only's ``settings()``)."""
    for attribute in ("source_settings", "settings"):
        settings = getattr(adapt_config, attribute, None)
        if callable(settings):
            return settings()
    raise ConfigError(f"adaptation method {method.name!r} does not declare the source stage it starts from "
                      "(a source_settings() method); HDRQ needs those source weights for its distance term")


def merge_targets(config: HdrqConfig, ctx: RunContext) -> tuple[str, ...]:
    """The targets to merge (``targets`` or the family's defaults); the trial's own target must be one of them."""
    targets = tuple(ctx.family.resolve_domain(t) for t in config.targets) or tuple(ctx.family.default_targets)
    if len(targets) < 2:
        raise ConfigError(f"HDRQ merges at least two target domains; dataset {ctx.family.name!r} gives "
                          f"{len(targets)} ({', '.join(targets)}): set targets")
    if ctx.source in targets:
        raise ConfigError(f"the source domain {ctx.source!r} cannot also be a target ({', '.join(targets)})")
    if ctx.target not in targets:
        raise ConfigError(f"the run's target {ctx.target!r} is not among the merged targets {', '.join(targets)}; "
                          "pass --target one of them or add it to targets")
    return targets


# --------------------------------------------------------------------------------------------------------------
# Per-target stages (cached: they do not depend on how the trial merges)
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def target_context(ctx: RunContext, target: str) -> Iterator[RunContext]:
    """A run context for ``target`` with an in-memory session (the adaptation's reports and checkpoints stay out
    of this trial's) on the same workers, device and stage cache."""
    with tempfile.TemporaryDirectory(prefix=f"raysel-hdrq-{target}-") as scratch:
        spec = dataclasses.replace(ctx.spec, target=target, output_dir=scratch)
        session = LocalSession(checkpoint_root=scratch, device=ctx.device, world_rank=ctx.rank,
                               world_size=ctx.world_size)
        yield RunContext(spec, session)


def adaptation_key(method: Method, adapt_config: Any, ctx: RunContext) -> dict[str, Any]:
    """What identifies an adapted model besides data and target: method, its settings, seed, network."""
    return {"adaptation": method.name, "settings": dataclasses.asdict(adapt_config), "seed": ctx.spec.seed,
            "model_name": networks.model_name(ctx)}


def adapted_stage(tctx: RunContext, method: Method, adapt_config: Any) -> dict[str, Any]:
    """The model adapted to ``tctx.target`` by ``method`` (trained once, cached per target and settings)."""

    def build() -> dict[str, Any]:
        model = method.train(adapt_config, tctx).model
        return {"model": {k: v.detach().cpu() for k, v in networks.unwrap(model).state_dict().items()},
                "reports": [dict(report) for report in getattr(tctx.session, "reports", [])[-1:]]}

    return tctx.cached_stage("hdrq_adapted", key=adaptation_key(method, adapt_config, tctx), build=build)


def unlabeled_images(dataset: Any, count: int, seed: int) -> torch.Tensor:
    """``count`` seeded random unlabeled images ``[N, ...]`` of a target training split (all when fewer)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return torch.stack([dataset[int(index)]["image"] for index in order.sort().values])


def quantized_stage(tctx: RunContext, adapted: nn.Module, source: nn.Module, ptq: PtqConfig,
                    adapted_key: dict[str, Any]) -> dict[str, Any]:
    """The quantized specialist of ``tctx.target`` (block reconstruction on unlabeled target images), cached per
    (target, adaptation, PTQ settings); HDRQ-only settings are left out of BRECQ/QDrop keys."""
    settings = dataclasses.asdict(ptq)
    if ptq.method != "hdrq":
        settings = {k: v for k, v in settings.items() if k not in HDRQ_ONLY_FIELDS}

    def build() -> dict[str, Any]:
        images = unlabeled_images(tctx.target_dataset(), ptq.calibration_images, tctx.spec.seed)
        started = time.perf_counter()
        quantized, report = quantize_and_reconstruct(adapted, images.to(tctx.device), ptq, base_model=source)
        return {"model": quantized.cpu(), "seconds": time.perf_counter() - started,
                "loop_seconds": sum(unit.seconds for unit in report.units),
                "iterations": sum(unit.iterations for unit in report.units),
                "units": [dataclasses.asdict(unit) for unit in report.units], "movement": report.movement}

    return tctx.cached_stage("hdrq_ptq", key={"ptq": settings, "adapted": adapted_key}, build=build)


def load_model(ctx: RunContext, state: dict[str, torch.Tensor]) -> nn.Module:
    """A network of the run's architecture with ``state`` loaded, in eval mode on the run's device."""
    model = ctx.build_model(pretrained=False)
    model.load_state_dict(state)
    return model.eval()


def selection_images(ctx: RunContext) -> list[torch.Tensor]:
    """The target's label-free selection subset (the images finish_run predicts), as batches of 8."""
    dataset = ctx.target_dataset()
    indices = selection_subset(len(dataset), size=ctx.spec.selection_size, seed=ctx.spec.selection_seed)
    return [torch.stack([dataset[int(i)]["image"] for i in chunk]) for chunk in torch.tensor(indices).split(8)]


def prepare_hdrq(config: HdrqConfig, ctx: RunContext) -> None:
    """Shared stages of a sweep: the source model and every target's adapted model (PTQ depends on swept values)."""
    method, adapt_config = resolve_adaptation(config, ctx.task)
    stages.source_stage(ctx, source_settings_of(method, adapt_config))
    for target in merge_targets(config, ctx):
        with target_context(ctx, target) as tctx:
            adapted_stage(tctx, method, adapt_config)


# --------------------------------------------------------------------------------------------------------------
# The trial
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Specialists:
    """Every target's specialist (quantized, or the adapted FP model for ptq_method none), the unlabeled selection
    images of each target, and the PTQ stages (timings, per-unit reports) they came from."""

    models: dict[str, nn.Module]
    images: dict[str, list[torch.Tensor]]
    ptq_stages: dict[str, dict[str, Any]]
    # Each specialist's labels on its target's images (merge quality's references); filled by reference_labels().
    references: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def reference_labels(self) -> dict[str, torch.Tensor]:
        """The specialists' arg-max labels on their targets' images, predicted on first use and kept, so repeated
        merges (merge draws) do not re-run the specialists; predicted again if the targets changed since."""
        if self.references is None or set(self.references) != set(self.models):
            self.references = specialist_references(self.models, self.images)
        return self.references


@dataclass
class Merge:
    """A merged model, its label-free merge quality and the metrics reported with it."""

    model: nn.Module
    quality: Any  # raysel.quant.merge_quality.MergeQuality
    metrics: dict[str, Any]


def build_specialists(config: HdrqConfig, ctx: RunContext, targets: tuple[str, ...],
                      watch: training.Stopwatch | None = None) -> Specialists:
    """Steps 1-3 of the module doc: source stage, per-target adaptation and PTQ (all cached stages)."""
    watch = watch or training.Stopwatch()
    method, adapt_config = resolve_adaptation(config, ctx.task)
    with watch.time("source_stage"):
        source = load_model(ctx, stages.source_stage(ctx, source_settings_of(method, adapt_config))["model"])
    ptq = config.ptq_config(ctx.spec.seed) if config.ptq_method != FULL_PRECISION else None
    specialists = Specialists({}, {}, {})
    for target in targets:
        with target_context(ctx, target) as tctx:
            with watch.time("adaptation_stage"):
                adapted = load_model(tctx, adapted_stage(tctx, method, adapt_config)["model"])
            if ptq is not None:
                with watch.time("ptq_stage"):
                    stage = quantized_stage(tctx, adapted, source, ptq, adaptation_key(method, adapt_config, tctx))
                specialists.ptq_stages[target] = stage
                adapted = stage["model"].to(ctx.device).eval()
            specialists.models[target] = adapted
            specialists.images[target] = selection_images(tctx)
    return specialists


def merge_specialists(config: HdrqConfig, ctx: RunContext, specialists: Specialists,
                      watch: training.Stopwatch | None = None, merge_seed: int | None = None) -> Merge:
    """Steps 4-5: merge (noise sampling eq. 12 or float rounding eq. 11), merge quality and error barrier.

    ``merge_seed`` seeds the noise-sampling draw (default: the run's seed); the paper averages 30 such draws."""
    watch = watch or training.Stopwatch()
    with watch.time("merge"):
        merged = merge_models(list(specialists.models.values()),
                              rounding="noise" if config.noise_sampling else "float", num_samples=config.merge_samples,
                              seed=ctx.spec.seed if merge_seed is None else merge_seed).eval()
    with watch.time("merge_quality"):
        quality = merge_quality(merged, specialists.models, specialists.images,
                                references=specialists.reference_labels())
    metrics: dict[str, Any] = {f"merge_quality_{target}": value for target, value in quality.per_target.items()}
    if config.barrier_points:
        with watch.time("error_barrier"):
            metrics["error_barrier"] = mean_error_barrier(specialists.models, specialists.images,
                                                          config.barrier_points)
    stages = specialists.ptq_stages.values()
    if stages:
        loop_seconds = sum(stage["loop_seconds"] for stage in stages)
        iterations = sum(stage["iterations"] for stage in stages)
        metrics["ptq_iterations_per_second"] = iterations / loop_seconds if loop_seconds > 0 else math.nan
        metrics["ptq_seconds"] = sum(stage["seconds"] for stage in stages)
        metrics.update(mean_movement(list(stages)))
    return Merge(merged, quality, metrics)


def mean_movement(stages: list[dict[str, Any]]) -> dict[str, float]:
    """``ptq_<measure>``: each layer-mean movement measure (:mod:`raysel.quant.movement`) averaged over the
    specialists, so a sweep sees whether reconstruction changed the solution; none from stages cached before
    movement was recorded (a mean over some specialists would compare unlike things), none for unlearned measures."""
    movements = [stage.get("movement") for stage in stages]
    if not movements or any(movement is None for movement in movements):
        return {}
    return {f"ptq_{measure}": sum(m[measure] for m in movements) / len(movements) for measure in MOVEMENT_MEASURES
            if all(m.get(measure) is not None for m in movements)}


def train_hdrq(config: HdrqConfig, ctx: RunContext) -> TrainResult:
    """Adapt every target, quantize each specialist, merge them and score the merge without labels (module doc).

    Reports once (``merge_quality``, per-target agreement, error barrier, target confidence, PTQ speed) with a
    checkpoint of the merged model; a restarted trial returns the checkpointed model without recomputing.
    """
    config.validate()
    targets = merge_targets(config, ctx)
    restored = ctx.restore()
    if restored is not None:
        return merged_result(restored["merged"].to(ctx.device).eval(), restored["extras"])
    watch = training.Stopwatch()
    merge = merge_specialists(config, ctx, build_specialists(config, ctx, targets, watch), watch)
    metrics = {**merge.metrics, **{f"seconds_{name}": value for name, value in watch.seconds.items()}}
    extras = {"evaluation_targets": list(targets), "scores": {"merge_quality": merge.quality.score},
              "metrics": metrics}
    report = EpochReport.from_measurements(epoch=1, iteration=1, measurements={
        "merge_quality": merge.quality.score,
        TARGET_CONFIDENCE: training.target_confidence(merge.model, ctx, ctx.target_dataset()), **metrics})
    ctx.report(report, checkpoint_state={"merged": merge.model, "extras": extras,
                                         "config": dataclasses.asdict(config)}, model=merge.model)
    return merged_result(merge.model, extras)


def merged_result(model: nn.Module, extras: dict[str, Any]) -> TrainResult:
    """The merged model as a TrainResult saved whole, with its evaluation targets, merge quality and metrics."""
    return TrainResult(model, saved_as=MODULE, scores=dict(extras["scores"]), metrics=dict(extras["metrics"]),
                       evaluation_targets=tuple(extras["evaluation_targets"]))


def mean_error_barrier(specialists: dict[str, nn.Module], images: dict[str, list[torch.Tensor]],
                       num_points: int) -> float:
    """Label-free error barrier (eq. 2) between every pair of specialists, each on its own target's images
    (the first :data:`BARRIER_IMAGES` of the selection subset), averaged over pairs."""
    barriers = []
    for first, second in itertools.combinations(specialists, 2):
        subset_a = torch.cat(images[first])[:BARRIER_IMAGES]
        subset_b = torch.cat(images[second])[:BARRIER_IMAGES]
        barriers.append(error_barrier(specialists[first], specialists[second], subset_a, subset_b,
                                      num_points=num_points).barrier)
    return float(sum(barriers) / len(barriers))


register(Method(
    name="hdrq",
    tasks=("segmentation", "classification"),
    config_class=HdrqConfig,
    train=train_hdrq,
    prepare_shared=prepare_hdrq,
    # The source and adapted models depend on the adaptation only; quantization and merging are the trial's own.
    shared_stage_key=lambda config: (config.targets, config.adaptation, config.adaptation_settings),
    default_selectors=("merge_quality", "fmiou"),
    description="HDRQ (ICML 2025): per-target adaptation, merge-friendly PTQ (noise-based Hessian and distance "
                "regularization), noise-sampling merging into one multi-target model, label-free merge quality",
))
