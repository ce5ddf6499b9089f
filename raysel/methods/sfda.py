"""SFDA: source-free domain adaptation for semantic segmentation (Liu, Zhang, Wang, CVPR 2021, arXiv 2103.16372).

Only a trained source model and unlabeled target images are used for adaptation. The source model comes from
``source_checkpoint`` or, when that is empty, from the shared cached source-only stage
(:func:`raysel.methods.stages.source_stage`, which alone reads labelled source data); :func:`adapt` never touches
source data. No official code exists; the paper (§3, Eq. 1-16) is the specification.

Networks: the frozen source model S~ (a copy of the source model, eval mode), the target model T (= S: one network
with shared weights, initialised from the source model, fed fake images as S and target images as T), the generator
G (:class:`raysel.models.generator.NoiseToImageGenerator`) and the IPSM patch discriminator D
(:class:`raysel.models.discriminators.PatchDiscriminator`, conditional on the patch position k).

Losses (paper equation -> function):

* Eq. 2  L_TAR, MaxSquare on target probabilities          :func:`maxsquare_loss`
* Eq. 4  L_BNS, batch statistics of G(z) vs S~'s BN layers  :class:`BatchNormStatistics`,
  :func:`batchnorm_statistics_loss`
* Eq. 5  L_MAE, output discrepancy S(x~) vs S~(x~)          :func:`output_discrepancy`
* Eq. 8-10 dual attention module (spatial S, channel R, A)  :func:`spatial_attention`, :func:`channel_attention`,
  :func:`dual_attention_map`
* Eq. 6  L_DAD^ss = mean |A(F~(x~)) - A(F(x~))|              :func:`attention_distillation_loss`
* Eq. 7  L_DAD^st = KL(S(F~(x~)) || S(F(x_t))) + KL(R.. || R..) :func:`attention_kl_loss`
* Eq. 13-14 patch entropy and easy/hard ranking per position :func:`split_into_patches`, :func:`patch_entropy`,
  :func:`rank_patches`, :func:`easy_and_hard_patches`
* Eq. 15 L_ADV                                               :func:`patch_discriminator_loss`,
  :func:`patch_adversarial_loss`
* Eq. 11 generator:  min_G  L_BNS - alpha L_MAE - beta L_DAD^ss + tau L_DAD^st   (tau = beta, paper §4.1.2)
* Eq. 16 target:     min_T  L_TAR + alpha L_MAE + beta L_DAD^ss + gamma L_ADV;   D: max over L_ADV (BCE classifier)

Hyperparameter names: ``alpha``, ``beta`` (also used as tau, as the paper fixes tau = beta), ``gamma`` as in the
paper; ``k_patches`` is the paper's K (each target prediction is cut into K x K patches; K = 1 disables IPSM, as in
the paper's Fig. 8).

Choices where the paper is vague (supplementary material with the algorithm is unavailable):

* One forward pass per iteration and simultaneous updates: G's gradient of Eq. 11 and T's gradient of Eq. 16 are
  taken at the same point (``autograd.grad`` for G, ``backward(inputs=T's parameters)`` for T), then D is updated.
  DFAD alternates (5 student steps per generator step); simultaneous updates halve the cost on CPU.
* L_MAE compares logits (``mae_space="logits"``, as DFAD does); ``"probabilities"`` compares softmax outputs.
  "1/C ||.||_1" averaged over pixels and the batch = the mean absolute difference over all elements.
* L_BNS uses squared L2 norms as printed in Eq. 4 (``bns_norm="squared"``); ``"l2"`` is DeepInversion's unsquared
  norm. Batch statistics are the biased variance of each BN layer's input (what BN normalises with).
* The DAM is parameter-free (Eq. 8-10 use F directly; the text's "we feed F into conv layers" contradicts the
  equations and names no training signal for such layers). Features are the model's ``forward_features`` (for
  DeepLab the backbone output, as in the paper; for small_segnet the decoder features). Energies are raw dot
  products as in Eq. 8-9 (``attention_scaling="none"``); ``"sqrt_dim"`` divides by sqrt(dimension).
* Eq. 7 pairs fake sample b with target sample b of the batch (independent draws); target features are
  adaptive-average-pooled to the fake features' size (paper §4.1.2) and detached: only G minimises Eq. 7.
* Eq. 15 as a standard GAN with BCE on logits, averaged over patches: D labels easy patches 0 and hard patches 1;
  T "fools D from the side of hard patches" by pushing D(hard) towards 0. Ranking is per worker's batch.
* T's BatchNorm running statistics follow the target batches only (:func:`running_statistics_untouched` around
  the fake stream, which is still normalised with its own batch statistics): T is evaluated on target images, and
  letting both streams update them left about 47 % fake-image statistics in the adapted model.
* The generator emits half-resolution images (``fake_scale=0.5``: 256x128 fakes vs 512x256 targets in the paper).
* D has 4 stride-2 convs (DCGAN) when patches allow, fewer for small patches (at least 2).

Deviation from the stated values: the paper's Adam learning rate 0.1 for G and D diverged on street_scenes (D's
loss ~1e7, T collapsed to one class: heldout mIoU 0.061 -> 0.002), so the defaults are DFAD's generator rate 1e-3 and
AdaptSegNet/AdvEnt's discriminator rate 1e-4 (same data: 0.061 -> 0.117). ``--set generator_learning_rate=0.1
--set discriminator_learning_rate=0.1`` reproduces the paper's setting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from raysel.conventions import BATCHNORM_TYPES
from raysel.errors import ConfigError
from raysel.hyperparameters import bounded, check_fields
from raysel.methods import networks, optim, stages, training
from raysel.methods.base import RunContext, require
from raysel.methods.reports import LOSS, TARGET_CONFIDENCE, EpochReport
from raysel.methods.result import TrainResult
from raysel.models.discriminators import PatchDiscriminator
from raysel.models.generator import NoiseToImageGenerator
from raysel.registry import Method, register

MAE_SPACES = ("logits", "probabilities")
BNS_NORMS = ("squared", "l2")
MAX_DISCRIMINATOR_LAYERS = 4  # DCGAN discriminator depth
MIN_DISCRIMINATOR_LAYERS = 2


@dataclass(frozen=True)
class SfdaConfig(stages.SourceStageFields):
    """SFDA hyperparameters under the paper's names. ``# paper: ...`` gives the value of §4.1.2 (GTA5->Cityscapes).

    Iteration counts and widths are scaled for one CPU core at 96x192 with small_segnet (a run ~ 60-90 s).
    """

    # --- loss weights (Eq. 11, 12, 16)
    alpha: float = bounded(1.0, ge=0.0, lt=math.inf)  # weight of L_MAE; paper 1.0 (Table 5: 0.1..2.0)
    # weight of L_DAD^ss, and tau of L_DAD^st (tau = beta); paper 0.5 (Table 6: 0.01..1.0)
    beta: float = bounded(0.5, ge=0.0, lt=math.inf)
    gamma: float = bounded(0.01, ge=0.0, lt=math.inf)  # weight of the IPSM adversarial loss L_ADV; paper 0.01
    # weight of L_TAR (MaxSquare, Eq. 2) in Eq. 16; paper 1 (implicit); swept by benchmarks.selection_wide
    maxsquare_weight: float = bounded(1.0, ge=0.0, lt=math.inf)
    # the paper's K: K x K patches per target image for IPSM; paper {3, 4, 5}; 1 = no IPSM
    k_patches: int = bounded(3, ge=1, le=16)
    # --- optimisation
    iterations: int = bounded(150, ge=1)  # paper: 120 epochs of Cityscapes (2975 images) at batch 8 ~ 44.6k iterations
    # target images and fake images per iteration; paper 8 (must be even for IPSM's B/2 split)
    batch_size: int = bounded(4, ge=2)
    learning_rate: float = bounded(2.5e-4, gt=0.0)  # T: SGD with Nesterov, poly decay (power 0.9); paper 2.5e-4
    momentum: float = bounded(0.9, ge=0.0, lt=1.0)  # paper 0.9
    weight_decay: float = bounded(1e-4, ge=0.0)  # paper 1e-4
    # DeepLab practice 0.1 for ImageNet backbones; the paper does not say
    backbone_lr_ratio: float = bounded(1.0, gt=0.0)
    # Adam; paper 0.1 (diverges here, see module docs); DFAD 1e-3
    generator_learning_rate: float = bounded(1e-3, gt=0.0)
    # Adam; paper 0.1 (diverges here); AdaptSegNet/AdvEnt 1e-4
    discriminator_learning_rate: float = bounded(1e-4, gt=0.0)
    freeze_batchnorm: bool = False  # freeze T's BatchNorm (running stats and affine); the paper does not say
    reports: int = bounded(5, ge=1)  # reports (ASHA steps, checkpoints) per run
    # --- architecture
    latent_dim: int = bounded(256, ge=1)  # dimension of z; paper 256
    generator_width: int = bounded(32, ge=1)  # ngf of the DCGAN generator; DCGAN/DFAD 64
    discriminator_width: int = bounded(32, ge=1)  # ndf of the patch discriminator; DCGAN 64
    embedding_dim: int = bounded(256, ge=1)  # position (label) embedding of the conditional D; paper 256
    # fake image size / target image size; paper 256x128 vs 512x256 = 0.5
    fake_scale: float = bounded(0.5, gt=0.0, le=1.0)
    # --- loss variants (cheap alternatives where the paper is ambiguous)
    mae_space: Literal["logits", "probabilities"] = "logits"  # "logits" (DFAD) | "probabilities"
    bns_norm: Literal["squared", "l2"] = "squared"  # "squared" (Eq. 4 as printed) | "l2" (DeepInversion)
    attention_scaling: Literal["none", "sqrt_dim"] = "none"  # "none" (Eq. 8-9) | "sqrt_dim"
    # --- source model
    source_checkpoint: str = ""  # path to a trained source model; "" = the inherited source_* stage settings

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid hyperparameter (schema, then cross-field checks)."""
        check_fields(self)
        require(self.k_patches == 1 or self.batch_size % 2 == 0,
                f"batch_size must be even when k_patches > 1 (IPSM ranks B/2 easy vs B/2 hard), got {self.batch_size}")
        require(self.reports <= self.iterations, f"reports must lie in [1, iterations], got {self.reports}")
        if not self.source_checkpoint:
            self.source_settings().validate()


# ==============================================================================================================
# Losses (each a pure function of tensors, tested on its own)
# ==============================================================================================================


def maxsquare_loss(probabilities: torch.Tensor) -> torch.Tensor:
    """Eq. 2 (MaxSquare): ``-(1/HW) sum_hw sum_c p^2``, averaged over the batch; -1 for one-hot, -1/C for uniform."""
    return -probabilities.pow(2).sum(dim=1).mean()


def batchnorm_statistics_loss(batch_means: Sequence[torch.Tensor], batch_variances: Sequence[torch.Tensor],
                              running_means: Sequence[torch.Tensor], running_variances: Sequence[torch.Tensor],
                              norm: str = "squared") -> torch.Tensor:
    """Eq. 4: ``sum_l ||mu_l - mu_l^BN||^2 + ||sigma_l^2 - sigma_l^2,BN||^2`` (``norm="l2"``: unsquared norms)."""
    if norm not in BNS_NORMS:
        raise ConfigError(f"bns_norm must be one of {', '.join(BNS_NORMS)}, got {norm!r}")
    terms = []
    for mean, variance, running_mean, running_variance in zip(batch_means, batch_variances, running_means,
                                                              running_variances):
        for value, reference in ((mean, running_mean), (variance, running_variance)):
            squared = (value - reference.to(value.dtype)).pow(2).sum()
            terms.append(squared if norm == "squared" else squared.clamp_min(1e-12).sqrt())
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


class BatchNormStatistics:
    """Context manager recording, for every BatchNorm layer of ``model``, the batch mean/variance of its input.

    Used on the frozen source model S~ (eval mode, so BN normalises with its stored statistics) while it processes
    fake images; :meth:`loss` then gives L_BNS (Eq. 4) with gradients flowing back to the generator.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, BATCHNORM_TYPES) and m.running_mean is not None]
        self.batch_means: list[torch.Tensor] = []
        self.batch_variances: list[torch.Tensor] = []
        self.running_means: list[torch.Tensor] = []
        self.running_variances: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        features = inputs[0]
        dims = [0] + list(range(2, features.dim()))
        self.batch_means.append(features.mean(dim=dims))
        self.batch_variances.append(features.var(dim=dims, unbiased=False))
        self.running_means.append(module.running_mean)
        self.running_variances.append(module.running_var)

    def __enter__(self) -> "BatchNormStatistics":
        self._handles = [layer.register_forward_hook(self._record) for layer in self.layers]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def loss(self, norm: str = "squared") -> torch.Tensor:
        """L_BNS (Eq. 4) over every recorded BN layer."""
        return batchnorm_statistics_loss(self.batch_means, self.batch_variances, self.running_means,
                                         self.running_variances, norm)


def output_discrepancy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       space: str = "logits") -> torch.Tensor:
    """Eq. 5 (L_MAE): ``E (1/C) ||S(x~) - S~(x~)||_1`` per pixel, averaged over pixels and batch (logits or softmax)."""
    if space == "probabilities":
        student_logits, teacher_logits = student_logits.softmax(dim=1), teacher_logits.softmax(dim=1)
    elif space != "logits":
        raise ConfigError(f"mae_space must be one of {', '.join(MAE_SPACES)}, got {space!r}")
    return (student_logits - teacher_logits).abs().mean()


def _flatten_features(features: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, C, N]`` with N = h w (the paper's F reshaped, channels first)."""
    return features.flatten(2)


def spatial_attention_energy(features: torch.Tensor, scaling: str = "none") -> torch.Tensor:
    """Eq. 8 energies ``F_i . F_j`` between positions: ``[B, N, N]`` (row j, column i)."""
    flat = _flatten_features(features)
    energy = torch.bmm(flat.transpose(1, 2), flat)
    return energy / math.sqrt(flat.shape[1]) if scaling == "sqrt_dim" else energy


def channel_attention_energy(features: torch.Tensor, scaling: str = "none") -> torch.Tensor:
    """Eq. 9 energies between channels: ``[B, C, C]`` (row j, column i)."""
    flat = _flatten_features(features)
    energy = torch.bmm(flat, flat.transpose(1, 2))
    return energy / math.sqrt(flat.shape[2]) if scaling == "sqrt_dim" else energy


def spatial_attention(features: torch.Tensor, scaling: str = "none") -> torch.Tensor:
    """Eq. 8: S with ``s_ji`` = softmax over positions i of ``F_i . F_j``; ``[B, N, N]``, rows sum to 1."""
    return spatial_attention_energy(features, scaling).softmax(dim=-1)


def channel_attention(features: torch.Tensor, scaling: str = "none") -> torch.Tensor:
    """Eq. 9: R with ``r_ji`` = softmax over channels i; ``[B, C, C]``, rows sum to 1."""
    return channel_attention_energy(features, scaling).softmax(dim=-1)


def dual_attention_map(features: torch.Tensor, scaling: str = "none") -> torch.Tensor:
    """Eq. 10: ``A = concat(F S | R F)`` -> ``[B, 2C, N]``; position j of F S is ``sum_i s_ji F_i``."""
    flat = _flatten_features(features)
    spatial = torch.bmm(flat, spatial_attention(features, scaling).transpose(1, 2))
    channel = torch.bmm(channel_attention(features, scaling), flat)
    return torch.cat([spatial, channel], dim=1)


def attention_distillation_loss(teacher_features: torch.Tensor, student_features: torch.Tensor,
                                scaling: str = "none") -> torch.Tensor:
    """Eq. 6 (L_DAD^ss): ``(1/M) ||A(F~(x~)) - A(F(x~))||_1``, M = size of the dual attention map, batch mean."""
    return (dual_attention_map(teacher_features, scaling) - dual_attention_map(student_features, scaling)).abs().mean()


def _row_kl(reference_energy: torch.Tensor, other_energy: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``KL(softmax(reference) || softmax(other))`` (each row an attention distribution)."""
    log_p = reference_energy.log_softmax(dim=-1)
    log_q = other_energy.log_softmax(dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()


def attention_kl_loss(source_features: torch.Tensor, target_features: torch.Tensor,
                      scaling: str = "none") -> torch.Tensor:
    """Eq. 7 (L_DAD^st): ``KL(S(F~(x~)) || S(F(x_t))) + KL(R(F~(x~)) || R(F(x_t)))``, sample b paired with b.

    Target features are adaptive-average-pooled to the source features' spatial size first (paper §4.1.2).
    """
    if target_features.shape[-2:] != source_features.shape[-2:]:
        target_features = F.adaptive_avg_pool2d(target_features, source_features.shape[-2:])
    count = min(source_features.shape[0], target_features.shape[0])
    source_features, target_features = source_features[:count], target_features[:count]
    spatial = _row_kl(spatial_attention_energy(source_features, scaling),
                      spatial_attention_energy(target_features, scaling))
    channel = _row_kl(channel_attention_energy(source_features, scaling),
                      channel_attention_energy(target_features, scaling))
    return spatial + channel


def split_into_patches(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Cut ``[B, C, H, W]`` into K x K patches by position: ``[K*K, B, C, H/K, W/K]`` (remainder rows/cols dropped).

    Position k = row * K + column (row-major), the patch "class" of IPSM.
    """
    batch, channels, height, width = maps.shape
    patch_height, patch_width = height // k, width // k
    if patch_height < 1 or patch_width < 1:
        raise ConfigError(f"k_patches={k} is too large for {height}x{width} predictions")
    maps = maps[..., : patch_height * k, : patch_width * k]
    patches = maps.reshape(batch, channels, k, patch_height, k, patch_width)
    return patches.permute(2, 4, 0, 1, 3, 5).reshape(k * k, batch, channels, patch_height, patch_width)


def patch_entropy(patch_probabilities: torch.Tensor) -> torch.Tensor:
    """Eq. 13: mean pixel entropy ``-(1/H2W2) sum_hw sum_c p log p`` of each patch: ``[..., C, h, w]`` -> ``[...]``."""
    return -torch.special.xlogy(patch_probabilities, patch_probabilities).sum(dim=-3).mean(dim=(-2, -1))


def rank_patches(entropy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 14: per position (row of ``[K*K, B]``), the B/2 lowest-entropy batch indices (easy) and the B/2 highest
    (hard).

    Both are returned in ascending entropy order; ties are broken by batch index (stable sort).
    """
    order = torch.sort(entropy, dim=1, stable=True).indices
    half = entropy.shape[1] // 2
    return order[:, :half], order[:, entropy.shape[1] - half:]


def easy_and_hard_patches(probabilities: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 13-14 on a batch of prediction maps: easy patches, hard patches (each ``[K*K*B/2, C, h, w]``) and their
    positions k (``[K*K*B/2]``, the same for both groups)."""
    patches = split_into_patches(probabilities, k)
    easy, hard = rank_patches(patch_entropy(patches.detach()))
    positions = torch.arange(k * k, device=probabilities.device).unsqueeze(1).expand_as(easy)
    easy_patches = patches[positions, easy].flatten(0, 1)
    hard_patches = patches[positions, hard].flatten(0, 1)
    return easy_patches, hard_patches, positions.flatten()


def patch_discriminator_loss(easy_logits: torch.Tensor, hard_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 15, D's side: ``-[log(1 - D(k, i^e)) + log D(k, i^d)]`` (BCE, easy -> 0, hard -> 1), mean over patches."""
    return (F.binary_cross_entropy_with_logits(easy_logits, torch.zeros_like(easy_logits))
            + F.binary_cross_entropy_with_logits(hard_logits, torch.ones_like(hard_logits)))


def patch_adversarial_loss(hard_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 15, T's side: make hard patches look easy to D, ``-log(1 - D(k, i^d))``, mean over hard patches."""
    return F.binary_cross_entropy_with_logits(hard_logits, torch.zeros_like(hard_logits))


# ==============================================================================================================
# Source model (the only place source data may be read: the cached source-only stage)
# ==============================================================================================================


def _describe_state(value: Any) -> dict[str, torch.Tensor] | None:
    """The state dict inside a checkpoint (raw, or under "model" as raysel's stages save it), or None."""
    if isinstance(value, dict) and isinstance(value.get("model"), dict):
        value = value["model"]
    if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return value
    return None


def check_source_state(state: dict[str, torch.Tensor], model: nn.Module, source: str, dataset: str) -> None:
    """ConfigError unless ``state`` fits ``model``: same keys, same shapes; a class-count mismatch is named as such."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    model_name = type(model).__name__
    if missing or unexpected:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise ConfigError(f"source_checkpoint {source} does not fit model {model_name} ({detail}); "
                          "pass a checkpoint of the same network (--model)")
    num_classes = getattr(model, "num_classes", None)
    for key, reference in expected.items():
        found = state[key]
        if found.shape == reference.shape:
            continue
        if num_classes is not None and reference.dim() >= 1 and reference.shape[0] == num_classes \
                and found.dim() == reference.dim() and found.shape[1:] == reference.shape[1:]:
            raise ConfigError(f"source_checkpoint {source} predicts {found.shape[0]} classes but dataset {dataset!r} "
                              f"has {num_classes}; the source model must share the target's label space")
        raise ConfigError(f"source_checkpoint {source} does not fit model {model_name}: {key} has shape "
                          f"{tuple(found.shape)}, expected {tuple(reference.shape)}")


def read_source_checkpoint(path: Path, model: nn.Module, dataset: str) -> dict[str, torch.Tensor]:
    """Load a source model state dict from ``path`` and check it fits ``model`` (ConfigError with the reason if not)."""
    if not path.is_file():
        raise ConfigError(f"source_checkpoint {path}: no such file; give a trained source model (state dict, or a "
                          "dict with key 'model') or leave source_checkpoint empty to train one in the source stage")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for corrupt/unpickleable files
        raise ConfigError(f"source_checkpoint {path}: not a readable torch checkpoint ({error})") from None
    state = _describe_state(loaded)
    if state is None:
        raise ConfigError(f"source_checkpoint {path}: expected a state dict (or a dict with key 'model')")
    check_source_state(state, model, str(path), dataset)
    return state


def source_model_state(config: SfdaConfig, ctx: RunContext) -> dict[str, torch.Tensor]:
    """The trained source model: ``source_checkpoint`` if given, else the cached source-only stage."""
    if config.source_checkpoint:
        probe = ctx.build_model(pretrained=False)
        return read_source_checkpoint(Path(config.source_checkpoint).expanduser(), probe, ctx.spec.dataset)
    return stages.source_stage(ctx, config.source_settings())["model"]


# ==============================================================================================================
# Adaptation (source-free: reads only the source model and unlabeled target images)
# ==============================================================================================================


@contextlib.contextmanager
def running_statistics_untouched(model: nn.Module) -> Iterator[None]:
    """Within the block, training-mode BN layers of ``model`` normalise with batch statistics but leave their
    running statistics (and ``num_batches_tracked``) unchanged: used for the fake-image stream of T."""
    layers = [m for m in model.modules() if isinstance(m, BATCHNORM_TYPES) and m.training and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True


class TwoStreamForward(nn.Module):
    """T applied to fake images (as S) and target images (as T) in one call: one DDP forward per iteration.

    Returns features and logits (bilinearly upsampled to the input size, like ``SegmentationModel.forward``) of
    both streams; BatchNorm sees each stream as its own batch. Only the target stream updates BN's running
    statistics: T is evaluated on target images, and the paper's running statistics describe a domain (S~'s are
    the source's, Eq. 4), so T's should describe the target, not a mixture with G's fakes. The fake stream is
    still normalised with its own batch statistics, as a training-mode forward does, so every loss and gradient
    is unchanged; the paper does not say, and this changes only the buffers that no loss reads.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def _features_and_logits(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.model.forward_features(images)
        logits = F.interpolate(self.model.head(features), size=images.shape[-2:], mode="bilinear",
                               align_corners=True)
        return [features, logits]

    def forward(self, fake: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with running_statistics_untouched(self.model):
            outputs = self._features_and_logits(fake)
        return tuple(outputs + self._features_and_logits(target))


def frozen_source_model(ctx: RunContext, state: dict[str, torch.Tensor]) -> nn.Module:
    """S~: the source model in eval mode without gradients (BN keeps its source statistics for Eq. 4)."""
    model = ctx.build_model(pretrained=False)
    model.load_state_dict(state)
    model.eval()
    model.requires_grad_(False)
    return model


def discriminator_layers(patch_size: tuple[int, int], k: int, image_size: tuple[int, int]) -> int:
    """Depth of D for patches of ``patch_size``: DCGAN's 4 stride-2 convs when they fit, fewer (>= 2) otherwise."""
    depth = min(MAX_DISCRIMINATOR_LAYERS, int(math.floor(math.log2(max(1, min(patch_size))))))
    if depth < MIN_DISCRIMINATOR_LAYERS:
        raise ConfigError(f"k_patches={k} cuts {image_size[0]}x{image_size[1]} images into {patch_size[0]}x"
                          f"{patch_size[1]} patches; IPSM needs patches of at least {2 ** MIN_DISCRIMINATOR_LAYERS} "
                          "pixels per side: lower k_patches or use larger images")
    return depth


@dataclass
class _Networks:
    """Everything trained or used by one SFDA iteration."""

    source: nn.Module
    target: nn.Module
    two_stream: nn.Module
    generator: nn.Module
    discriminator: nn.Module | None
    target_optimizer: torch.optim.Optimizer
    target_scheduler: Any
    generator_optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer | None


def sfda_step(config: SfdaConfig, ctx: RunContext, nets: _Networks, target_images: torch.Tensor,
              noise: torch.Tensor) -> dict[str, float]:
    """One iteration: G by Eq. 11, T by Eq. 16 (gradients from one shared forward), then D by Eq. 15."""
    fake = nets.generator(noise)  # Eq. 3
    with BatchNormStatistics(nets.source) as statistics:
        source_features = nets.source.forward_features(fake)
    bns = statistics.loss(config.bns_norm)  # Eq. 4
    source_logits = F.interpolate(nets.source.head(source_features), size=fake.shape[-2:], mode="bilinear",
                                  align_corners=True)
    fake_features, fake_logits, target_features, target_logits = nets.two_stream(fake, target_images)
    target_probabilities = target_logits.softmax(dim=1)

    mae = output_discrepancy(fake_logits, source_logits, config.mae_space)  # Eq. 5
    dad_ss = attention_distillation_loss(source_features, fake_features, config.attention_scaling)  # Eq. 6
    dad_st = attention_kl_loss(source_features, target_features.detach(), config.attention_scaling)  # Eq. 7
    maxsquare = maxsquare_loss(target_probabilities)  # Eq. 2
    generator_loss = bns - config.alpha * mae - config.beta * dad_ss + config.beta * dad_st  # Eq. 11, tau = beta

    adversarial = torch.zeros((), device=fake.device)
    easy = hard = positions = None
    if nets.discriminator is not None:
        easy, hard, positions = easy_and_hard_patches(target_probabilities, config.k_patches)  # Eq. 13-14
        nets.discriminator.requires_grad_(False)
        adversarial = patch_adversarial_loss(nets.discriminator(hard, positions))  # Eq. 15, T's side
    target_loss = (config.maxsquare_weight * maxsquare + config.alpha * mae + config.beta * dad_ss
                   + config.gamma * adversarial)  # Eq. 16
    training.stop_if_not_finite(ctx, target_loss + generator_loss, "an SFDA iteration")

    generator_parameters = [p for p in nets.generator.parameters() if p.requires_grad]
    generator_gradients = torch.autograd.grad(generator_loss, generator_parameters, retain_graph=True)
    target_parameters = [p for p in nets.target.parameters() if p.requires_grad]
    nets.target_optimizer.zero_grad(set_to_none=True)
    target_loss.backward(inputs=target_parameters)
    nets.target_optimizer.step()
    nets.target_scheduler.step()
    for parameter, gradient in zip(generator_parameters, generator_gradients):
        parameter.grad = gradient
    training.average_gradients(ctx, generator_parameters)
    nets.generator_optimizer.step()
    nets.generator_optimizer.zero_grad(set_to_none=True)

    discriminator_loss = torch.zeros(())
    if nets.discriminator is not None and nets.discriminator_optimizer is not None:
        nets.discriminator.requires_grad_(True)
        discriminator_loss = patch_discriminator_loss(nets.discriminator(easy.detach(), positions),
                                                      nets.discriminator(hard.detach(), positions))
        nets.discriminator_optimizer.zero_grad(set_to_none=True)
        discriminator_loss.backward()
        training.average_gradients(ctx, list(nets.discriminator.parameters()))
        nets.discriminator_optimizer.step()

    confidence = target_probabilities.detach().max(dim=1).values.mean()
    return {LOSS: target_loss.item(), "loss_generator": generator_loss.item(), "loss_bns": bns.item(),
            "loss_mae": mae.item(), "loss_dad_ss": dad_ss.item(), "loss_dad_st": dad_st.item(),
            "loss_maxsquare": maxsquare.item(), "loss_adversarial": adversarial.item(),
            "loss_discriminator": discriminator_loss.item(), TARGET_CONFIDENCE: confidence.item()}


def _build_networks(config: SfdaConfig, ctx: RunContext, source_state: dict[str, torch.Tensor],
                    image_size: tuple[int, int], local_batch: int) -> _Networks:
    """S~, T (initialised from the source model), G, D and their optimisers (paper §4.1.2)."""
    torch.manual_seed(ctx.spec.seed + 17)
    source = frozen_source_model(ctx, source_state)
    target = ctx.build_model(pretrained=False)
    target.load_state_dict(source_state)
    if config.freeze_batchnorm:
        networks.freeze_batchnorm(target)
    target.train()
    two_stream = ctx.distributed(TwoStreamForward(target))
    fake_size = (max(1, round(image_size[0] * config.fake_scale)), max(1, round(image_size[1] * config.fake_scale)))
    generator = NoiseToImageGenerator(fake_size, config.latent_dim, config.generator_width).to(ctx.device)
    generator.train()
    discriminator = discriminator_optimizer = None
    if config.k_patches > 1:
        if local_batch % 2:
            raise ConfigError(f"IPSM needs an even batch per worker; batch_size={config.batch_size} over "
                              f"{ctx.world_size} worker(s) gives {local_batch}")
        patch_size = (image_size[0] // config.k_patches, image_size[1] // config.k_patches)
        depth = discriminator_layers(patch_size, config.k_patches, image_size)
        discriminator = PatchDiscriminator(ctx.num_classes, num_positions=config.k_patches**2,
                                           ndf=config.discriminator_width, num_layers=depth,
                                           embedding_dim=config.embedding_dim).to(ctx.device)
        discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.discriminator_learning_rate)
    groups = optim.parameter_groups(target, config.learning_rate, config.backbone_lr_ratio)
    target_optimizer = torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum,
                                       weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    target_scheduler = optim.build_scheduler(target_optimizer, config.iterations, "poly")
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=config.generator_learning_rate)
    return _Networks(source, target, two_stream, generator, discriminator, target_optimizer, target_scheduler,
                     generator_optimizer, discriminator_optimizer)


def _checkpoint_state(nets: _Networks, config: SfdaConfig, iteration: int, epoch: int) -> dict[str, Any]:
    """Everything needed to resume: T, G, D, their optimisers and T's schedule, and the counters."""
    state: dict[str, Any] = {
        "iteration": iteration, "epoch": epoch, "config": dataclasses.asdict(config),
        "model": nets.target.state_dict(), "generator": nets.generator.state_dict(),
        "target_optimizer": nets.target_optimizer.state_dict(),
        "target_scheduler": nets.target_scheduler.state_dict(),
        "generator_optimizer": nets.generator_optimizer.state_dict(),
    }
    if nets.discriminator is not None and nets.discriminator_optimizer is not None:
        state["discriminator"] = nets.discriminator.state_dict()
        state["discriminator_optimizer"] = nets.discriminator_optimizer.state_dict()
    return state


def _load_checkpoint_state(nets: _Networks, state: dict[str, Any]) -> tuple[int, int]:
    """Restore from :func:`_checkpoint_state`; returns (iteration, epoch) to continue from."""
    nets.target.load_state_dict(state["model"])
    nets.generator.load_state_dict(state["generator"])
    nets.target_optimizer.load_state_dict(state["target_optimizer"])
    nets.target_scheduler.load_state_dict(state["target_scheduler"])
    nets.generator_optimizer.load_state_dict(state["generator_optimizer"])
    if nets.discriminator is not None and "discriminator" in state:
        nets.discriminator.load_state_dict(state["discriminator"])
        nets.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])  # type: ignore[union-attr]
    return int(state["iteration"]), int(state["epoch"])


def adapt(config: SfdaConfig, ctx: RunContext, source_state: dict[str, torch.Tensor]) -> nn.Module:
    """The source-free adaptation loop (Eq. 11 + Eq. 16); reads only ``source_state`` and unlabeled target images."""
    loader = ctx.loader(ctx.target_dataset(), config.batch_size, shuffle=True, drop_last=True, seed_offset=41)
    restored = ctx.restore()
    # A resumed run reshuffles from a different pass than the first one (the exact pass is not tracked).
    start_pass = int(restored["iteration"]) if restored is not None else 0
    batches = training.infinite_batches(loader, start_epoch=start_pass)
    first = next(batches)
    images = first["image"]
    nets = _build_networks(config, ctx, source_state, tuple(images.shape[-2:]), images.shape[0])
    iteration, epoch = _load_checkpoint_state(nets, restored) if restored is not None else (0, 0)
    # Noise is reseeded from the iteration a run resumes at, so a resumed run does not replay the same z.
    noise_rng = torch.Generator().manual_seed(ctx.spec.seed * 7919 + ctx.rank * 104729 + iteration)
    points = training.report_points(config.iterations, config.reports)
    running = training.RunningMean()
    started = time.perf_counter()
    for batch in itertools.chain([first], batches):
        if iteration >= config.iterations:
            break
        noise = nets.generator.sample_noise(images.shape[0], noise_rng, ctx.device)
        running.add(**sfda_step(config, ctx, nets, batch["image"].to(ctx.device), noise))
        iteration += 1
        if iteration in points:
            epoch += 1
            report = EpochReport.from_measurements(epoch=epoch, iteration=iteration, measurements={
                **running.means(ctx), "seconds_train_loop": time.perf_counter() - started})
            running.reset()
            ctx.report(report, checkpoint_state=_checkpoint_state(nets, config, iteration, epoch), model=nets.target)
    nets.target.eval()
    return nets.target


def train_sfda(config: SfdaConfig, ctx: RunContext) -> TrainResult:
    """Get the source model (checkpoint or cached stage), then adapt it to the target without source data."""
    config.validate()
    source_state = source_model_state(config, ctx)
    return TrainResult(adapt(config, ctx, source_state))


register(Method(
    name="sfda",
    tasks=("segmentation",),
    config_class=SfdaConfig,
    train=train_sfda,
    prepare_shared=lambda config, ctx: None if config.source_checkpoint else stages.source_stage(ctx, config.source_settings()),
    shared_stage_key=lambda config: (config.source_checkpoint, config.source_settings()),
    description="SFDA (CVPR 2021): source-free adaptation via generator-based knowledge transfer (BNS, MAE, dual "
                "attention distillation) and patch-level entropy-ranked self-supervision (IPSM) with MaxSquare",
))
