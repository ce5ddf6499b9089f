"""The two shared training stages, cached with ``ctx.cached_stage`` because they do not depend on swept hyperparameters:
:func:`source_stage` (supervised training on labelled source data; segmentation and classification) and
:func:`adversarial_warmup_stage` (source CE + output-space LSGAN adversarial training, HIAST Eq. 2-3).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

from raysel.hyperparameters import bounded, check_fields
from raysel.methods.augment import source_augment, weak_augment
from raysel.methods.base import RunContext
from raysel.methods.losses import cross_entropy, lsgan_discriminator_loss, lsgan_generator_loss
from raysel.methods.networks import freeze_batchnorm, model_name, unwrap
from raysel.methods.optim import build_optimizer, build_scheduler
from raysel.methods.training import MemoizedDataset, RunningMean, infinite_batches, stop_if_not_finite
from raysel.models.discriminators import OutputSpaceDiscriminator
from raysel.progress import progress

__all__ = [
    "SourceStageSettings", "source_stage_field", "SourceStageFields", "train_on_source", "source_stage",
    "AdversarialWarmupSettings", "train_adversarial_warmup", "adversarial_warmup_stage",
]


# --------------------------------------------------------------------------------------------------------------
# Stage 1: supervised training on the labelled source domain (source-only model)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceStageSettings:
    """Hyperparameters of source-only training (none of them is swept by the adaptation methods' sweeps)."""

    learning_rate: float = bounded(1e-3, gt=0.0)
    iterations: int = bounded(600, ge=1)
    # None: 8 segmentation images, 32 classification images (measured on digits: batches of 8 under BatchNorm
    # reached 83% held-out source accuracy and collapsed to chance with photometric ops; 32 reached 91-98%).
    batch_size: int | None = bounded(None, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = bounded(5e-4, ge=0.0)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    backbone_lr_ratio: float = bounded(1.0, gt=0.0)
    freeze_batchnorm: bool = False
    augment: bool = True
    # Photometric ops from the strong-augmentation pool on source images. A network trained from scratch on a
    # single synthetic look otherwise transfers to nothing (measured: dusk_city 3.2 mIoU, chance 1.6); ImageNet
    # initialisation gives the papers' source-only models that robustness, a small CPU model needs it from here.
    photometric_ops: int = bounded(2, ge=0)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid setting (messages say "source ...")."""
        check_fields(self, label="source ")

    def batch_size_for(self, task: str, images_per_worker: int) -> int:
        """The source batch size: the explicit value, else the per-task default capped at the images one worker
        holds (tiny test datasets), so a default never asks for more than exists."""
        if self.batch_size is not None:
            return self.batch_size
        return max(1, min(8 if task == "segmentation" else 32, images_per_worker))


def source_stage_field(name: str) -> Any:
    """A config field with the default and declared range of ``SourceStageSettings.<name>``, so a method's config
    re-exposes a source-stage setting without declaring its default or range a second time."""
    declared = {stage_field.name: stage_field for stage_field in dataclasses.fields(SourceStageSettings)}[name]
    return dataclasses.field(default=declared.default, metadata=declared.metadata)


@dataclass(frozen=True)
class SourceStageFields:
    """The source-only stage's hyperparameters in every adapting method's config (a base class), under the flat
    names YAML search spaces and ``--set`` use; defaults and ranges are :class:`SourceStageSettings`' own."""

    source_learning_rate: float = source_stage_field("learning_rate")
    source_iterations: int = source_stage_field("iterations")

    def source_settings(self) -> SourceStageSettings:
        """The cached source-only stage the method starts from (the source_only method's defaults otherwise)."""
        return SourceStageSettings(learning_rate=self.source_learning_rate, iterations=self.source_iterations)


def train_on_source(ctx: RunContext, settings: SourceStageSettings) -> dict[str, Any]:
    """Train a fresh model on labelled source data with cross-entropy; returns ``{"model": state_dict, ...}``.

    Works for both tasks (pixel CE with ignore 255, or image CE). Segmentation batches get the weak geometric
    augmentation (flip + scaled crop); digits are not flipped. DDP via ``ctx.distributed``/``ctx.loader``.
    """
    torch.manual_seed(ctx.spec.seed)
    model = ctx.build_model(pretrained=True)
    if settings.freeze_batchnorm:
        freeze_batchnorm(model)
    model.train()
    network = ctx.distributed(model)
    optimizer = build_optimizer(network, settings.learning_rate, optimizer=settings.optimizer,
                                weight_decay=settings.weight_decay, backbone_lr_ratio=settings.backbone_lr_ratio)
    scheduler = build_scheduler(optimizer, settings.iterations, settings.schedule)
    source = MemoizedDataset(ctx.source_dataset())
    batch_size = settings.batch_size_for(ctx.task, len(source) // ctx.world_size)
    loader = ctx.loader(source, batch_size, shuffle=True, drop_last=True, seed_offset=11)
    batches = infinite_batches(loader)
    generator = torch.Generator().manual_seed(ctx.spec.seed * 1009 + ctx.rank)
    segmentation = ctx.task == "segmentation"
    running = RunningMean()
    started = time.perf_counter()
    bar = progress(settings.iterations, "source training", disable=not ctx.is_main, status_file=ctx.progress_file)
    for iteration in range(settings.iterations):
        batch = next(batches)
        images, labels = batch["image"], batch["label"]
        if settings.augment:
            images, labels = source_augment(images, labels, generator, segmentation, settings.photometric_ops)
        with ctx.acceleration.autocast():
            logits = network(images.to(ctx.device)).float()
        loss = cross_entropy(logits, labels.to(ctx.device))
        stop_if_not_finite(ctx, loss, f"source stage iteration {iteration}")
        optimizer.zero_grad(set_to_none=True)
        ctx.acceleration.backward_step(loss, optimizer)
        scheduler.step()
        running.add(loss=loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.update(1)
    bar.close()
    return {"model": {k: v.detach().cpu() for k, v in unwrap(network).state_dict().items()},
            "final_loss": running.means(ctx).get("loss", float("nan")), "seconds": time.perf_counter() - started,
            "iterations": settings.iterations}


def source_stage(ctx: RunContext, settings: SourceStageSettings) -> dict[str, Any]:
    """The source-only model, trained once per (data, model, settings, seed) and shared by every target and trial."""
    settings.validate()
    key = {"settings": dataclasses.asdict(settings), "seed": ctx.spec.seed, "model_name": model_name(ctx),
           "task": ctx.task}
    return ctx.cached_stage("source_only", key=key, build=lambda: train_on_source(ctx, settings), per_target=False)


# --------------------------------------------------------------------------------------------------------------
# Stage 2: adversarial warm-up (AdaptSegNet-style output-space alignment with a least-squares discriminator)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdversarialWarmupSettings:
    """Warm-up hyperparameters (HIAST §3.3, Eq. 2-3). Paper/reference values in brackets.

    lambda_at: adversarial weight [0.05, HIAST/IAST code]; iterations [4 epochs of GTA5, batch 4];
    learning_rate: segmentation net, Adam [2e-5]; discriminator_learning_rate [1e-4 HIAST, 2e-5 IAST];
    discriminator_width: ndf of the FC discriminator [64]; freeze_batchnorm [True in the reference, whose
    DeepLab keeps ImageNet BN statistics at batch 1-4]. We train BN here: the small networks learn BN from scratch,
    and the concatenated source+target batch gives running statistics that cover the target (on the embedded
    benchmark this lifts the warm-up from 21.6 to 25.4 mIoU on day_city and from 1.8 to 7.0 on dusk_city, seed 0).
    Self-training then freezes these statistics, as the paper does.
    """

    lambda_at: float = bounded(0.05, ge=0.0)
    iterations: int = bounded(200, ge=0)
    batch_size: int = bounded(4, ge=1)
    learning_rate: float = bounded(2e-4, gt=0.0)
    discriminator_learning_rate: float = bounded(1e-4, gt=0.0)
    discriminator_width: int = bounded(16, ge=1)
    weight_decay: float = 5e-4
    backbone_lr_ratio: float = 1.0
    freeze_batchnorm: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid setting (messages say "warm-up ...")."""
        check_fields(self, label="warm-up ")


@dataclass
class _WarmupParts:
    """The warm-up's networks, optimisers and batch streams, built in a fixed order (seeded initialisation)."""

    network: Any
    discriminator: Any
    discriminator_network: Any
    optimizer: Any
    scheduler: Any
    discriminator_optimizer: Any
    source_batches: Any
    target_batches: Any


def _warmup_parts(ctx: RunContext, initial_state: dict[str, torch.Tensor],
                  settings: AdversarialWarmupSettings) -> _WarmupParts:
    """Build the warm-up's segmentation network (from ``initial_state``), discriminator, optimisers and loaders."""
    torch.manual_seed(ctx.spec.seed + 1)
    model = ctx.build_model(pretrained=False)
    model.load_state_dict(initial_state)
    if settings.freeze_batchnorm:
        freeze_batchnorm(model)
    model.train()
    discriminator = OutputSpaceDiscriminator(ctx.num_classes, ndf=settings.discriminator_width).to(ctx.device)
    network = ctx.distributed(model)
    discriminator_network = ctx.distributed(discriminator)
    optimizer = build_optimizer(network, settings.learning_rate, weight_decay=settings.weight_decay,
                                backbone_lr_ratio=settings.backbone_lr_ratio)
    scheduler = build_scheduler(optimizer, settings.iterations, "cosine")
    discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=settings.discriminator_learning_rate,
                                               betas=(0.9, 0.99))
    source_batches = infinite_batches(ctx.loader(MemoizedDataset(ctx.source_dataset()), settings.batch_size,
                                                 seed_offset=21))
    target_batches = infinite_batches(ctx.loader(MemoizedDataset(ctx.target_dataset()), settings.batch_size,
                                                 seed_offset=22))
    return _WarmupParts(network, discriminator, discriminator_network, optimizer, scheduler, discriminator_optimizer,
                        source_batches, target_batches)


def _warmup_step(ctx: RunContext, parts: _WarmupParts, settings: AdversarialWarmupSettings,
                 generator: torch.Generator, iteration: int) -> dict[str, float]:
    """One warm-up step: the generator update (Eq. 2) with the discriminator frozen, then the discriminator's (Eq. 3)."""
    source, target = next(parts.source_batches), next(parts.target_batches)
    source_images, source_labels = weak_augment(source["image"], source["label"], generator)
    target_images, _ = weak_augment(target["image"], None, generator)
    count = source_images.shape[0]
    with ctx.acceleration.autocast():
        logits = parts.network(torch.cat([source_images, target_images]).to(ctx.device)).float()
    probabilities = logits.softmax(dim=1)
    segmentation_loss = cross_entropy(logits[:count], source_labels.to(ctx.device))
    parts.discriminator.requires_grad_(False)
    adversarial_loss = lsgan_generator_loss(parts.discriminator(probabilities[count:]))
    loss = segmentation_loss + settings.lambda_at * adversarial_loss
    stop_if_not_finite(ctx, loss, f"warm-up iteration {iteration}")
    parts.optimizer.zero_grad(set_to_none=True)
    ctx.acceleration.backward_step(loss, parts.optimizer)
    parts.scheduler.step()
    parts.discriminator.requires_grad_(True)
    scores = parts.discriminator_network(probabilities.detach())
    discriminator_loss = lsgan_discriminator_loss(scores[:count], scores[count:])
    parts.discriminator_optimizer.zero_grad(set_to_none=True)
    discriminator_loss.backward()
    parts.discriminator_optimizer.step()
    return {"loss": loss.item(), "segmentation": segmentation_loss.item(), "adversarial": adversarial_loss.item(),
            "discriminator": discriminator_loss.item()}


def train_adversarial_warmup(ctx: RunContext, initial_state: dict[str, torch.Tensor],
                             settings: AdversarialWarmupSettings) -> dict[str, Any]:
    """Source CE + lambda_at * LSGAN output-space adversarial loss (Eq. 2), discriminator by Eq. 3.

    Starts from the source-only model (the reference pipeline: source-only, then AdaptSegNet-style AT). One
    forward of the segmentation network on the concatenated source+target batch per step (DDP-safe); the
    discriminator is DDP-wrapped for its own step and called unwrapped, with frozen parameters, in the
    generator step so its gradients never leak into the segmentation update.
    """
    parts = _warmup_parts(ctx, initial_state, settings)
    generator = torch.Generator().manual_seed(ctx.spec.seed * 2003 + ctx.rank)
    running = RunningMean()
    started = time.perf_counter()
    bar = progress(settings.iterations, "adversarial warm-up", disable=not ctx.is_main, status_file=ctx.progress_file)
    for iteration in range(settings.iterations):
        losses = _warmup_step(ctx, parts, settings, generator, iteration)
        running.add(**losses)
        bar.set_postfix(loss=f"{losses['loss']:.3f}", refresh=False)
        bar.update(1)
    bar.close()
    return {"model": {k: v.detach().cpu() for k, v in unwrap(parts.network).state_dict().items()},
            "statistics": running.means(ctx), "seconds": time.perf_counter() - started,
            "iterations": settings.iterations}


def adversarial_warmup_stage(ctx: RunContext, source_settings: SourceStageSettings,
                             warmup_settings: AdversarialWarmupSettings) -> dict[str, Any]:
    """The warm-up model G_0 (cached per data, model, source and warm-up settings, seed): source stage, then AT.

    Segmentation only; the task of the method that calls it is checked once before any stage runs
    (:meth:`raysel.registry.Method.check_task`)."""
    warmup_settings.validate()
    key = {"source": dataclasses.asdict(source_settings), "warmup": dataclasses.asdict(warmup_settings),
           "seed": ctx.spec.seed, "model_name": model_name(ctx)}

    def build() -> dict[str, Any]:
        initial = source_stage(ctx, source_settings)
        return train_adversarial_warmup(ctx, initial["model"], warmup_settings)

    return ctx.cached_stage("adversarial_warmup", key=key, build=build)
