"""Label-free scores that need the candidate's model: computed inside each trial, stored as ``score_<name>``.

The cached predictions (:mod:`raysel.selection.predictions`) cannot answer "what would this model predict on a
darker, perturbed or mixed image?", so these scores run the model again on ``TRIAL_SCORE_IMAGES`` images drawn at
random (seeded by the run's selection seed, :func:`trial_score_subset`) from its selection subset of target *training*
images (no label is read) and return plain floats that the trial stores with its row; selection reads them through
the trial-scored selectors of :mod:`raysel.selection.selectors`. ``raysel.select --repredict`` recomputes them from
the checkpoint. Which names a task gets: :data:`TASK_TRIAL_SCORES`.

* ``consistency`` (both tasks) — perturbation consistency (the consistency family of validators: agreement of a
  model with itself under perturbations that keep the label). The prediction is compared with the prediction under
  a photometric change (contrast ×1.2, brightness +0.1 in normalised input space), feature dropout (p = 0.1 on the
  classifier's input, fixed seed) and, only where training flips images (:func:`raysel.methods.augment.
  training_flips`: segmentation), a horizontal flip mapped back; a mirrored digit can be another digit, so
  classification is never flipped. Agreement is *class-balanced*: Σ_c IoU_c / C over all C classes of the two label
  maps (image labels for classification), a class absent from both counting 0 — a priori, so that a model predicting
  one class everywhere, perfectly consistent, scores 1/C rather than 1. The three agreements are averaged.
* ``mixval`` (classification only) — MixVal (Hu, Liang, Liew, Xue, Bai, Wang, "Mixed samples as probes for
  unsupervised model selection in domain adaptation", NeurIPS 2023), built as the paper builds it for classification
  (:func:`mixval_pairs`, :func:`mixval_score`): probes mix two target images with the fixed λ = 0.55,
  mix = λ·a + (1 − λ)·b, and take the pseudo-label of the dominant image a (the argmax of λ·onehot(a) +
  (1 − λ)·onehot(b), since λ > 0.5). *Intra-cluster* probes pair images of the same pseudo-label, *inter-cluster*
  probes images of different pseudo-labels; every image is the dominant image of one probe of each kind whenever it
  has such a partner (up to 100 + 100 probes on 100 images), the partner drawn uniformly (seeded) rather than from a
  reversed batch of a sorted or shuffled list as in the paper's code. ICE_intra and ICE_inter are the plain
  accuracies (not class-balanced) of the model on each kind, and the score is their mean, as skada's
  ``MixValScorer(ice_type="both")``; when either kind has no probe (a model predicting one class has no inter-cluster
  pair) the model cannot be scored and the score is NaN, never 0.
* ``classmix_consistency`` (segmentation only) — a raysel validator, not MixVal (the paper's public code is
  classification-only, and this probe has neither λ-interpolation nor the intra/inter split): ClassMix (Olsson et
  al., WACV 2021) with the candidate's own pseudo-labels — half of the classes image a predicts (seeded choice) are
  pasted onto its partner b (the reversed batch), the probe's label is the pasted pseudo-label map, and the score is
  the class-balanced agreement of the prediction on the probe with it. Sweeps stored before the rename hold it as
  ``score_mixval`` on segmentation rows; the ``classmix_consistency`` selector still reads those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from raysel.metrics import ConfusionMatrix, iou_per_class
from raysel.data.common import selection_subset
from raysel.methods.augment import training_flips
from raysel.selection.predictions import CandidatePredictions

if TYPE_CHECKING:  # pragma: no cover
    from raysel.methods.base import RunContext

TRIAL_SCORE_IMAGES = 100
TRIAL_SUBSET_STREAM = 29  # mixed into the selection seed: the trial subset's draw is independent of the subset's own
MIX_LAMBDA = 0.55  # MixVal's fixed inference-stage mixup ratio; > 0.5 so the probe keeps a's pseudo-label
DROPOUT_P = 0.1
CONTRAST, BRIGHTNESS = 1.2, 0.1
CONSISTENCY_PERTURBATIONS = ("flip", "photometric", "dropout")
# The trial-scored names each task computes (the selectors of the same names read them as score_<name>).
TASK_TRIAL_SCORES: dict[str, tuple[str, ...]] = {
    "classification": ("consistency", "mixval"),
    "segmentation": ("consistency", "classmix_consistency"),
}
TRIAL_SCORE_NAMES = ("consistency", "mixval", "classmix_consistency")


def class_balanced_agreement(matrix: np.ndarray) -> float:
    """Σ_c IoU_c / C over all C classes of a confusion matrix, a class absent from both sides counting 0."""
    return float(np.nan_to_num(iou_per_class(matrix), nan=0.0).sum() / matrix.shape[0])


def trial_score_subset(indices: Sequence[int] | np.ndarray, seed: int, size: int = TRIAL_SCORE_IMAGES) -> np.ndarray:
    """A seeded random ``size`` of ``indices`` (sorted for loading), the same for every candidate of a sweep.

    Not the first ``size``: the selection subset is sorted by dataset index, and a dataset stored class by class
    (the embedded digits) would then give only its lowest classes.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size <= size:
        return indices
    rng = np.random.default_rng([seed, TRIAL_SUBSET_STREAM])
    return np.sort(rng.choice(indices, size=size, replace=False))


class FeatureDropout:
    """Seeded dropout on the input of ``model.classifier`` for one slice of the batch (the model perturbation).

    The perturbations of a batch go through the model as one stacked batch (:func:`_perturbed_labels`), so the hook
    drops features only in the rows of the dropout view; its mask has that view's shape, drawn from the same seeded
    stream in the same order as when the view ran alone. No-op without a ``classifier`` module.
    """

    def __init__(self, model: torch.nn.Module, p: float = DROPOUT_P, seed: int = 0) -> None:
        self.classifier = getattr(getattr(model, "module", model), "classifier", None)
        self.p, self.generator = p, torch.Generator().manual_seed(seed)
        self.available = isinstance(self.classifier, torch.nn.Module)
        self.rows = slice(None)

    def _drop(self, module: torch.nn.Module, inputs: tuple) -> tuple:
        features = inputs[0]
        view = features[self.rows]
        keep = (torch.rand(view.shape, generator=self.generator) >= self.p).to(features.device, features.dtype)
        features = features.clone()
        features[self.rows] = view * keep / (1.0 - self.p)
        return (features,) + tuple(inputs[1:])

    def predict(self, model: torch.nn.Module, images: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """Hard labels of ``model`` on ``images`` with dropout on the classifier's input of the batch ``rows``."""
        self.rows = rows
        handle = self.classifier.register_forward_pre_hook(self._drop)
        try:
            return model(images).argmax(dim=1)
        finally:
            handle.remove()


def _batches(dataset: Dataset, indices: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """(image batch, its dataset indices) of ``dataset`` at ``indices``, in order; only the ``image`` key is read."""
    loader = DataLoader(Subset(dataset, [int(i) for i in indices]), batch_size=batch_size, shuffle=False,
                        collate_fn=list)
    first = 0
    for samples in loader:
        yield torch.stack([sample["image"] for sample in samples]), indices[first:first + len(samples)]
        first += len(samples)


def _perturbed_labels(model: torch.nn.Module, images: torch.Tensor, segmentation: bool, dropout: FeatureDropout,
                      extra: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Hard labels of ``model`` under each label-preserving perturbation of ``images`` (see the module docstring),
    and on each batch of ``extra`` (the ClassMix probes), from one forward pass over all views stacked together:
    one large batch costs less than several small ones, and in eval mode each image's output is its own."""
    views = {"photometric": images * CONTRAST + BRIGHTNESS}
    if training_flips(segmentation):  # the switch training uses: flip only where the label flips with the image
        views["flip"] = images.flip(-1)
    if dropout.available:
        views["dropout"] = images
    views.update(extra or {})
    names = list(views)
    stacked = torch.cat([views[name] for name in names])
    if dropout.available:
        first = names.index("dropout") * len(images)
        labels = dropout.predict(model, stacked, slice(first, first + len(images)))
    else:
        labels = model(stacked).argmax(dim=1)
    perturbed = dict(zip(names, labels.split([len(views[name]) for name in names])))
    if "flip" in perturbed:
        perturbed["flip"] = perturbed["flip"].flip(-1)  # mapped back onto the unflipped image
    return perturbed


def _classmix(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """ClassMix probes: each image a pastes half of its predicted classes onto its partner b (reversed batch)."""
    partner = torch.arange(len(images) - 1, -1, -1)
    mixed, targets = images.clone(), labels.clone()
    for a, b in enumerate(partner.tolist()):
        present = torch.unique(labels[a]).cpu().numpy()
        chosen = rng.choice(present, size=max(1, len(present) // 2), replace=False)
        mask = torch.isin(labels[a], torch.from_numpy(chosen).to(labels.device))
        mixed[a] = torch.where(mask, images[a], images[b])
        targets[a] = torch.where(mask, labels[a], labels[b])
    return mixed, targets


def mixval_pairs(labels: np.ndarray, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MixVal's probe pairs ``{"intra": (a, b), "inter": (a, b)}`` (image positions) over the pseudo-labels ``labels``.

    Every image a is the dominant image of one intra-cluster probe, b drawn uniformly from the *other* images of its
    pseudo-class, and of one inter-cluster probe, b drawn uniformly from the images of the other pseudo-classes; an
    image without such a partner (alone in its class; every image in one class) gets no probe of that kind.
    """
    labels = np.asarray(labels).reshape(-1)
    size = labels.size
    order = np.argsort(labels, kind="stable")  # positions grouped by pseudo-class: class k occupies one slot range
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    group = np.searchsorted(classes, labels)
    start, count = starts[group], counts[group]
    slot_of = np.empty(size, dtype=np.int64)
    slot_of[order] = np.arange(size)
    # Both draws are made for every image, so the pairs depend on the labels and the seed only.
    intra_draw, inter_draw = rng.random(size), rng.random(size)
    a = np.flatnonzero(count > 1)
    slot = start[a] + (intra_draw[a] * (count[a] - 1)).astype(np.int64)  # one of the count - 1 other slots ...
    slot += slot >= slot_of[a]  # ... skipping a's own
    pairs = {"intra": (a, order[slot])}
    a = np.flatnonzero(count < size)
    slot = (inter_draw[a] * (size - count[a])).astype(np.int64)  # one of the slots outside a's class range
    slot += np.where(slot >= start[a], count[a], 0)
    pairs["inter"] = (a, order[slot])
    return pairs


def mixval_score(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, rng: np.random.Generator,
                 batch_size: int) -> float:
    """MixVal of ``model``: mean of its accuracies on intra- and inter-cluster probes (ICE_intra, ICE_inter) built
    from ``images`` and their pseudo-labels ``labels``; NaN when a kind has no probe (it cannot be scored)."""
    accuracies = []
    for a, b in mixval_pairs(labels, rng).values():
        if a.size == 0:
            return float("nan")
        hits = 0
        for first in range(0, a.size, batch_size):
            dominant, partner = a[first:first + batch_size], b[first:first + batch_size]
            mixed = MIX_LAMBDA * images[dominant] + (1.0 - MIX_LAMBDA) * images[partner]
            hits += int((model(mixed).argmax(dim=1).cpu().numpy() == labels[dominant]).sum())
        accuracies.append(hits / a.size)
    return float(np.mean(accuracies))


def _known_labels(predictions: CandidatePredictions | None) -> dict[int, np.ndarray]:
    """The cached unperturbed hard labels by dataset index (empty without a cache): the trial's prediction pass
    already ran the model on every image of the selection subset, which holds the trial subset."""
    if predictions is None:
        return {}
    return {int(index): labels for index, labels in zip(predictions.image_indices, predictions.labels)}


def _unperturbed_labels(model: torch.nn.Module, images: torch.Tensor, batch_indices: np.ndarray,
                        known: dict[int, np.ndarray], num_classes: int | None) -> tuple[torch.Tensor, int]:
    """The model's hard labels on ``images`` and its class count: from the prediction cache when it holds every
    image, else predicted."""
    if num_classes is not None and known and all(int(index) in known for index in batch_indices):
        labels = np.stack([known[int(index)] for index in batch_indices]).astype(np.int64)
        return torch.from_numpy(labels).to(images.device), num_classes
    logits = model(images)
    return logits.argmax(dim=1), int(logits.shape[1])


@torch.inference_mode()
def trial_selection_scores(model: torch.nn.Module, dataset: Dataset, indices: Sequence[int] | np.ndarray,
                           device: torch.device | str, task: str, batch_size: int = 8, seed: int = 0,
                           predictions: CandidatePredictions | None = None) -> dict[str, float]:
    """The scores :data:`TASK_TRIAL_SCORES` names for ``task``, of ``model`` on a seeded random
    ``TRIAL_SCORE_IMAGES`` of the images ``indices`` (:func:`trial_score_subset`; no labels).

    ``predictions`` — the candidate's own prediction cache of the same model (:func:`raysel.selection.inference.
    predict_subset`) — supplies the unperturbed labels instead of a second pass over the images; the perturbed views
    of each batch of ``batch_size`` images run as one stacked batch.
    """
    indices = trial_score_subset(indices, seed)
    if indices.size == 0:
        return {}
    device = torch.device(device)
    segmentation = task == "segmentation"
    known = _known_labels(predictions)
    was_training = model.training
    model.eval()
    dropout, rng = FeatureDropout(model, seed=seed), np.random.default_rng(seed)
    agreements: dict[str, ConfusionMatrix] = {}
    kept_images: list[torch.Tensor] = []  # classification: MixVal pairs images across batches (small images)
    kept_labels: list[np.ndarray] = []
    num_classes = predictions.num_classes if predictions is not None else None
    try:
        for images, batch_indices in _batches(dataset, indices, batch_size):
            images = images.to(device)
            labels, num_classes = _unperturbed_labels(model, images, batch_indices, known, num_classes)
            extra, targets = {}, None
            if segmentation:
                extra["classmix"], targets = _classmix(images, labels, rng)
            perturbed = _perturbed_labels(model, images, segmentation, dropout, extra)
            for name, prediction in perturbed.items():
                reference = targets if name == "classmix" else labels
                agreements.setdefault(name, ConfusionMatrix(num_classes)).update(
                    prediction.cpu().numpy(), reference.cpu().numpy())
            if not segmentation:
                kept_images.append(images)
                kept_labels.append(labels.cpu().numpy())
        if not segmentation:
            mixval = mixval_score(model, torch.cat(kept_images), np.concatenate(kept_labels), rng, batch_size)
    finally:
        model.train(was_training)
    consistency = float(np.mean([class_balanced_agreement(agreements[name].matrix)
                                 for name in CONSISTENCY_PERTURBATIONS if name in agreements]))
    if segmentation:
        return {"consistency": consistency, "classmix_consistency": class_balanced_agreement(
            agreements["classmix"].matrix)}
    return {"consistency": consistency, "mixval": mixval}


def run_trial_selection_scores(model: torch.nn.Module, ctx: "RunContext",
                               predictions: CandidatePredictions | None = None) -> dict[str, float]:
    """The trial-scored selectors' scores of a run's model on its seeded selection subset (finish_run, --repredict);
    ``predictions``, the run's prediction cache of this model, saves the unperturbed pass."""
    target_images = ctx.target_dataset()
    indices = selection_subset(len(target_images), size=ctx.spec.selection_size, seed=ctx.spec.selection_seed)
    return trial_selection_scores(model, target_images, indices, ctx.device, ctx.task, seed=ctx.spec.selection_seed,
                                  predictions=predictions)
