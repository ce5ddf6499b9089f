"""T2S-DA, "Pulling Target to Source" (Wang et al., IJCV 2025; arXiv 2305.13752), ``../shared/papers/t2sda.md``.

Objective (§3.1): ``L = L_source + L_target + lambda_ * L_pull`` on top of a DACS mean-teacher baseline.

* ``L_source`` (Eq. 1): cross-entropy on labelled source images.
* ``L_target`` (Eq. 2-3): DACS self-training. The EMA teacher labels the clean target image (argmax); ClassMix
  pastes half of the source image's classes onto it; the mixed image gets colour jitter and blur; pixel weights are
  1 on pasted source pixels and the pseudo-label quality ``r`` (share of pixels with confidence > delta_p) elsewhere.
* ``L_pull`` (Eq. 4-5, 9-18): source images are translated into the target style by FDA (Eq. 6-8), giving
  "pseudo-target" images that keep the source labels. Queries are the student's projector embeddings of those images
  (Eq. 9), sampled per class in proportion to the batch's source label distribution (Eq. 16). The positive key of
  class c is the teacher's source prototype (Eq. 10-11). Negatives are drawn m/2 from teacher source embeddings of
  other classes (Eq. 12) and m/2 from unreliable teacher target embeddings (lowest alpha share of confidence, Eq.
  13-14) predicted as another class. The loss is InfoNCE with temperature tau, or the MSE alternative. Per-class
  weights favour classes with low mean target confidence (Eq. 17-18).

Hyperparameter names (paper symbol -> field): λ -> ``lambda_`` (``lambda`` is a Python keyword), τ -> ``tau``,
β (re-weighting, Eq. 17) -> ``beta``, α (unreliable partition, Eq. 14; a fraction, 0.5 = 50 %) -> ``alpha``,
n -> ``n``, m -> ``m``, FDA's β (Eq. 7) -> ``fda_beta``, δ_p (Eq. 3) -> ``delta_p``, η (EMA momentum) -> ``eta``.

No official code exists. Choices where the paper is silent or ambiguous (each documented at its function):

* FDA window: frequencies with |k_y| < b and |k_x| < b, b = floor(min(H, W) * fda_beta). This square is
  Hermitian-symmetric, so the output stays real, and b = 0 gives the identity. FDA's numpy code uses |k| <= b (it
  swaps the DC term even at b = 0); its torch code uses k in [-b, b). FDA runs on [0, 1] pixels and the result is
  clamped to [0, 1]. T2S-DA's fda_beta was not found; the default 0.05 is the middle of the FDA paper's
  {0.01, 0.05, 0.09}. At 96 px height, 0.01 gives b = 0, i.e. no translation at all.
* Eq. 5 literally sums the loss over queries and then divides by C. That makes the loss scale grow with n. The
  default ``pull_reduction="weighted_mean"`` is ``sum_c w*_c mean_{q in Q_c} l(q, k+)`` instead (U2PL's per-class
  mean); ``"paper_sum"`` is the literal form.
* Eq. 16: at most one query per pixel, so n_q(c) is capped at the class's pixel count. At 96x192 with n = 128 this
  means every labelled pixel becomes a query. Negatives are drawn with replacement (as in U2PL). An empty source or
  target candidate set gives all m negatives from the other domain. A query without any candidate is dropped.
* Eq. 12: ignore (255) pixels are never negatives. Their one-hot row is all zeros, so read literally they would be
  negatives for every class.
* Eq. 14: gamma is the alpha-quantile of teacher confidence over the whole target batch at feature resolution
  (U2PL), not per image.
* Eq. 17-18: ``conf(c)`` uses full-resolution teacher predictions. A class with queries but no target pseudo-label
  gets ``w_c = 1`` (the maximum). ``w*`` is normalised over the classes that have queries in the batch.
* Eq. 3 is per image (the paper). DACS/DAFormer use one batch-wide ratio; ``quality_weight="batch"`` selects that.
* ClassMix picks ceil(k/2) of the k classes in *each* source image, ignore excluded (the ClassMix paper).
  DAFormer's code runs ``torch.unique`` over the whole batch.
* Student forward: one forward pass over [source; pseudo-target; mixed], which keeps DDP simple. The segmenter's
  BatchNorm is frozen by default (the DACS DeepLab-V2 baseline freezes BN), so this equals three separate passes.
* Optimiser: AdamW (betas 0.9/0.999, weight decay 0.01), 6e-4 for head and projector and 6e-5 for the encoder,
  linear warm-up, then poly(1.0) decay as in DAFormer. Paper: 40k iterations, 1.5k warm-up, batch 2 + 2,
  eta 0.999. The defaults are scaled down for CPU: 120 iterations take about 65 s of one core on street_scenes at
  96x192 with small_segnet (measured: 100 iterations, 56 CPU-s). Over ~100 steps only eta 0.99 lets the
  teacher move at all.
* DAFormer's strategies in the paper's baseline ("DACS with two extra strategies in (Hoyer et al., 2022a)", §4),
  both on by default (:mod:`raysel.methods.daformer_strategies`): rare-class sampling of source images
  (``rare_class_sampling``, T = ``rcs_temperature`` 0.01) and the thing-class feature distance on the source batch's
  encoder bottleneck (``feature_distance``, lambda_FD = ``lambda_fd`` 0.005). The loss becomes
  ``L_source + L_target + lambda_ * L_pull + lambda_fd * L_FD``. FD's reference is the frozen ImageNet encoder when
  the network's ImageNet weights load (``deeplabv2_resnet101`` with the torchvision cache), else a frozen copy of
  the source-only model the run starts from (``small_segnet`` has none); reported as ``fd_imagenet_reference``,
  and FD's share of the loss as ``fd_loss_share`` (about 0.3 % at the embedded defaults).
* The run starts from the shared cached source-only model (:func:`raysel.methods.stages.source_stage`). The student
  is returned for evaluation (DACS/DAFormer evaluate the student); ``evaluate_teacher=True`` returns the teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from raysel.conventions import IGNORE_INDEX
from raysel.hyperparameters import bounded, check_fields
from raysel.methods.augment import denormalize, normalize, weak_augment
from raysel.methods.base import RunContext
from raysel.methods.daformer_strategies import (DAFORMER_RCS_CROP_RETRIES, DAFORMER_RCS_MIN_CROP_RATIO,
                                                DAFORMER_RCS_MIN_PIXELS_FRACTION, RareClassDataset, RareClassSampler,
                                                IMAGENET_REFERENCE, bottleneck_module, captured_output,
                                                feature_distance_reference,
                                                source_class_pixel_counts, thing_feature_distance)
from raysel.methods.result import TrainResult
from raysel.methods.losses import cross_entropy
from raysel.methods.networks import ema_update, freeze_batchnorm, make_ema_teacher, unwrap
from raysel.methods.optim import build_scheduler, parameter_groups
from raysel.methods.reports import LOSS, TARGET_CONFIDENCE, EpochReport
from raysel.methods.stages import SourceStageFields, source_stage
from raysel.methods.training import RunningMean, infinite_batches, stop_if_not_finite
from raysel.models.projector import ProjectorHead, SegmenterWithProjector
from raysel.registry import Method, register


# --------------------------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class T2sdaConfig(SourceStageFields):
    """T2S-DA hyperparameters: paper values, with paper settings in brackets where the CPU default differs.

    Swept (paper §4 / Tab. 12-16): lambda_ (λ) 0.1, tau 0.2, beta 0.5, alpha 0.5 (50 %), n 128, m 1024, fda_beta
    (not given in the paper; 0.05 here). Baseline: delta_p 0.968 (DACS), eta [0.999] 0.99, iterations [40000] 120,
    warmup_iterations [1500] 5, batch_size 2 (source) + 2 (target), AdamW with learning_rate 6e-4 for head and
    projector and 6e-5 for the encoder (``backbone_lr_ratio`` 0.1), weight_decay 0.01.
    Switches for the paper's ablations: pull_loss infonce|mse (Tab. 10), query_sampling class_balanced|
    class_equalized and negative_sampling domain_equalized|pooled (Tab. 8), dynamic_reweighting (Tab. 9).
    DAFormer's strategies of the baseline (§4): rare_class_sampling with rcs_temperature 0.01 and
    rcs_min_pixels_fraction 0.0015 (3000 of a GTA5 label's pixels) and rcs_min_crop_ratio 0.5 (crop retry),
    feature_distance with lambda_fd 0.005 and
    fd_min_label_ratio 0.75 (DAFormer's values). The inherited ``source_*`` fields set the cached source-only stage
    the student starts from.
    """

    lambda_: float = bounded(0.1, ge=0.0, help="λ, pull-loss weight")
    tau: float = bounded(0.2, gt=0.0, help="InfoNCE temperature")
    beta: float = bounded(0.5, ge=0.0, help="re-weighting exponent, Eq. 17")
    alpha: float = bounded(0.5, gt=0.0, le=1.0, help="unreliable partition, Eq. 14; 0.5 = 50 %")
    n: int = bounded(128, ge=1, help="base number of queries per class")
    m: int = bounded(1024, ge=2, help="negative keys per query")
    fda_beta: float = bounded(0.05, gt=0.0, le=0.5)
    pull_loss: Literal["infonce", "mse"] = "infonce"
    query_sampling: Literal["class_balanced", "class_equalized"] = "class_balanced"
    negative_sampling: Literal["domain_equalized", "pooled"] = "domain_equalized"
    dynamic_reweighting: bool = True
    pull_reduction: Literal["weighted_mean", "paper_sum"] = "weighted_mean"
    projector_dim: int = bounded(64, ge=1)
    projector_final_relu: bool = True
    delta_p: float = bounded(0.968, gt=0.0, lt=1.0, help="pseudo-label quality threshold")
    quality_weight: Literal["per_image", "batch"] = "per_image"
    eta: float = bounded(0.99, ge=0.0, lt=1.0, help="EMA momentum")
    color_jitter_strength: float = bounded(0.2, ge=0.0, le=0.5)
    color_jitter_probability: float = bounded(0.2, ge=0.0, le=1.0)
    blur: bool = True
    iterations: int = bounded(120, ge=1)
    warmup_iterations: int = bounded(5, ge=0)
    batch_size: int = bounded(2, ge=1)
    learning_rate: float = bounded(6e-4, gt=0.0)
    backbone_lr_ratio: float = bounded(0.1, gt=0.0)
    weight_decay: float = bounded(0.01, ge=0.0)
    freeze_batchnorm: bool = True
    report_interval: int = bounded(20, ge=1)
    evaluate_teacher: bool = False
    rare_class_sampling: bool = True
    rcs_temperature: float = bounded(0.01, gt=0.0, help="RCS temperature T, DAFormer Eq. 7")
    rcs_min_pixels_fraction: float = bounded(DAFORMER_RCS_MIN_PIXELS_FRACTION, ge=0.0, lt=1.0,
                                             help="share of an image's labelled pixels a class needs for RCS")
    rcs_min_crop_ratio: float = bounded(DAFORMER_RCS_MIN_CROP_RATIO, ge=0.0, le=1.0,
                                        help="RCS crop retry: the crop keeps > ratio x threshold of the class (0 off)")
    feature_distance: bool = True
    lambda_fd: float = bounded(0.005, ge=0.0, help="λ_FD, feature-distance weight, DAFormer Eq. 11")
    fd_min_label_ratio: float = bounded(0.75, gt=0.0, le=1.0, help="thing-mask patch share, DAFormer Eq. 10")

    def validate(self) -> None:
        """Raise ConfigError naming the first out-of-range hyperparameter and its valid range."""
        check_fields(self, label="t2sda ")


# --------------------------------------------------------------------------------------------------------------
# FDA image translation (Eq. 6-8)
# --------------------------------------------------------------------------------------------------------------


def fda_window_half_size(height: int, width: int, fda_beta: float) -> int:
    """FDA's b = floor(min(H, W) * beta), as in FDA's reference code."""
    return int(math.floor(min(height, width) * fda_beta))


def fda_low_frequency_mask(height: int, width: int, fda_beta: float,
                           device: torch.device | None = None) -> torch.Tensor:
    """M_beta of Eq. 7 on the unshifted FFT grid: True where |k_y| < b and |k_x| < b (empty for b = 0)."""
    half = fda_window_half_size(height, width, fda_beta)
    rows = torch.fft.fftfreq(height, d=1.0 / height, device=device).abs() < half
    cols = torch.fft.fftfreq(width, d=1.0 / width, device=device).abs() < half
    return rows[:, None] & cols[None, :]


def fda_source_to_target(source: torch.Tensor, target: torch.Tensor, fda_beta: float) -> torch.Tensor:
    """Eq. 8: the source's phase with the target's low-frequency amplitude (per channel, ``[..., H, W]``)."""
    source_spectrum = torch.fft.fft2(source.float())
    target_amplitude = torch.fft.fft2(target.float()).abs()
    mask = fda_low_frequency_mask(source.shape[-2], source.shape[-1], fda_beta, device=source.device)
    amplitude = torch.where(mask, target_amplitude, source_spectrum.abs())
    translated = torch.fft.ifft2(torch.polar(amplitude, source_spectrum.angle()))
    return translated.real.to(source.dtype)


def translate_to_target_style(source_images: torch.Tensor, target_images: torch.Tensor, fda_beta: float,
                              generator: torch.Generator) -> torch.Tensor:
    """Pseudo-target images T(x_s): each source image gets the style of a random target image of the batch.

    Works on ImageNet-normalised batches: FDA runs on [0, 1] pixels (FDA's code works on raw pixels) and the result
    is clamped to the valid range before re-normalising.
    """
    references = torch.randint(0, target_images.shape[0], (source_images.shape[0],), generator=generator)
    references = references.to(target_images.device)
    pixels = fda_source_to_target(denormalize(source_images), denormalize(target_images[references]), fda_beta)
    return normalize(pixels.clamp(0.0, 1.0))


# --------------------------------------------------------------------------------------------------------------
# Self-training baseline (DACS): pseudo-label quality, ClassMix, strong augmentation, weighted CE
# --------------------------------------------------------------------------------------------------------------


def pseudo_label_quality(confidence: torch.Tensor, delta_p: float, per_image: bool = True) -> torch.Tensor:
    """Eq. 3: r = share of pixels with teacher confidence > delta_p, ``[B]`` (one batch-wide value if not per_image)."""
    reliable = (confidence > delta_p).float()
    if per_image:
        return reliable.flatten(1).mean(dim=1)
    return reliable.mean().expand(confidence.shape[0]).clone()


def class_mix_masks(source_labels: torch.Tensor, generator: torch.Generator,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """ClassMix masks ``[B, H, W]``: per source image, the pixels of ceil(k/2) of its k labelled classes."""
    masks = torch.zeros_like(source_labels, dtype=torch.bool)
    for index, labels in enumerate(source_labels):
        classes = labels.unique()
        classes = classes[classes != ignore_index]
        if classes.numel() == 0:
            continue
        order = torch.randperm(classes.numel(), generator=generator).to(classes.device)
        chosen = classes[order[: (classes.numel() + 1) // 2]]
        masks[index] = torch.isin(labels, chosen)
    return masks


def class_mix(source_images: torch.Tensor, source_labels: torch.Tensor, target_images: torch.Tensor,
              pseudo_labels: torch.Tensor, quality: torch.Tensor, masks: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste masked source pixels onto target images: mixed images, labels (GT | pseudo) and pixel weights (1 | r)."""
    images = torch.where(masks[:, None], source_images, target_images)
    labels = torch.where(masks, source_labels, pseudo_labels)
    weights = torch.where(masks, torch.ones_like(masks, dtype=torch.float32),
                          quality.float().view(-1, 1, 1).expand_as(masks))
    return images, labels, weights


def dacs_blur_kernel_size(length: int) -> int:
    """DACS's Gaussian kernel size along one axis: about 10 % of the side, made odd."""
    tenth = math.ceil(0.1 * length)
    return max(1, int(math.floor(tenth - 0.5 + tenth % 2)))


def dacs_strong_augment(images: torch.Tensor, generator: torch.Generator, jitter_strength: float = 0.2,
                        jitter_probability: float = 0.2, blur: bool = True) -> torch.Tensor:
    """DACS strong view of mixed images: colour jitter when a uniform draw exceeds p, blur when one exceeds 0.5."""
    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    pixels = denormalize(images)
    out = []
    for image in pixels:
        if jitter_strength > 0 and uniform(0.0, 1.0) > jitter_probability:
            low, high = 1.0 - jitter_strength, 1.0 + jitter_strength
            image = TF.adjust_brightness(image, uniform(low, high))
            image = TF.adjust_contrast(image, uniform(low, high))
            image = TF.adjust_saturation(image, uniform(low, high))
            image = TF.adjust_hue(image, uniform(-jitter_strength, jitter_strength))
        if blur and uniform(0.0, 1.0) > 0.5:
            sigma = uniform(0.15, 1.15)
            kernel = [dacs_blur_kernel_size(image.shape[-1]), dacs_blur_kernel_size(image.shape[-2])]  # (kx, ky)
            image = TF.gaussian_blur(image, kernel, [sigma, sigma])
        out.append(image.clamp(0.0, 1.0))
    return normalize(torch.stack(out))


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                           ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Eq. 2: mean over pixels of weight x CE (DAFormer's reduction; ignored pixels count as 0)."""
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    return (per_pixel * weights).mean()


# --------------------------------------------------------------------------------------------------------------
# Pulling target to source (Eq. 4-5, 9-18)
# --------------------------------------------------------------------------------------------------------------


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour label maps ``[B, h, w]`` at feature resolution (ignore stays ignore)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def flatten_pixels(embeddings: torch.Tensor) -> torch.Tensor:
    """``[B, d, h, w] -> [B*h*w, d]`` in the same pixel order as ``labels.flatten()``."""
    return embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])


def source_prototypes(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10-11: per-class mean of teacher source embeddings ``[N, d]``, then l2-normalised; plus a presence mask."""
    valid = labels != ignore_index
    labels, embeddings = labels[valid], embeddings[valid]
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, labels, embeddings)
    counts = torch.bincount(labels, minlength=num_classes)
    means = sums / counts.clamp(min=1).to(embeddings.dtype)[:, None]
    return F.normalize(means, dim=1), counts > 0


def class_balanced_query_counts(labels: torch.Tensor, num_classes: int, n: int,
                                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Eq. 16 (CBQS): n_q(c) = ceil(C * p_hat(c) * n), p_hat the batch's source label distribution; ``[C]``.

    Integer arithmetic makes the ceiling exact. Queries are drawn without replacement later, so each count is
    capped at the class's pixel count.
    """
    counts = torch.bincount(labels[labels != ignore_index], minlength=num_classes)
    total = int(counts.sum())
    if total == 0:
        return torch.zeros(num_classes, dtype=torch.long, device=labels.device)
    wanted = (num_classes * n * counts + total - 1) // total
    return torch.minimum(wanted, counts)


def class_equalized_query_counts(labels: torch.Tensor, num_classes: int, n: int,
                                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """CEQS (the ablation in §3.4): n queries for every class present, capped at its pixel count."""
    counts = torch.bincount(labels[labels != ignore_index], minlength=num_classes)
    return torch.clamp(counts, max=n)


def sample_queries(labels: torch.Tensor, counts: torch.Tensor, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: draw ``counts[c]`` distinct pixels of each class c; returns (pixel indices ``[Q]``, classes ``[Q]``)."""
    indices, classes = [], []
    for class_index in torch.nonzero(counts > 0).flatten().tolist():
        pixels = torch.nonzero(labels == class_index).flatten()
        order = torch.randperm(pixels.numel(), generator=generator)[: int(counts[class_index])].to(pixels.device)
        indices.append(pixels[order])
        classes.append(torch.full((order.numel(),), class_index, dtype=torch.long, device=labels.device))
    if not indices:
        empty = torch.zeros(0, dtype=torch.long, device=labels.device)
        return empty, empty.clone()
    return torch.cat(indices), torch.cat(classes)


def unreliable_target_mask(confidence: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 13-14: pixels with confidence below gamma, the batch's alpha-quantile (np.percentile(C, 100 alpha))."""
    gamma = torch.quantile(confidence.flatten().float(), alpha)
    return confidence < gamma


def _draw(candidates: torch.Tensor, rows: int, columns: int, generator: torch.Generator) -> torch.Tensor:
    """``rows x columns`` uniform draws with replacement from a 1-D index tensor."""
    picks = torch.randint(0, candidates.numel(), (rows, columns), generator=generator).to(candidates.device)
    return candidates[picks]


def sample_negative_keys(query_classes: torch.Tensor, source_labels: torch.Tensor, target_pseudo_labels: torch.Tensor,
                         target_unreliable: torch.Tensor, m: int, generator: torch.Generator,
                         domain_equalized: bool = True, ignore_index: int = IGNORE_INDEX
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 12-15 with DENPS: ``m`` negative indices per query into the bank [source pixels; target pixels].

    For a query of class c, the source candidates are labelled source pixels of another class (Eq. 12) and the
    target candidates are unreliable target pixels pseudo-labelled as another class (Eq. 13). Domain-equalized:
    floor(m/2) draws from the source and the rest from the target. Pooled: m draws from the union. Returns
    (indices ``[Q, m]``, valid ``[Q]``); queries without any candidate are marked invalid.
    """
    offset = source_labels.numel()
    negatives = torch.zeros(query_classes.numel(), m, dtype=torch.long, device=query_classes.device)
    valid = torch.ones(query_classes.numel(), dtype=torch.bool, device=query_classes.device)
    source_valid = source_labels != ignore_index
    for class_index in query_classes.unique().tolist():
        rows = torch.nonzero(query_classes == class_index).flatten()
        source_candidates = torch.nonzero(source_valid & (source_labels != class_index)).flatten()
        target_candidates = torch.nonzero(target_unreliable & (target_pseudo_labels != class_index)).flatten() + offset
        if source_candidates.numel() == 0 and target_candidates.numel() == 0:
            valid[rows] = False
            continue
        if domain_equalized and source_candidates.numel() > 0 and target_candidates.numel() > 0:
            from_source = m // 2
            drawn = torch.cat([_draw(source_candidates, rows.numel(), from_source, generator),
                               _draw(target_candidates, rows.numel(), m - from_source, generator)], dim=1)
        else:
            drawn = _draw(torch.cat([source_candidates, target_candidates]), rows.numel(), m, generator)
        negatives[rows] = drawn
    return negatives, valid


def info_nce_loss(queries: torch.Tensor, positives: torch.Tensor, key_bank: torch.Tensor,
                  negative_indices: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 4 per query: -log[e^{q.k+/tau} / (e^{q.k+/tau} + sum_{k-} e^{q.k-/tau})], all vectors l2-normalised.

    Similarities to the whole bank are one matrix product; each query's negatives are then gathered from it
    (no ``[Q, m, d]`` tensor).
    """
    positive_logits = (queries * positives).sum(dim=1, keepdim=True) / tau
    negative_logits = (queries @ key_bank.t()).gather(1, negative_indices) / tau
    logits = torch.cat([positive_logits, negative_logits], dim=1)
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


def mse_pull_loss(queries: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """The MSE alternative (§3.1, Tab. 10): ||q - k+||^2 between l2-normalised pairs, per query."""
    return (queries - positives).pow(2).sum(dim=1)


def class_target_confidence(pseudo_labels: torch.Tensor, confidence: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 18: mean teacher confidence of the target pixels pseudo-labelled c; NaN for classes not predicted."""
    labels = pseudo_labels.flatten()
    sums = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    sums.index_add_(0, labels, confidence.flatten().double())
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan"))).float()


def dynamic_class_weights(class_confidence: torch.Tensor, beta: float, active: torch.Tensor) -> torch.Tensor:
    """Eq. 17: w_c = [(1 - conf(c)) / max_c'(1 - conf(c'))]^beta, normalised to w*_c over the ``active`` classes.

    Classes without a target pseudo-label (NaN confidence) get w_c = 1, the maximum. If every shortfall is 0
    (all confidences 1), all weights are equal.
    """
    shortfall = 1.0 - class_confidence
    known = ~torch.isnan(shortfall)
    largest = shortfall[known].max() if bool(known.any()) else shortfall.new_tensor(0.0)
    if float(largest) > 0:
        ratio = torch.where(known, shortfall / largest, torch.ones_like(shortfall)).clamp(min=0.0)
    else:
        ratio = torch.ones_like(shortfall)
    weights = ratio.pow(beta) * active.float()
    total = weights.sum()
    return weights / total if float(total) > 0 else weights


def reduce_pull_loss(per_query: torch.Tensor, query_classes: torch.Tensor, class_weights: torch.Tensor,
                     num_classes: int, reduction: str = "weighted_mean") -> torch.Tensor:
    """Eq. 5: combine per-query losses with class weights w*_c.

    ``weighted_mean`` is sum_c w*_c mean_q l (default). ``paper_sum`` is the literal (1/C) sum_c w*_c sum_q l.
    """
    sums = per_query.new_zeros(num_classes).index_add(0, query_classes, per_query)
    if reduction == "paper_sum":
        return (class_weights.to(per_query.dtype) * sums).sum() / num_classes
    counts = torch.bincount(query_classes, minlength=num_classes).clamp(min=1).to(per_query.dtype)
    return (class_weights.to(per_query.dtype) * sums / counts).sum()


@dataclass
class PullInputs:
    """Everything L_pull needs from one batch, flattened to pixels at feature resolution."""

    query_embeddings: torch.Tensor      # [Ns, d] student g_s(h_s(T(x_s))), un-normalised, with gradient
    source_labels: torch.Tensor         # [Ns] source trainIds at feature resolution (255 = ignore)
    teacher_source: torch.Tensor        # [Ns, d] teacher g_t(h_t(x_s))
    teacher_target: torch.Tensor        # [Nt, d] teacher g_t(h_t(x_t))
    target_pseudo_labels: torch.Tensor  # [Nt] teacher argmax at feature resolution
    target_confidence: torch.Tensor     # [Nt] teacher max-probability at feature resolution
    class_confidence: torch.Tensor      # [C] Eq. 18 (NaN where not predicted)


def pull_loss(inputs: PullInputs, config: T2sdaConfig, num_classes: int,
              generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """L_pull of one batch (Eq. 4-5, 9-18), plus statistics (queries, classes) for the report."""
    count_queries = (class_balanced_query_counts if config.query_sampling == "class_balanced"
                     else class_equalized_query_counts)
    counts = count_queries(inputs.source_labels, num_classes, config.n)
    query_pixels, query_classes = sample_queries(inputs.source_labels, counts, generator)
    negatives, valid = sample_negative_keys(
        query_classes, inputs.source_labels, inputs.target_pseudo_labels,
        unreliable_target_mask(inputs.target_confidence, config.alpha), config.m, generator,
        domain_equalized=config.negative_sampling == "domain_equalized")
    query_pixels, query_classes, negatives = query_pixels[valid], query_classes[valid], negatives[valid]
    if query_pixels.numel() == 0:
        # Keep the projector in the graph so DDP sees a gradient (zero) for every parameter.
        return inputs.query_embeddings.sum() * 0.0, {"queries": 0.0, "query_classes": 0.0}
    queries = F.normalize(inputs.query_embeddings[query_pixels], dim=1)
    prototypes, _ = source_prototypes(inputs.teacher_source, inputs.source_labels, num_classes)
    positives = prototypes[query_classes]
    if config.pull_loss == "infonce":
        key_bank = F.normalize(torch.cat([inputs.teacher_source, inputs.teacher_target]), dim=1)
        per_query = info_nce_loss(queries, positives, key_bank, negatives, config.tau)
    else:
        per_query = mse_pull_loss(queries, positives)
    active = torch.bincount(query_classes, minlength=num_classes) > 0
    beta = config.beta if config.dynamic_reweighting else 0.0  # beta = 0 gives uniform weights over active classes
    weights = dynamic_class_weights(inputs.class_confidence, beta, active)
    loss = reduce_pull_loss(per_query, query_classes, weights, num_classes, config.pull_reduction)
    return loss, {"queries": float(query_pixels.numel()), "query_classes": float(active.sum())}


# --------------------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------------------


def build_adamw(network: nn.Module, config: T2sdaConfig) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.999, weight decay 0.01): head and projector at lr, encoder at lr * backbone_lr_ratio (§4)."""
    groups = parameter_groups(network, config.learning_rate, config.backbone_lr_ratio)
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.999), weight_decay=config.weight_decay)


def warmup_poly_scheduler(optimizer: torch.optim.Optimizer, warmup_iterations: int, total_iterations: int,
                          power: float = 1.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup_iterations`` then poly(power) decay to 0 (DAFormer's schedule, §4)."""
    if warmup_iterations == 0:
        return build_scheduler(optimizer, total_iterations, "poly", power=power)
    total = max(1, total_iterations)

    def factor(step: int) -> float:
        if step < warmup_iterations:
            return (step + 1) / warmup_iterations
        return max(0.0, 1.0 - min(step, total) / total) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def ema_momentum(iteration: int, eta: float) -> float:
    """DACS's ramped EMA momentum min(1 - 1/(t + 1), eta), with t the number of student updates so far."""
    return min(1.0 - 1.0 / (iteration + 1), eta)


# --------------------------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------------------------


def _upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Logits bilinearly resized to ``size`` (align_corners=True, the models' convention)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def _match_size(images: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a source batch to the target batch's size (ClassMix and FDA need equal shapes)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images, labels
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return images, labels


def build_student(ctx: RunContext, source_weights: dict[str, torch.Tensor],
                  config: T2sdaConfig) -> SegmenterWithProjector:
    """Source-only segmenter plus a fresh projector (d = projector_dim); BN frozen unless configured otherwise."""
    segmenter = ctx.build_model(pretrained=False)
    segmenter.load_state_dict(source_weights)
    torch.manual_seed(ctx.spec.seed + 17)  # the projector's initialisation is reproducible per seed
    projector = ProjectorHead(segmenter.feature_dim, config.projector_dim, final_relu=config.projector_final_relu)
    student = SegmenterWithProjector(segmenter, projector).to(ctx.device)
    if config.freeze_batchnorm:
        freeze_batchnorm(student)
    return student.train()


@torch.no_grad()
def _mean_confidence(model: nn.Module, images: torch.Tensor) -> float:
    """Mean max-softmax of a segmenter on a batch (label-free), in eval mode without touching BN statistics."""
    was_training = model.training
    model.eval()
    confidence = model(images).softmax(dim=1).amax(dim=1).mean()
    model.train(was_training)
    return float(confidence)


def _mixed_batch(source_images: torch.Tensor, source_labels: torch.Tensor, target_images: torch.Tensor,
                 pseudo_labels: torch.Tensor, quality: torch.Tensor, config: T2sdaConfig,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DACS's ClassMix of source classes onto target images, then the strong view: L_target's inputs (Eq. 2-3)."""
    masks = class_mix_masks(source_labels, generator)
    images, labels, weights = class_mix(source_images, source_labels, target_images, pseudo_labels, quality, masks)
    images = dacs_strong_augment(images, generator, config.color_jitter_strength, config.color_jitter_probability,
                                 config.blur)
    return images, labels, weights


def _weak_views(source: dict[str, Any], target: dict[str, Any], config: T2sdaConfig,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weakly augmented source images and labels and target images; a source crop is redrawn until it keeps
    the class rare-class sampling drew for it (DAFormer's RCS crop retry, off when ``rcs_min_crop_ratio`` is 0)."""
    target_images, _ = weak_augment(target["image"], None, generator)
    keep = source.get("rcs_class") if config.rcs_min_crop_ratio > 0 else None
    source_images, source_labels = weak_augment(
        source["image"], source["label"], generator, keep_classes=keep,
        keep_fraction=config.rcs_min_crop_ratio * config.rcs_min_pixels_fraction, crop_retries=DAFORMER_RCS_CROP_RETRIES)
    return source_images, source_labels, target_images

def training_step(network: nn.Module, teacher: SegmenterWithProjector, optimizer: torch.optim.Optimizer,
                  source: dict[str, Any], target: dict[str, Any], config: T2sdaConfig, ctx: RunContext,
                  generator: torch.Generator, iteration: int, reference: nn.Module | None = None) -> dict[str, float]:
    """One T2S-DA iteration: teacher labels and keys, ClassMix, FDA, student forward, FD if ``reference``, update."""
    device, num_classes = ctx.device, ctx.num_classes
    source_images, source_labels, target_images = _weak_views(source, target, config, generator)
    target_images = target_images.to(device)
    size = tuple(target_images.shape[-2:])
    source_images, source_labels = _match_size(source_images.to(device), source_labels.to(device), size)
    batch = source_images.shape[0]

    with torch.no_grad(), ctx.acceleration.autocast():
        teacher_logits, teacher_embeddings = (t.float() for t in teacher(torch.cat([source_images, target_images])))
        target_logits_low = teacher_logits[batch:]
        target_confidence, pseudo_labels = _upsample(target_logits_low, size).softmax(dim=1).max(dim=1)
        low_confidence, low_pseudo_labels = target_logits_low.softmax(dim=1).max(dim=1)

    quality = pseudo_label_quality(target_confidence, config.delta_p, per_image=config.quality_weight == "per_image")
    mixed_images, mixed_labels, mixed_weights = _mixed_batch(source_images, source_labels, target_images,
                                                             pseudo_labels, quality, config, generator)
    pseudo_target_images = translate_to_target_style(source_images, target_images, config.fda_beta, generator)

    segmenter = unwrap(network).segmenter
    with captured_output(bottleneck_module(segmenter) if reference is not None else None) as bottleneck, \
            ctx.acceleration.autocast():
        logits_low, embeddings = network(torch.cat([source_images, pseudo_target_images, mixed_images]))
    logits_low, embeddings = logits_low.float(), embeddings.float()  # the losses run in float32
    logits = _upsample(logits_low, size)
    loss_source = cross_entropy(logits[:batch], source_labels)
    loss_target = weighted_cross_entropy(logits[2 * batch:], mixed_labels, mixed_weights)
    feature_size = tuple(embeddings.shape[-2:])
    inputs = PullInputs(
        query_embeddings=flatten_pixels(embeddings[batch:2 * batch]),
        source_labels=downsample_labels(source_labels, feature_size).flatten(),
        teacher_source=flatten_pixels(teacher_embeddings[:batch]),
        teacher_target=flatten_pixels(teacher_embeddings[batch:]),
        target_pseudo_labels=low_pseudo_labels.flatten(),
        target_confidence=low_confidence.flatten(),
        class_confidence=class_target_confidence(pseudo_labels, target_confidence, num_classes),
    )
    loss_pull, pull_statistics = pull_loss(inputs, config, num_classes, generator)
    loss_fd = (loss_pull.new_zeros(()) if reference is None else thing_feature_distance(
        bottleneck[0][:batch], reference, source_images, source_labels, num_classes, config.fd_min_label_ratio))
    loss = loss_source + loss_target + config.lambda_ * loss_pull + config.lambda_fd * loss_fd  # + DAFormer Eq. 11
    stop_if_not_finite(ctx, loss, f"t2sda iteration {iteration}")
    optimizer.zero_grad(set_to_none=True)
    ctx.acceleration.backward_step(loss, optimizer)
    ema_update(teacher, network, ema_momentum(iteration + 1, config.eta))

    if config.evaluate_teacher:
        confidence = float(target_confidence.mean())
    else:
        confidence = _mean_confidence(segmenter, target_images)
    return {LOSS: float(loss.detach()), "loss_source": float(loss_source.detach()),
            "loss_target": float(loss_target.detach()), "loss_pull": float(loss_pull.detach()),
            "loss_fd": float(loss_fd.detach()),
            "fd_loss_share": float((config.lambda_fd * loss_fd.detach() / loss.detach().abs().clamp(min=1e-12))),
            TARGET_CONFIDENCE: confidence, "pseudo_label_quality": float(quality.mean()), **pull_statistics}


def source_class_pixels(ctx: RunContext) -> torch.Tensor:
    """Labelled pixels per source training image and class ``[N, C]``, counted once per source set (shared stage)."""
    stage = ctx.cached_stage(
        "source_class_pixels", key={"num_classes": ctx.num_classes}, per_target=False,
        build=lambda: {"counts": source_class_pixel_counts(ctx.source_dataset(), ctx.num_classes)})
    return stage["counts"]


def source_loader(ctx: RunContext, config: T2sdaConfig) -> DataLoader:
    """Source batches: DAFormer's rare-class sampling (Eq. 7) when on, else the sharded uniform shuffle."""
    dataset = ctx.source_dataset()
    if not config.rare_class_sampling:
        return ctx.loader(dataset, config.batch_size, seed_offset=41)
    per_worker = max(1, config.batch_size // ctx.world_size)
    sampler = RareClassSampler(source_class_pixels(ctx), config.rcs_temperature,
                               num_samples=max(per_worker, len(dataset) // ctx.world_size), seed=ctx.spec.seed + 41,
                               rank=ctx.rank, min_pixels_fraction=config.rcs_min_pixels_fraction, with_classes=True)
    return DataLoader(RareClassDataset(dataset), batch_size=per_worker, sampler=sampler, drop_last=True,
                      **ctx.acceleration.loader_options())


def train(config: T2sdaConfig, ctx: RunContext) -> TrainResult:
    """Per-worker T2S-DA loop from the cached source model; reports every ``report_interval`` iterations.

    Returns the student segmenter (``evaluate_teacher=True``: the EMA teacher's), without the projector.
    """
    source_weights = source_stage(ctx, config.source_settings())["model"]
    student = build_student(ctx, source_weights, config)
    reference, reference_kind = (feature_distance_reference(lambda: ctx.build_model(pretrained=True), student.segmenter)
                                 if config.feature_distance else (None, None))  # frozen, never resumed
    fd_metrics = {} if reference is None else {"fd_imagenet_reference": float(reference_kind == IMAGENET_REFERENCE)}
    teacher = make_ema_teacher(student)
    network = ctx.distributed(student)
    optimizer = build_adamw(network, config)
    scheduler = warmup_poly_scheduler(optimizer, config.warmup_iterations, config.iterations)
    generator = torch.Generator().manual_seed(ctx.spec.seed * 7919 + ctx.rank)
    start_iteration, reports = 0, 0

    state = ctx.restore()
    if state is not None:
        unwrap(network).load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_iteration, reports = state["iteration"], state["epoch"]

    # Loader passes restart with a new shuffle seed after a resume (start_epoch), never replaying the same order.
    source_batches = infinite_batches(source_loader(ctx, config), start_epoch=start_iteration)
    target_batches = infinite_batches(ctx.loader(ctx.target_dataset(), config.batch_size, seed_offset=42),
                                      start_epoch=start_iteration)
    running = RunningMean()
    for iteration in range(start_iteration, config.iterations):
        running.add(**training_step(network, teacher, optimizer, next(source_batches), next(target_batches),
                                    config, ctx, generator, iteration, reference), **fd_metrics)
        scheduler.step()
        done = iteration + 1
        if done % config.report_interval == 0 or done == config.iterations:
            reports += 1
            report = EpochReport.from_measurements(epoch=reports, iteration=done, measurements=running.means(ctx))
            running.reset()
            checkpoint = {"student": unwrap(network).state_dict(), "teacher": teacher.state_dict(),
                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "generator": generator.get_state(), "iteration": done, "epoch": reports}
            ctx.report(report, checkpoint_state=checkpoint,
                       model=teacher.segmenter if config.evaluate_teacher else unwrap(network).segmenter)
    model = teacher.segmenter if config.evaluate_teacher else unwrap(network).segmenter
    return TrainResult(model.eval())


def prepare_shared(config: T2sdaConfig, ctx: RunContext) -> None:
    """Build what every trial shares once before the sweep: the source-only model and, with RCS, the class counts."""
    source_stage(ctx, config.source_settings())
    if config.rare_class_sampling:
        source_class_pixels(ctx)


register(Method(
    name="t2sda",
    tasks=("segmentation",),
    config_class=T2sdaConfig,
    train=train,
    prepare_shared=prepare_shared,
    shared_stage_key=lambda config: (config.source_settings(), config.rare_class_sampling),
    description="T2S-DA: DACS mean teacher with DAFormer's rare-class sampling and feature distance + pulling FDA "
                "pseudo-target features to teacher source prototypes (InfoNCE/MSE, class-balanced queries, "
                "domain-equalized negatives, dynamic re-weighting)",
))
