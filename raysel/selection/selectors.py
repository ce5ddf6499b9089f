"""Label-free selectors: score every candidate of a sweep from its cached predictions (higher is better).

Every selector sees only :class:`~raysel.selection.predictions.CandidatePredictions` on the same subset of target
*training* images — never a target label. Registered names:

=================  =======================================================================  =============
name               score                                                                    probabilities
=================  =======================================================================  =============
``fmiou``          mIoU against the pixelwise majority vote of all candidates (HIAST §4.5)  no
``confident_fmiou`` F-mIoU on pixels where a strict majority agrees (raysel's variant)      no
``soft_vote``      mIoU against the argmax of the candidates' mean probabilities (EnsV)     yes
``entropy``        negative mean prediction entropy                                         yes
``im``             information maximization H(mean p) − mean H(p)                           yes
``snd``            soft neighbourhood density (Saito et al., ICCV 2021)                     yes
``rank_mean``      mean rank over fmiou, soft_vote and im (raysel's combination)            yes
``cluster_ami``    ClassAMI: AMI of k-means on cached features vs. predictions (Ericsson+)  features
``robust``         ensemble-agreement veto (EnsV), then IM among the survivors (raysel's)   yes
=================  =======================================================================  =============

For classification the agreement selectors use accuracy instead of mIoU (fused-vote agreement), and the
probability selectors work on per-image rather than per-pixel probability vectors.

**Trial-scored selectors** (:data:`TRIAL_SCORE_SELECTORS`) score what the cached predictions cannot hold: each
trial computes its label-free score itself and stores it as ``score_<name>``; selection reads the stored scores
(:func:`raysel.selection.decision.select_sweep`). ``merge_quality`` is HDRQ's merge-quality score
(:mod:`raysel.quant.merge_quality`: agreement of the merged model with every target's quantized specialist,
harmonic mean over targets), computed by the ``hdrq`` method, which alone holds the specialists. ``consistency``
(perturbation consistency) and ``mixval`` (MixVal) are computed by every trial from its model
(:mod:`raysel.selection.model_scores`). A selector that cannot run on a sweep raises :class:`SelectionSkipped`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, Sequence

import numpy as np
import torch
from scipy.special import xlogy
from scipy.stats import rankdata

from raysel.errors import ConfigError, DataError, unknown_name_error
from raysel.metrics import ConfusionMatrix, miou, pixel_accuracy
from raysel.selection.combination import cluster_ami, guarded_ranks
from raysel.selection.predictions import CandidatePredictions
from raysel.selection.voting import fused_vote_accumulator

if TYPE_CHECKING:  # pragma: no cover
    import pandas


class Selector(Protocol):
    """What every selector offers: a name, whether it needs cached probabilities, and one score per candidate."""

    name: str
    needs_probabilities: bool

    def score(self, candidates: Sequence[CandidatePredictions]) -> np.ndarray:
        """One float64 score per candidate, in input order; higher means the candidate is predicted better."""
        ...


# --------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------


def check_candidates(candidates: Sequence[CandidatePredictions], selector: str, min_candidates: int,
                     needs_probabilities: bool) -> list[CandidatePredictions]:
    """Raise DataError unless the candidates are enough and were predicted on the same images and label space."""
    candidates = list(candidates)
    if len(candidates) < min_candidates:
        reason = " (F-mIoU is undefined for one candidate)" if min_candidates >= 2 else ""
        raise DataError(f"selector {selector!r} needs at least {min_candidates} candidates' predictions; got "
                        f"{len(candidates)}{reason}")
    first = candidates[0]
    for position, candidate in enumerate(candidates[1:], start=1):
        where = f"selector {selector!r}: candidate {position} and candidate 0"
        if candidate.task != first.task:
            raise DataError(f"{where} have different tasks ({candidate.task} vs {first.task})")
        if candidate.num_classes != first.num_classes:
            raise DataError(f"{where} have different class sets ({candidate.num_classes} vs {first.num_classes} "
                            "classes)")
        if candidate.image_ids != first.image_ids or not np.array_equal(candidate.image_indices,
                                                                        first.image_indices):
            raise DataError(f"{where} were predicted on different images; every candidate must predict the same "
                            "selection subset (same size and seed)")
        if candidate.labels.shape != first.labels.shape:
            raise DataError(f"{where} have different prediction shapes ({candidate.labels.shape} vs "
                            f"{first.labels.shape}); predict at one image size")
    if needs_probabilities:
        for position, candidate in enumerate(candidates):
            if candidate.probabilities is None:
                raise DataError(f"selector {selector!r} needs probabilities, but candidate {position} was cached "
                                "without them (predict with keep_probabilities=True)")
        for position, candidate in enumerate(candidates[1:], start=1):
            same_grid = (candidate.probabilities.shape == first.probabilities.shape
                         and _same_optional(candidate.probability_rows, first.probability_rows)
                         and _same_optional(candidate.probability_cols, first.probability_cols))
            if not same_grid:
                raise DataError(f"selector {selector!r}: candidates 0 and {position} kept probabilities on different "
                                f"pixel grids ({first.probabilities.shape} vs {candidate.probabilities.shape})")
    return candidates


def _same_optional(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _agreement_score(matrix: np.ndarray, task: str) -> float:
    """mIoU (segmentation) or accuracy (classification) of one confusion matrix, via raysel.metrics."""
    return miou(matrix) if task == "segmentation" else pixel_accuracy(matrix)


def _entropy(probabilities: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy (nats) along ``axis``; 0·log 0 = 0."""
    return -xlogy(probabilities, probabilities).sum(axis=axis)


# --------------------------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseSelector:
    """Shared plumbing: input checks, then :meth:`_score` on validated candidates."""

    name: ClassVar[str] = ""
    needs_probabilities: ClassVar[bool] = False
    min_candidates: ClassVar[int] = 1

    def score(self, candidates: Sequence[CandidatePredictions]) -> np.ndarray:
        """One float64 score per candidate (higher is better); DataError on unusable input."""
        checked = check_candidates(candidates, self.name, self.min_candidates, self.needs_probabilities)
        return np.asarray(self._score(checked), dtype=np.float64)

    def _score(self, candidates: list[CandidatePredictions]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class FMIoUSelector(BaseSelector):
    """HIAST F-mIoU (Zhu et al., HIAST, §4.5 and Algorithm 3).

    The fused label is the pixelwise majority vote of all candidates (ties → lowest class id); a candidate's score
    is its mIoU against the fused labels, intersections and unions summed over the whole subset. Classification:
    accuracy against the per-image majority vote. See :mod:`raysel.selection.voting` for the exact conventions.
    """

    name: ClassVar[str] = "fmiou"
    min_candidates: ClassVar[int] = 2

    def _score(self, candidates: list[CandidatePredictions]) -> np.ndarray:
        accumulator = fused_vote_accumulator([c.labels for c in candidates], candidates[0].num_classes)
        return accumulator.miou() if candidates[0].task == "segmentation" else accumulator.accuracy()


@dataclass(frozen=True)
class ConfidentFMIoUSelector(BaseSelector):
    """F-mIoU restricted to pixels whose fused label won a strict majority (raysel's variant of HIAST §4.5).

    Design: where the candidates split (say 4/3/3 of 10), the plurality label is close to a coin toss, and a
    candidate that happens to side with the plurality is rewarded for luck, not quality; with few candidates each
    candidate's own vote also weighs heavily there. Pixels where the winning label has at most
    ``min_agreement`` × n votes are therefore left out (ignore label) of every candidate's intersections and
    unions. ``min_agreement = 0.5`` keeps exactly the pixels with a strict majority; it must lie in [0, 1).
    Classification: accuracy on the images with a strict-majority vote.
    """

    name: ClassVar[str] = "confident_fmiou"
    min_candidates: ClassVar[int] = 2
    min_agreement: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement < 1.0:
            raise ConfigError(f"confident_fmiou: min_agreement must lie in [0, 1); got {self.min_agreement}")

    def _score(self, candidates: list[CandidatePredictions]) -> np.ndarray:
        min_votes = math.floor(self.min_agreement * len(candidates)) + 1
        accumulator = fused_vote_accumulator([c.labels for c in candidates], candidates[0].num_classes, min_votes)
        return accumulator.miou() if candidates[0].task == "segmentation" else accumulator.accuracy()


@dataclass(frozen=True)
class SoftVoteSelector(BaseSelector):
    """Ensemble (soft-vote) agreement, in the spirit of EnsV (Hu et al., "ensemble-based validation" for UDA).

    The pseudo ground truth is the argmax of the candidates' mean softmax probabilities (ties → lowest class id); a
    candidate's score is the mIoU of its hard labels against it (accuracy for classification). Segmentation uses
    the cached probability grid, i.e. a uniform pixel sample of every image.
    """

    name: ClassVar[str] = "soft_vote"
    needs_probabilities: ClassVar[bool] = True
    min_candidates: ClassVar[int] = 2

    def _score(self, candidates: list[CandidatePredictions]) -> np.ndarray:
        mean = np.zeros(candidates[0].probabilities.shape, dtype=np.float32)
        for candidate in candidates:
            mean += candidate.probabilities
        ensemble = mean.argmax(axis=1)
        num_classes = candidates[0].num_classes
        scores = []
        for candidate in candidates:
            matrix = ConfusionMatrix(num_classes).update(candidate.labels_on_probability_grid(), ensemble).matrix
            scores.append(_agreement_score(matrix, candidate.task))
        return np.array(scores)


@dataclass(frozen=True)
class EntropySelector(BaseSelector):
    """Negative mean prediction entropy (entropy minimisation, Grandvalet & Bengio 2005; a common UDA baseline).

    Score = −mean over pixels (images) of H(p) = −Σ_c p_c log p_c; confident candidates score higher.
    """

    name: ClassVar[str] = "entropy"
    needs_probabilities: ClassVar[bool] = True

    def _score(self, candidates: list[CandidatePredictions]) -> np.ndarray:
        return np.array([-float(_entropy(c.probability_vectors()).mean()) for c in candidates])


@dataclass(frozen=True)
class InformationMaximizationSelector(BaseSelector):
    """Information maximization, H(E[p]) − E[H(p)] (Liang et al., SHOT, ICML 2020; Morerio et al., ICLR 2018).

    Confident per-sample predictions (low mean entropy) that still cover the classes (high entropy of the mean
    prediction over the subset) score higher; it penalises the collapse to one class that plain entropy rewards.
    """

    name: ClassVar[str] = "im"
    needs_probabilities: ClassVar[bool] = True

    def _score(self, candidates: list[CandidatePredictions]) -> np.ndarray:
        scores = []
        for candidate in candidates:
            vectors = candidate.probability_vectors().reshape(-1, candidate.num_classes)
            marginal = vectors.mean(axis=0)
            scores.append(float(_entropy(marginal / max(marginal.sum(), 1e-12))) - float(_entropy(vectors).mean()))
        return np.array(scores)


@dataclass(frozen=True)
class SNDSelector(BaseSelector):
    """Soft neighbourhood density (Saito, Kim, Teterwak, Sclaroff, Darrell, Saenko, ICCV 2021).

    Features are the softmax outputs, L2-normalised; similarities are scaled by 1/``tau`` (τ = 0.05), each
    sample's similarities to the others go through a softmax, and SND is the mean entropy of those neighbourhood
    distributions (higher: denser neighbourhoods, the paper's selection criterion). As in Saito et al.'s code,
    self-similarity is masked with −1/τ. Segmentation follows their AdaptSegNet script: ``pixels_per_image``
    (default 100) pixels are drawn per image (here with a fixed ``seed``, the same pixels for every candidate, from
    the cached grid), SND is computed within each image and averaged over images — O(N·k²). Classification uses
    all images (a seeded subsample of ``max_samples`` when there are more).
    """

    name: ClassVar[str] = "snd"
    needs_probabilities: ClassVar[bool] = True
    tau: float = 0.05
    pixels_per_image: int = 100
    max_samples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tau <= 0 or self.pixels_per_image < 2 or self.max_samples < 2:
            raise ConfigError("snd: tau must be > 0, pixels_per_image and max_samples >= 2; got "
                              f"tau={self.tau}, pixels_per_image={self.pixels_per_image}, "
                              f"max_samples={self.max_samples}")

    def _sample(self, candidate: CandidatePredictions) -> np.ndarray:
        """Seeded sample ``[groups, k, C]``: pixels per image (segmentation) or one group of images."""
        rng = np.random.default_rng(self.seed)
        vectors = candidate.probability_vectors()
        if candidate.task == "classification":
            flat = vectors[:, 0, :]
            if len(flat) > self.max_samples:
                flat = flat[np.sort(rng.choice(len(flat), self.max_samples, replace=False))]
            return flat[None]
        per_image = vectors.shape[1]
        if per_image > self.pixels_per_image:
            chosen = np.sort(rng.choice(per_image, self.pixels_per_image, replace=False))
            vectors = vectors[:, chosen]
        return vectors

    def _score(self, candidates: list[CandidatePredictions]) -> np.ndarray:
        scores = []
        for candidate in candidates:
            features = torch.nn.functional.normalize(torch.from_numpy(self._sample(candidate)), dim=-1)
            if features.shape[1] < 2:
                raise DataError("snd needs at least two samples per group (images, or pixels per image)")
            similarity = features @ features.transpose(1, 2) / self.tau
            eye = torch.eye(similarity.shape[1], dtype=torch.bool)
            similarity.masked_fill_(eye, -1.0 / self.tau)
            neighbourhood = torch.softmax(similarity, dim=-1)
            entropy = -torch.special.xlogy(neighbourhood, neighbourhood).sum(dim=-1)
            scores.append(float(entropy.mean()))
        return np.array(scores)


@dataclass(frozen=True)
class RankMeanSelector(BaseSelector):
    """Mean rank over ``components`` (default fmiou, soft_vote, im): a Borda count (raysel's combination).

    Design: the components fail differently — F-mIoU and soft voting reward agreeing with the crowd (and so
    a crowd of similar failures), IM rewards confident, class-balanced predictions regardless of the others.
    Ranks (1 = worst, ties averaged, NaN = worst) make the scales comparable without tuning weights; the score
    is the mean rank, so higher is better, like every selector.
    """

    name: ClassVar[str] = "rank_mean"
    needs_probabilities: ClassVar[bool] = True
    min_candidates: ClassVar[int] = 2
    components: tuple[str, ...] = ("fmiou", "soft_vote", "im")

    def __post_init__(self) -> None:
        unknown = [name for name in self.components if name not in SELECTORS or name == self.name]
        if not self.components or unknown:
            raise ConfigError(f"rank_mean: components must be selector names other than rank_mean; got "
                              f"{list(self.components)} (valid: {', '.join(n for n in SELECTORS if n != self.name)})")

    def _score(self, candidates: list[CandidatePredictions]) -> np.ndarray:
        ranks = []
        for name in self.components:
            scores = get_selector(name).score(candidates)
            ranks.append(rankdata(np.where(np.isnan(scores), -np.inf, scores)))
        return np.mean(ranks, axis=0)


class SelectionSkipped(DataError):
    """A selector cannot run on these candidates (no features cached, no trial score): skip it, the others decide."""


@dataclass(frozen=True)
class ClusterAMISelector(BaseSelector):
    """ClassAMI (Ericsson, Li, Hospedales, "Better practices for domain adaptation", AutoML 2023): adjusted mutual
    information between k-means clusters (k = C) of the candidate's cached penultimate features and its predicted
    labels (:func:`raysel.selection.combination.cluster_ami`). Skipped when a candidate cached no features."""

    name: ClassVar[str] = "cluster_ami"
    needs_probabilities: ClassVar[bool] = True  # features are cached only together with the probabilities
    needs_features: ClassVar[bool] = True
    seed: int = 0

    def _score(self, candidates: list[CandidatePredictions]) -> np.ndarray:
        if any(candidate.features is None for candidate in candidates):
            raise SelectionSkipped("selector 'cluster_ami' needs cached features; these predictions have none "
                                   "(cached by an older raysel or with keep_probabilities=False: use --repredict)")
        return np.array([cluster_ami(*candidate.feature_samples(), candidate.num_classes, self.seed)
                         for candidate in candidates])


@dataclass(frozen=True)
class RobustSelector(BaseSelector):
    """Veto, then rank (raysel's combination): candidates whose agreement with the ensemble (``soft_vote``, EnsV)
    is below the ``veto_quantile`` quantile of the sweep are vetoed — EnsV's worst-case guarantee that the pick is
    never far from the ensemble keeps collapsed or broken candidates out — and the survivors are ranked by
    ``ranker`` (IM). Design is a priori: no number was measured for it in this session. IM is the ranker because
    it had the lowest mean regret (0.16 points) in BENCHMARKS.md's selection_quality run, measured on day_city and
    dusk_city (development targets); the 0.25 quantile is a round choice, not tuned on any target."""

    name: ClassVar[str] = "robust"
    needs_probabilities: ClassVar[bool] = True
    min_candidates: ClassVar[int] = 2
    veto_quantile: float = 0.25
    ranker: str = "im"

    def __post_init__(self) -> None:
        valid_ranker = self.ranker in SELECTORS and self.ranker not in (self.name, "soft_vote")
        if not 0.0 <= self.veto_quantile < 1.0 or not valid_ranker:
            raise ConfigError(f"robust: veto_quantile must lie in [0, 1) and ranker be another selector than "
                              f"soft_vote; got {self.veto_quantile}, {self.ranker!r}")

    def _score(self, candidates: list[CandidatePredictions]) -> np.ndarray:
        agreement = SoftVoteSelector().score(candidates)
        return guarded_ranks(agreement, get_selector(self.ranker).score(candidates), self.veto_quantile)


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------

SELECTORS: dict[str, type[BaseSelector]] = {}


def register_selector(selector_class: type[BaseSelector]) -> type[BaseSelector]:
    """Add a selector class to the registry under its ``name`` (a name may be registered once)."""
    if selector_class.name in SELECTORS and SELECTORS[selector_class.name] is not selector_class:
        raise ValueError(f"selector {selector_class.name!r} is already registered")
    SELECTORS[selector_class.name] = selector_class
    return selector_class


for _selector_class in (FMIoUSelector, ConfidentFMIoUSelector, SoftVoteSelector, EntropySelector,
                        InformationMaximizationSelector, SNDSelector, RankMeanSelector, ClusterAMISelector,
                        RobustSelector):
    register_selector(_selector_class)


def selector_names() -> list[str]:
    """Registered selector names (prediction-based, then trial-scored), in registration order."""
    return list(SELECTORS) + list(TRIAL_SCORE_SELECTORS)


def get_selector(name: str, **params: object) -> "BaseSelector | TrialScoreSelector":
    """Build the selector ``name`` with optional hyperparameters; ConfigError naming the valid names or keys."""
    if name in TRIAL_SCORE_SELECTORS and not params:
        return TRIAL_SCORE_SELECTORS[name]()
    if name not in SELECTORS:
        raise unknown_name_error("selector", name, selector_names(), "valid selectors")
    selector_class = SELECTORS[name]
    valid = {field.name for field in dataclasses.fields(selector_class)}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ConfigError(f"selector {name!r} has no parameter(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(valid)) or 'none'}")
    return selector_class(**params)  # type: ignore[arg-type]


def select_best(scores: Sequence[float] | np.ndarray) -> int:
    """Index of the highest score (NaN scores never win; ties → the first candidate); DataError if all are NaN."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0 or np.isnan(scores).all():
        raise DataError("no candidate has a finite selector score; nothing to select")
    return int(np.nanargmax(scores))


# --------------------------------------------------------------------------------------------------------------
# Trial-scored selectors: the label-free score was computed inside each trial and stored with its row
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialScoreSelector:
    """A label-free score each trial computed itself (stored as ``score_<name>``); higher is better."""

    name: ClassVar[str] = ""
    needs_probabilities: ClassVar[bool] = False

    @property
    def column(self) -> str:
        """The store column holding the score."""
        return f"score_{self.name}"

    def score_trials(self, trials: "pandas.DataFrame") -> np.ndarray:
        """The stored scores of ``trials`` (rows of the result store), in row order; DataError when absent."""
        if self.column not in trials or trials[self.column].isna().all():
            raise SelectionSkipped(f"selector {self.name!r} reads the score every trial stores as {self.column}; "
                                   "these trials have none (only methods or raysel versions that compute it do; "
                                   "--repredict recomputes consistency and mixval)")
        return trials[self.column].to_numpy(dtype=np.float64, na_value=np.nan)


@dataclass(frozen=True)
class MergeQualitySelector(TrialScoreSelector):
    """HDRQ merge quality: harmonic mean over targets of the merged model's agreement (mIoU, or accuracy) with each
    target's quantized specialist on the target's unlabeled selection subset (raysel.quant.merge_quality)."""

    name: ClassVar[str] = "merge_quality"


@dataclass(frozen=True)
class ConsistencySelector(TrialScoreSelector):
    """Perturbation consistency (CRank / CTE / DAS-FIS family): class-balanced agreement of the model with itself
    under flip, photometric change and feature dropout, computed in the trial (raysel.selection.model_scores)."""

    name: ClassVar[str] = "consistency"


@dataclass(frozen=True)
class MixValSelector(TrialScoreSelector):
    """MixVal (Hu et al., NeurIPS 2023): accuracy on mixup (classification) or ClassMix (segmentation) probes built
    from the model's own pseudo-labels, computed in the trial (raysel.selection.model_scores)."""

    name: ClassVar[str] = "mixval"


TRIAL_SCORE_SELECTORS: dict[str, type[TrialScoreSelector]] = {
    selector.name: selector for selector in (MergeQualitySelector, ConsistencySelector, MixValSelector)}
