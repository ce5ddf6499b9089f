"""GSDA: Unsupervised Domain Adaptation with Hierarchical Gradient Synchronization (Hu, Kan, Shan, Chen; CVPR 2020).

No official code exists; the paper (``papers/gsda.md`` §2, Eq. 1-17, settings §3.1) is the specification.

* Feature extractor E = ``model.forward_features``, classifier C = ``model.head`` (any raysel classification model).
* L^c = L^s_c + alpha * L^t_c: source cross-entropy plus the conditional entropy of target predictions (Eq. 3-5).
* Adversarial discriminators on E(x) (DANN MLPs, :class:`~raysel.models.discriminators.DomainDiscriminator`):
  one global D^dom (Eq. 6), one D^cls_k per class weighted by p_i^k (Eq. 7: one-hot ground truth for source,
  softmax prediction for target) and one D^grp_q per group of classes weighted by p_i^q = sum_{k in q} p_i^k (Eq. 8);
  L^l = sum_q L^grp_q + sum_k L^cls_k (Eq. 9). Groups are a seeded random partition of the classes, no overlap.
* Hierarchical gradient synchronization (Eq. 10-12) on the gradients of those losses *with respect to the features*,
  computed with ``torch.autograd.grad(create_graph=True)`` so that L^syn back-propagates into E and into the
  discriminators. All per-discriminator feature gradients come from one autograd call: every discriminator sees its
  own (expanded) copy of the feature batch, so d(sum_j L_j)/d(copy_j) = dL_j/dE(x).
* Optimisation: **explicit alternating steps** (Eq. 14-17), not a gradient reversal layer. Per iteration, one
  forward of E and C on the concatenated source+target batch, then
  (1) D-step on the detached features: D minimises L^g + L^l + beta * L^syn (Eq. 14-15);
  (2) E/C-step against the updated, frozen D: minimise L^c + beta * L^syn - lambda_p (L^g + L^l) (Eq. 16-17).
  Why not a GRL: E must *maximise* L^g + L^l but *minimise* L^syn, and both reach E through the same features, so
  a GRL in front of the discriminators would also reverse the synchronization gradient. The cost is one extra
  discriminator forward per step (the CNN runs once).
* C receives only dL^c/d theta_C (Eq. 17): the class probabilities that weight the local discriminators are
  detached, so the classifier cannot lower the adversarial terms by moving probability mass.

Choices where the paper is silent or our CPU setting differs (each a config field):

* Losses are batch means (sums divided by the batch size) instead of the paper's sums over the data set; one common
  factor 1/N for every discriminator, so the synchronization relations of Eq. 10-11 are unchanged.
* ``adversarial_schedule="dann"`` multiplies -(L^g + L^l) in the E-step by DANN's lambda_p = 2/(1+exp(-10 p)) - 1
  (the paper gives no schedule; DANN/CDAN/MADA, whose settings it follows, use this one). ``"constant"`` = Eq. 16.
* ``confidence_threshold``: §3.1 says only confidently pseudo-labelled target samples are used; target samples whose
  max probability is below it get zero class/group weight (0 = every sample weighted by its probabilities, Eq. 7).
* ``init_from_source=True`` starts from the shared cached source-only model (:func:`stages.source_stage`, the same
  stage the ``source_only`` baseline trains) because the CPU default ``small_cnn`` has no ImageNet weights; the
  paper trains ImageNet-initialised ResNet-50 jointly from the start (``init_from_source=False``).
* Class-balanced re-sampling of source images (§3.1) is not done: the loaders are sharded uniform samplers.
* ``alignment``: ``"hierarchical"`` (the full method; beta=0 gives Table 1 row 3, Glb+Cls+Grp), ``"class"`` (row 2,
  Glb+Cls) and ``"global"`` (row 1, only D^dom, no local discriminators and no synchronization).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from raysel.errors import ConfigError
from raysel.hyperparameters import bounded, check_fields
from raysel.methods import optim, stages, training
from raysel.methods.base import RunContext, require
from raysel.methods.reports import LOSS, TARGET_CONFIDENCE, EpochReport
from raysel.methods.result import TrainResult
from raysel.methods.losses import cross_entropy
from raysel.models.discriminators import DomainDiscriminator, dann_coefficient
from raysel.registry import Method, register

__all__ = [
    "SOURCE_DOMAIN_LABEL", "TARGET_DOMAIN_LABEL", "GsdaConfig", "group_assignment", "group_membership",
    "group_probabilities", "conditional_entropy", "weighted_domain_losses", "feature_gradient_magnitudes",
    "synchronization_loss", "HierarchicalDiscriminators", "AlignmentLosses", "discriminator_weights",
    "alignment_losses", "class_probabilities_for_alignment", "FeaturesAndLogits", "adversarial_coefficient",
    "Trainables", "build_trainables", "train_gsda", "gsda_step",
]

SOURCE_DOMAIN_LABEL = 1.0  # d_i in Eq. 6-8: 1 for source, 0 for target
TARGET_DOMAIN_LABEL = 0.0


# --------------------------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GsdaConfig(stages.SourceStageFields):
    """GSDA hyperparameters. Paper values (§3.1, ResNet-50) in comments; defaults are sized for digits on CPU.

    The inherited ``source_*`` fields set the cached source-only stage GSDA starts from when ``init_from_source``.
    """

    # Eq. 5 target entropy weight [paper: 0.02 Office-31/Office-Home, 0.2 VisDA-2017/PDA]
    alpha: float = bounded(0.02, ge=0.0)
    # Eq. 13 synchronization weight [paper: 1.0 Office-31/Office-Home, 10.0 VisDA-2017/PDA]
    beta: float = bounded(1.0, ge=0.0)
    # b, number of class groups [paper: 6 of 31, 13 of 65, 4 of 12 classes]; 1..num_classes
    groups: int = bounded(3, ge=1)
    group_seed: int = 0  # seed of the random class-to-group partition
    # "hierarchical" | "class" | "global" (Table 1 ablation rows)
    alignment: Literal["hierarchical", "class", "global"] = "hierarchical"
    iterations: int = bounded(150, ge=1)  # E/C + D updates [paper: not given]
    batch_size: int = bounded(32, ge=1)  # images per domain per step (split across workers) [paper: not given]
    # "sgd" | "adam" for E/C and D [paper: not given; DANN/CDAN practice: SGD momentum 0.9]
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = bounded(0.01, gt=0.0)  # E/C head learning rate [DANN/CDAN practice: 0.01, backbone 0.001]
    backbone_lr_ratio: float = bounded(1.0, gt=0.0)  # backbone lr = ratio * learning_rate [0.1 for ImageNet ResNet-50]
    discriminator_learning_rate: float = bounded(0.01, gt=0.0)  # all discriminators
    momentum: float = bounded(0.9, ge=0.0, lt=1.0)
    weight_decay: float = bounded(5e-4, ge=0.0)
    # lr schedule of E/C and D: "cosine" | "poly" | "constant"
    schedule: Literal["cosine", "poly", "constant"] = "constant"
    # "dann" (lambda_p ramp 0 -> 1) | "constant" (Eq. 16 exactly)
    adversarial_schedule: Literal["dann", "constant"] = "dann"
    discriminator_hidden: int = bounded(128, ge=1)  # DomainDiscriminator width [DANN ResNet-50: 1024]
    discriminator_dropout: float = bounded(0.5, ge=0.0, lt=1.0)  # [DANN: 0.5]
    # target samples below it get no class/group weight (0 = Eq. 7 exactly)
    confidence_threshold: float = bounded(0.0, ge=0.0, lt=1.0)
    init_from_source: bool = True  # start from the cached source-only model [paper: ImageNet init, joint training]
    num_reports: int = bounded(4, ge=1)  # reports (with checkpoints) spread evenly over the iterations

    def validate(self, num_classes: int | None = None) -> None:
        """Raise ConfigError naming the first invalid hyperparameter; ``num_classes`` also bounds ``groups``."""
        check_fields(self)
        if num_classes is not None:
            require(self.groups <= num_classes,
                    f"groups must be between 1 and the number of classes ({num_classes}), got {self.groups}")
        self.source_settings().validate()

    @property
    def uses_groups(self) -> bool:
        return self.alignment == "hierarchical"

    @property
    def uses_classes(self) -> bool:
        return self.alignment in ("class", "hierarchical")


# --------------------------------------------------------------------------------------------------------------
# Groups of classes (Eq. 8)
# --------------------------------------------------------------------------------------------------------------


def group_assignment(num_classes: int, groups: int, seed: int) -> torch.Tensor:
    """Random partition of the classes into ``groups`` non-overlapping groups of near-equal size (paper §2.2).

    Returns the group index of every class, int64 ``[num_classes]``; deterministic in ``seed``.
    """
    if not 1 <= groups <= num_classes:
        raise ConfigError(f"groups must be between 1 and the number of classes ({num_classes}), got {groups}")
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(num_classes, generator=generator)
    assignment = torch.empty(num_classes, dtype=torch.long)
    for group, members in enumerate(torch.tensor_split(permutation, groups)):
        assignment[members] = group
    return assignment


def group_membership(assignment: torch.Tensor, groups: int) -> torch.Tensor:
    """Class-to-group membership matrix M ``[num_classes, groups]`` with M[k, q] = 1 iff class k is in group q."""
    return F.one_hot(assignment, groups).float()


def group_probabilities(class_probabilities: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """p_i^q = sum_{k in q} p_i^k (Eq. 8): ``[N, r] @ [r, b] -> [N, b]``."""
    return class_probabilities @ membership


# --------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------


def conditional_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean conditional entropy -sum_k p(k) log p(k) of the predictions (Eq. 4, averaged over the batch)."""
    log_probabilities = F.log_softmax(logits, dim=1)
    return -(log_probabilities.exp() * log_probabilities).sum(dim=1).mean()


def weighted_domain_losses(logits: torch.Tensor, domain_labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-discriminator losses L_j = (1/N) sum_i w_ij H(D_j(E(x_i)), d_i) (Eq. 6-8), shape ``[K]``.

    ``logits`` ``[K, N]`` (discriminator j on sample i), ``domain_labels`` ``[N]`` (1 source, 0 target),
    ``weights`` ``[N, K]`` (1 for D^dom, p_i^q for groups, p_i^k for classes). Every loss is divided by the same
    batch size N (not by its weight sum), keeping L^grp_q and sum_{k in q} L^cls_k on the same scale.
    """
    per_sample = F.binary_cross_entropy_with_logits(
        logits, domain_labels.unsqueeze(0).expand_as(logits), reduction="none")
    return (per_sample * weights.t()).sum(dim=1) / logits.shape[1]


def feature_gradient_magnitudes(losses: torch.Tensor, features_per_discriminator: torch.Tensor) -> torch.Tensor:
    """sum_i ||dL_j / dE(x_i)||_2 for every discriminator j (the terms of Eq. 10-11), shape ``[K]``.

    ``features_per_discriminator[j]`` is the copy of the feature batch that only discriminator j saw, so one
    ``autograd.grad`` of sum_j L_j yields every dL_j/dE(x). ``create_graph=True`` keeps the result differentiable
    (first-order in the features, as the paper notes) so L^syn trains E and the discriminators.
    """
    (gradients,) = torch.autograd.grad(losses.sum(), features_per_discriminator, create_graph=True)
    return torch.linalg.vector_norm(gradients, dim=2).sum(dim=1)


def synchronization_loss(domain_magnitude: torch.Tensor, group_magnitudes: torch.Tensor,
                         class_magnitudes: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """L^syn = (1/b) sum_q |G^grp_q - sum_{k in q} G^cls_k| + |G^dom - sum_q G^grp_q| (Eq. 10, 11, 12).

    G are feature-gradient magnitudes from :func:`feature_gradient_magnitudes`; ``membership`` is ``[r, b]``.
    """
    group_vs_classes = (group_magnitudes - class_magnitudes @ membership).abs()  # Eq. 10, one per group
    domain_vs_groups = (domain_magnitude - group_magnitudes.sum()).abs()  # Eq. 11
    return group_vs_classes.mean() + domain_vs_groups  # Eq. 12


# --------------------------------------------------------------------------------------------------------------
# The discriminators
# --------------------------------------------------------------------------------------------------------------


class HierarchicalDiscriminators(nn.Module):
    """D^dom, D^grp_1..b and D^cls_1..r (DANN MLPs on features), in that order along the first axis of every tensor."""

    def __init__(self, feature_dim: int, num_groups: int, num_classes: int, hidden: int = 1024,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.num_classes = num_classes
        self.discriminators = nn.ModuleList(
            DomainDiscriminator(feature_dim, hidden=hidden, dropout=dropout)
            for _ in range(1 + num_groups + num_classes))

    @property
    def count(self) -> int:
        return len(self.discriminators)

    def forward(self, features_per_discriminator: torch.Tensor) -> torch.Tensor:
        """Domain logits ``[K, N]`` from features ``[K, N, F]`` (discriminator j reads slice j)."""
        return torch.stack([discriminator(features) for discriminator, features
                            in zip(self.discriminators, features_per_discriminator)])


@dataclass
class AlignmentLosses:
    """L^g (Eq. 6), L^l (Eq. 9), L^syn (Eq. 12; zero without groups) and the gradient magnitudes behind L^syn."""

    global_loss: torch.Tensor
    local_loss: torch.Tensor
    sync_loss: torch.Tensor
    magnitudes: torch.Tensor | None = None

    @property
    def adversarial(self) -> torch.Tensor:
        """L^g + L^l, the term D minimises and E maximises."""
        return self.global_loss + self.local_loss


def discriminator_weights(class_probabilities: torch.Tensor, membership: torch.Tensor | None,
                          discriminators: HierarchicalDiscriminators) -> torch.Tensor:
    """Sample weights ``[N, K]``: 1 for D^dom, p_i^q for D^grp_q (Eq. 8), p_i^k for D^cls_k (Eq. 7)."""
    columns = [torch.ones_like(class_probabilities[:, :1])]
    if discriminators.num_groups:
        columns.append(group_probabilities(class_probabilities, membership))
    if discriminators.num_classes:
        columns.append(class_probabilities)
    return torch.cat(columns, dim=1)


def alignment_losses(discriminators: HierarchicalDiscriminators, features: torch.Tensor,
                     class_probabilities: torch.Tensor, domain_labels: torch.Tensor,
                     membership: torch.Tensor | None, synchronize: bool) -> AlignmentLosses:
    """Global, local and (optionally) synchronization losses of one batch of features (Eq. 6-12).

    ``features`` must require grad when ``synchronize`` (the D-step passes a detached leaf that requires grad);
    ``class_probabilities`` ``[N, r]`` are the detached one-hot/softmax weights p_i^k.
    """
    features_per_discriminator = features.unsqueeze(0).expand(discriminators.count, *features.shape)
    logits = discriminators(features_per_discriminator)
    weights = discriminator_weights(class_probabilities, membership, discriminators)
    losses = weighted_domain_losses(logits, domain_labels, weights)
    global_loss, local_loss = losses[0], losses[1:].sum()
    if not synchronize:
        return AlignmentLosses(global_loss, local_loss, torch.zeros_like(global_loss))
    if membership is None or not discriminators.num_groups:
        raise ValueError("gradient synchronization needs group and class discriminators (alignment='hierarchical')")
    magnitudes = feature_gradient_magnitudes(losses, features_per_discriminator)
    groups = discriminators.num_groups
    sync = synchronization_loss(magnitudes[0], magnitudes[1:1 + groups], magnitudes[1 + groups:], membership)
    return AlignmentLosses(global_loss, local_loss, sync, magnitudes)


def class_probabilities_for_alignment(source_labels: torch.Tensor, target_logits: torch.Tensor, num_classes: int,
                                      confidence_threshold: float = 0.0) -> torch.Tensor:
    """p_i^k of Eq. 7 for the concatenated batch: one-hot source labels, detached target softmax ``[N, r]``.

    Target samples whose max probability is below ``confidence_threshold`` get all-zero weights (§3.1).
    """
    source = F.one_hot(source_labels, num_classes).float()
    target = target_logits.detach().softmax(dim=1)
    if confidence_threshold > 0:
        target = target * (target.max(dim=1, keepdim=True).values >= confidence_threshold)
    return torch.cat([source, target])


# --------------------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------------------


class FeaturesAndLogits(nn.Module):
    """E and C in one forward, so the DDP wrapper sees the features every loss is computed from."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(images)
        return features, self.model.head(features)


def _batches_from(loader: DataLoader, iteration: int) -> Iterator[Any]:
    """The loader's batch stream positioned at ``iteration`` (deterministic shuffles: exact resume)."""
    per_epoch = max(1, len(loader))
    return itertools.islice(training.infinite_batches(loader, start_epoch=iteration // per_epoch),
                            iteration % per_epoch, None)


def _rng_state(ctx: RunContext) -> dict[str, torch.Tensor]:
    """This worker's random state (dropout masks): CPU, plus the current CUDA device's when training on GPU."""
    state = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return state


def _set_rng_state(ctx: RunContext, state: dict[str, torch.Tensor]) -> None:
    """Restore :func:`_rng_state` (the CUDA part only when it was saved on, and is restored to, a GPU)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], ctx.device)


def adversarial_coefficient(config: GsdaConfig, iteration: int) -> float:
    """lambda_p weighting -(L^g + L^l) in the E-step: DANN's ramp or the constant 1 of Eq. 16."""
    if config.adversarial_schedule == "constant":
        return 1.0
    return dann_coefficient(iteration / config.iterations)


def _initial_model(config: GsdaConfig, ctx: RunContext) -> nn.Module:
    """A fresh classification model, or the cached source-only model when ``init_from_source``."""
    model = ctx.build_model(pretrained=True)
    if config.init_from_source:
        stage = stages.source_stage(ctx, config.source_settings())
        model.load_state_dict(stage["model"])
    return model


@dataclass
class Trainables:
    """Everything a GSDA run updates, saved together in every checkpoint."""

    model: nn.Module
    discriminators: HierarchicalDiscriminators
    optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    discriminator_scheduler: torch.optim.lr_scheduler.LRScheduler

    def state_dict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name).state_dict() for field in dataclasses.fields(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for field in dataclasses.fields(self):
            getattr(self, field.name).load_state_dict(state[field.name])

    def scheduler_step(self) -> None:
        self.scheduler.step()
        self.discriminator_scheduler.step()


def build_trainables(config: GsdaConfig, ctx: RunContext, fresh: bool) -> Trainables:
    """Model (source-initialised when ``fresh`` and ``init_from_source``), discriminators, optimisers, schedules."""
    torch.manual_seed(ctx.spec.seed)  # the same initial weights on every worker
    model = _initial_model(config, ctx) if fresh else ctx.build_model(pretrained=False)
    torch.manual_seed(ctx.spec.seed + 7)
    discriminators = HierarchicalDiscriminators(
        model.feature_dim, config.groups if config.uses_groups else 0, ctx.num_classes if config.uses_classes else 0,
        hidden=config.discriminator_hidden, dropout=config.discriminator_dropout).to(ctx.device)
    optimizer = optim.build_optimizer(model, config.learning_rate, optimizer=config.optimizer,
                                       weight_decay=config.weight_decay, backbone_lr_ratio=config.backbone_lr_ratio,
                                       momentum=config.momentum)
    discriminator_optimizer = optim.build_optimizer(
        discriminators, config.discriminator_learning_rate, optimizer=config.optimizer,
        weight_decay=config.weight_decay, momentum=config.momentum)
    return Trainables(model, discriminators, optimizer, discriminator_optimizer,
                       optim.build_scheduler(optimizer, config.iterations, config.schedule),
                       optim.build_scheduler(discriminator_optimizer, config.iterations, config.schedule))


def train_gsda(config: GsdaConfig, ctx: RunContext) -> TrainResult:
    """Per-worker GSDA loop (alternating D-step / E,C-step, Eq. 14-17); returns the trained classifier.

    Reports ``num_reports`` times (``epoch`` counts the reports), each with a checkpoint of the model, the
    discriminators, optimisers, schedules and random state, so a restarted trial continues exactly where it stopped.
    """
    config.validate(ctx.num_classes)
    membership = (group_membership(group_assignment(ctx.num_classes, config.groups, config.group_seed), config.groups)
                  .to(ctx.device) if config.uses_groups else None)
    restored = ctx.restore()
    trainables = build_trainables(config, ctx, fresh=restored is None)
    iteration, epoch = 0, 0
    if restored is not None:
        trainables.load_state_dict(restored["trainables"])
        _set_rng_state(ctx, restored["rng_state"][ctx.rank % len(restored["rng_state"])])
        iteration, epoch = restored["iteration"], restored["epoch"]
    else:
        torch.manual_seed(ctx.spec.seed * 1000 + ctx.rank)  # dropout masks differ per worker, reproducibly
    network = ctx.distributed(FeaturesAndLogits(trainables.model))

    source_batches = _batches_from(ctx.loader(ctx.source_dataset(), config.batch_size, seed_offset=31), iteration)
    target_batches = _batches_from(ctx.loader(ctx.target_dataset(), config.batch_size, seed_offset=32), iteration)
    checkpoints = set(training.report_points(config.iterations, config.num_reports))
    running = training.RunningMean()
    started = time.perf_counter()
    trainables.model.train()
    trainables.discriminators.train()
    while iteration < config.iterations:
        with torch.random.fork_rng(devices=[]):  # DataLoader iterators draw seeds: keep dropout RNG exact on resume
            source, target = next(source_batches), next(target_batches)
        running.add(**gsda_step(config, ctx, network, trainables, membership, source, target, iteration))
        trainables.scheduler_step()
        iteration += 1
        if iteration in checkpoints:
            epoch += 1
            report = EpochReport.from_measurements(epoch=epoch, iteration=iteration, measurements={
                **running.means(ctx), "seconds_train_loop": time.perf_counter() - started})
            running.reset()
            state = {"trainables": trainables.state_dict(), "rng_state": ctx.all_gather_objects(_rng_state(ctx)),
                     "iteration": iteration, "epoch": epoch, "config": dataclasses.asdict(config)}
            ctx.report(report, checkpoint_state=state, model=trainables.model)
    trainables.model.eval()
    return TrainResult(trainables.model)


@dataclass
class _Batch:
    """One step's inputs to the alignment losses: features, logits, domain labels d_i and weights p_i^k."""

    features: torch.Tensor
    logits: torch.Tensor
    source_labels: torch.Tensor
    domain_labels: torch.Tensor
    class_probabilities: torch.Tensor

    @property
    def source_count(self) -> int:
        return self.source_labels.shape[0]


def _discriminator_step(config: GsdaConfig, ctx: RunContext, trainables: Trainables, batch: _Batch,
                        membership: torch.Tensor | None, synchronize: bool, iteration: int) -> torch.Tensor:
    """D-step: min L^g + L^l + beta L^syn over the discriminators with E fixed (Eq. 14-15); returns L^d."""
    trainables.discriminators.requires_grad_(True)
    fixed_features = batch.features.detach().requires_grad_(synchronize)
    losses = alignment_losses(trainables.discriminators, fixed_features, batch.class_probabilities,
                              batch.domain_labels, membership, synchronize)
    discriminator_loss = losses.adversarial + config.beta * losses.sync_loss
    training.stop_if_not_finite(ctx, discriminator_loss, f"gsda discriminator step, iteration {iteration}")
    trainables.discriminator_optimizer.zero_grad(set_to_none=True)
    discriminator_loss.backward()
    # the discriminators are not DDP-wrapped: their loss uses autograd.grad
    training.average_gradients(ctx, list(trainables.discriminators.parameters()))
    trainables.discriminator_optimizer.step()
    return discriminator_loss.detach()


def _feature_step(config: GsdaConfig, ctx: RunContext, trainables: Trainables, batch: _Batch,
                  membership: torch.Tensor | None, synchronize: bool, iteration: int) -> dict[str, float]:
    """E,C-step: min L^c + beta L^syn - lambda_p (L^g + L^l) against the frozen D (Eq. 16-17); returns the terms."""
    count = batch.source_count
    trainables.discriminators.requires_grad_(False)
    source_ce = cross_entropy(batch.logits[:count], batch.source_labels)  # Eq. 3
    target_entropy = conditional_entropy(batch.logits[count:])  # Eq. 4
    losses = alignment_losses(trainables.discriminators, batch.features, batch.class_probabilities,
                              batch.domain_labels, membership, synchronize)
    coefficient = adversarial_coefficient(config, iteration)
    loss = source_ce + config.alpha * target_entropy + config.beta * losses.sync_loss - coefficient * losses.adversarial
    training.stop_if_not_finite(ctx, loss, f"gsda feature step, iteration {iteration}")
    trainables.optimizer.zero_grad(set_to_none=True)
    ctx.acceleration.backward_step(loss, trainables.optimizer)
    trainables.discriminators.requires_grad_(True)
    return {LOSS: loss.item(), "source_ce": source_ce.item(), "target_entropy": target_entropy.item(),
            "global_loss": losses.global_loss.item(), "local_loss": losses.local_loss.item(),
            "sync_loss": losses.sync_loss.item(), "adversarial_coefficient": coefficient}


def gsda_step(config: GsdaConfig, ctx: RunContext, network: nn.Module, trainables: Trainables,
              membership: torch.Tensor | None, source: dict[str, Any], target: dict[str, Any],
              iteration: int) -> dict[str, float]:
    """One alternating update on one source and one target batch: one forward of E and C on both, then the D-step
    (Eq. 14-15) on the detached features and the E,C-step (Eq. 16-17) against the updated D; returns scalars."""
    source_labels = source["label"].to(ctx.device)
    count = source_labels.shape[0]
    with ctx.acceleration.autocast():
        features, logits = network(torch.cat([source["image"], target["image"]]).to(ctx.device))
    features, logits = features.float(), logits.float()  # the losses and discriminators run in float32
    domain_labels = torch.cat([torch.full((count,), SOURCE_DOMAIN_LABEL),
                               torch.full((features.shape[0] - count,), TARGET_DOMAIN_LABEL)]).to(ctx.device)
    class_probabilities = class_probabilities_for_alignment(
        source_labels, logits[count:], ctx.num_classes, config.confidence_threshold)
    batch = _Batch(features, logits, source_labels, domain_labels, class_probabilities)
    synchronize = config.uses_groups and config.beta > 0
    discriminator_loss = _discriminator_step(config, ctx, trainables, batch, membership, synchronize, iteration)
    metrics = _feature_step(config, ctx, trainables, batch, membership, synchronize, iteration)
    with torch.no_grad():
        target_confidence = logits[count:].softmax(dim=1).max(dim=1).values.mean()
    return {**metrics, "discriminator_loss": discriminator_loss.item(), TARGET_CONFIDENCE: target_confidence.item()}


register(Method(
    name="gsda",
    tasks=("classification",),
    config_class=GsdaConfig,
    train=train_gsda,
    prepare_shared=lambda config, ctx: stages.source_stage(ctx, config.source_settings()) if config.init_from_source else None,
    shared_stage_key=lambda config: (config.init_from_source, config.source_settings()),
    description="GSDA: global, group and class adversarial alignment with hierarchical gradient synchronization",
))
