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

**Non-finite candidates** (NaN or infinite outputs: :func:`finite_candidates`) get no score (NaN) from every selector
and are left out of every ensemble (majority vote, soft vote, and so of ``rank_mean`` and ``robust``); one NaN member
used to turn the soft-vote mean into class 0 everywhere, so that a model collapsed to class 0 agreed with it
perfectly. Too few finite candidates left is a :class:`SelectionSkipped` saying so.

**Collapse guard** of ``entropy`` and ``snd`` (:func:`collapsed_candidates`): both score a model that predicts one
class everywhere best (confident; all neighbours alike), so a candidate whose predictions use fewer than
``COLLAPSE_EFFECTIVE_CLASSES`` = 2 effective classes gets no score from them (see :func:`effective_classes` for the
bound and why it needs no target label).

**Trial-scored selectors** (:data:`TRIAL_SCORE_SELECTORS`) score what the cached predictions cannot hold: each
trial computes its label-free score itself and stores it as ``score_<name>``; selection reads the stored scores
(:func:`raysel.selection.decision.select_sweep`). ``merge_quality`` is HDRQ's merge-quality score
(:mod:`raysel.quant.merge_quality`: agreement of the merged model with every target's quantized specialist,
harmonic mean over targets), computed by the ``hdrq`` method, which alone holds the specialists. Every trial computes
from its model (:mod:`raysel.selection.model_scores`) ``consistency`` (perturbation consistency) and, for
classification, ``mixval`` (MixVal, Hu et al. 2023) or, for segmentation, ``classmix_consistency`` (a raysel
validator on ClassMix probes: segmentation has no MixVal). A selector that cannot run on a sweep raises
:class:`SelectionSkipped`.

The input checks, the non-finite and collapse guards and :class:`SelectionSkipped` live in
:mod:`raysel.selection.guards` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, Sequence

import numpy as np
from scipy.special import softmax, xlogy
from scipy.stats import rankdata

from raysel.errors import ConfigError, DataError, unknown_name_error
from raysel.metrics import ConfusionMatrix
from raysel.selection.combination import cluster_ami, guarded_ranks
# The guards live in raysel.selection.guards; SelectionSkipped, the finite and collapse checks are re-exported here.
from raysel.selection.guards import (COLLAPSE_EFFECTIVE_CLASSES, SelectionSkipped, agreement_score,  # noqa: F401
                                     check_candidates, collapsed_candidates, effective_classes, entropy,
                                     finite_candidates, unless_collapsed)
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
# Selectors
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseSelector:
    """Shared plumbing: input checks, non-finite candidates left out (NaN score), then :meth:`_score` on the rest."""

    name: ClassVar[str] = ""
    needs_probabilities: ClassVar[bool] = False
    min_candidates: ClassVar[int] = 1

    def score(self, candidates: Sequence[CandidatePredictions]) -> np.ndarray:
        """One float64 score per candidate (higher is better), NaN for a candidate with non-finite outputs;
        DataError on unusable input, SelectionSkipped when too few finite candidates remain."""
        checked = check_candidates(candidates, self.name, self.min_candidates, self.needs_probabilities)
        finite = finite_candidates(checked)
        needed = max(self.min_candidates, 1)
        if finite.sum() < needed:
            raise SelectionSkipped(f"selector {self.name!r}: {int((~finite).sum())} of {len(checked)} candidates "
                                   f"have non-finite predictions (NaN or inf outputs) and get no score; the "
                                   f"{int(finite.sum())} left are too few (it needs {needed})")
        scores = np.full(len(checked), np.nan)
        scores[finite] = self._score([candidate for candidate, ok in zip(checked, finite) if ok])
        return scores

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
            scores.append(agreement_score(matrix, candidate.task))
        return np.array(scores)


@dataclass(frozen=True)
class EntropySelector(BaseSelector):
    """Negative mean prediction entropy (entropy minimisation, Grandvalet & Bengio 2005; a common UDA baseline).

    Score = −mean over pixels (images) of H(p) = −Σ_c p_c log p_c; confident candidates score higher. A model that
    predicts one class everywhere would score best, so collapsed candidates (:func:`collapsed_candidates`) get NaN.
    """

    name: ClassVar[str] = "entropy"
    needs_probabilities: ClassVar[bool] = True

    def _score(self, candidates: list[CandidatePredictions]) -> np.ndarray:
        scores = np.array([-float(entropy(c.probability_vectors()).mean()) for c in candidates])
        return unless_collapsed(scores, candidates)


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
            scores.append(float(entropy(marginal / max(marginal.sum(), 1e-12))) - float(entropy(vectors).mean()))
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
    all images (a seeded subsample of ``max_samples`` when there are more). A one-class model's outputs are all
    alike, every neighbourhood is uniform and SND is maximal, so collapsed candidates (:func:`collapsed_candidates`)
    get NaN.
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
        # float32 numpy, as Saito et al.'s torch code computes it; numpy keeps selection from cached outputs free of
        # torch (`raysel select` without --repredict never imports it).
        scores = []
        for candidate in candidates:
            vectors = self._sample(candidate)
            norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
            features = vectors / np.maximum(norms, np.float32(1e-12))  # L2-normalise (torch.nn.functional.normalize)
            if features.shape[1] < 2:
                raise DataError("snd needs at least two samples per group (images, or pixels per image)")
            similarity = features @ features.transpose(0, 2, 1) / np.float32(self.tau)
            diagonal = np.arange(similarity.shape[1])
            similarity[:, diagonal, diagonal] = -1.0 / self.tau  # self-similarity masked, as in their code
            neighbourhood = softmax(similarity, axis=-1)
            entropy = -xlogy(neighbourhood, neighbourhood).sum(axis=-1)
            scores.append(float(entropy.mean()))
        return unless_collapsed(np.array(scores), candidates)


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
    tasks: ClassVar[tuple[str, ...] | None] = None  # the tasks whose rows hold this score (None: any)
    legacy_columns: ClassVar[tuple[str, ...]] = ()  # older store columns that held the same score for ``tasks``

    @property
    def column(self) -> str:
        """The store column holding the score."""
        return f"score_{self.name}"

    def stored(self, trials: "pandas.DataFrame") -> np.ndarray:
        """The stored score of every row of ``trials`` in row order: ``column``, else a legacy column where it is
        empty; NaN where none, and for rows of a task this score does not exist for (a ``task`` column says so)."""
        values = np.full(len(trials), np.nan)
        for column in (self.column, *self.legacy_columns):
            if column in trials:
                stored = trials[column].to_numpy(dtype=np.float64, na_value=np.nan)
                values = np.where(np.isnan(values), stored, values)
        if self.tasks is not None and "task" in trials:
            values[~trials["task"].isin(self.tasks).to_numpy()] = np.nan
        return values

    def score_trials(self, trials: "pandas.DataFrame") -> np.ndarray:
        """The stored scores of ``trials`` (rows of the result store), in row order; SelectionSkipped when absent."""
        values = self.stored(trials)
        if np.isnan(values).all():
            only = f" (it exists for {' and '.join(self.tasks)} only)" if self.tasks else ""
            raise SelectionSkipped(f"selector {self.name!r} reads the score every trial stores as {self.column}"
                                   f"{only}; these trials have none (only methods or raysel versions that compute it "
                                   "do; --repredict recomputes consistency, mixval and classmix_consistency)")
        return values


@dataclass(frozen=True)
class MergeQualitySelector(TrialScoreSelector):
    """HDRQ merge quality: harmonic mean over targets of the merged model's agreement (mIoU, or accuracy) with each
    target's quantized specialist on the target's unlabeled selection subset (raysel.quant.merge_quality)."""

    name: ClassVar[str] = "merge_quality"


@dataclass(frozen=True)
class ConsistencySelector(TrialScoreSelector):
    """Perturbation consistency (the consistency family of validators): class-balanced agreement of the model with
    itself under a photometric change, feature dropout and, where training flips (segmentation), a horizontal flip;
    computed in the trial (raysel.selection.model_scores)."""

    name: ClassVar[str] = "consistency"


@dataclass(frozen=True)
class MixValSelector(TrialScoreSelector):
    """MixVal (Hu et al., NeurIPS 2023), classification only: mean accuracy on intra- and inter-cluster mixup probes
    (λ = 0.55) labelled with the dominant image's pseudo-label, NaN when a kind has no probe; computed in the trial
    (raysel.selection.model_scores). Segmentation rows are not read: their old ``score_mixval`` was ClassMix."""

    name: ClassVar[str] = "mixval"
    tasks: ClassVar[tuple[str, ...] | None] = ("classification",)


@dataclass(frozen=True)
class ClassMixConsistencySelector(TrialScoreSelector):
    """raysel's ClassMix-probe validator for segmentation (not MixVal: no λ-interpolation, no intra/inter probes):
    class-balanced agreement of the prediction on ClassMix probes with the pasted pseudo-labels, computed in the trial
    (raysel.selection.model_scores). Reads ``score_mixval`` of segmentation rows stored before the rename."""

    name: ClassVar[str] = "classmix_consistency"
    tasks: ClassVar[tuple[str, ...] | None] = ("segmentation",)
    legacy_columns: ClassVar[tuple[str, ...]] = ("score_mixval",)


TRIAL_SCORE_SELECTORS: dict[str, type[TrialScoreSelector]] = {
    selector.name: selector for selector in (MergeQualitySelector, ConsistencySelector, MixValSelector,
                                             ClassMixConsistencySelector)}
