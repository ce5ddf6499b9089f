"""Label-free scores that need the candidate's model: computed inside each trial, stored as ``score_<name>``.

The cached predictions (:mod:`raysel.selection.predictions`) cannot answer "what would this model predict on a
flipped, darker or mixed image?", so these scores run the model again on the first ``TRIAL_SCORE_IMAGES`` images
of the run's seeded selection subset of target *training* images (no label is read) and return plain floats that
the trial stores with its row; selection reads them through the trial-scored selectors ``consistency`` and
``mixval`` (:mod:`raysel.selection.selectors`). ``raysel.select --repredict`` recomputes them from the checkpoint.

* ``consistency`` — perturbation consistency, the CRank / CTE / DAS-FIS family of validators (agreement of a
  model with itself under perturbation; e.g. Yang et al., "Can we evaluate domain adaptation models without
  target-domain labels?", ICLR 2024; "consistency under transformations" validators in Musgrave et al.'s
  benchmark of UDA validators, 2022). Agreement of the prediction with the prediction under three perturbations
  — a horizontal flip (flipped back for segmentation), a photometric change (contrast ×1.2, brightness +0.1
  in normalised input space) and feature dropout (p = 0.1 on the classifier's input, fixed seed) — averaged.
* ``mixval`` — MixVal (Hu, Liang, Liew, Xue, Bai, Wang, "Mixed samples as probes for unsupervised model selection
  in domain adaptation", NeurIPS 2023). Classification follows the paper's code: every image is mixed with its
  partner in the reversed batch at a fixed λ = 0.55 (mix = λ·a + (1 − λ)·b), the probe's label is a's
  pseudo-label, and the score is the accuracy on the probes; inter-cluster probes (a and b predicted
  differently: ICE_inter) and intra-cluster probes (same prediction: ICE_intra) are scored apart and averaged (a
  missing kind scores 0).
  Segmentation: ClassMix (Olsson et al., WACV 2021) with the candidate's own pseudo-labels: half of the classes a
  predicts (seeded choice) are pasted onto b, and the probe's label is the pasted pseudo-label map.

Agreement for both is *class-balanced*: the sum over all C classes of the IoU between the two label maps (image
labels for classification), divided by C, where a class absent from both counts 0. A priori design choice (no
benchmark number behind it): plain agreement rewards a model that predicts one class everywhere, which is
perfectly consistent and perfectly reproduces its own pasted labels; class-balanced agreement gives it 1/C.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from raysel.metrics import ConfusionMatrix, iou_per_class
from raysel.data.common import selection_subset

if TYPE_CHECKING:  # pragma: no cover
    from raysel.methods.base import RunContext

TRIAL_SCORE_IMAGES = 100
MIX_LAMBDA = 0.55  # MixVal's fixed inference-stage mixup ratio
DROPOUT_P = 0.1
CONTRAST, BRIGHTNESS = 1.2, 0.1
TRIAL_SCORE_NAMES = ("consistency", "mixval")


def class_balanced_agreement(matrix: np.ndarray) -> float:
    """Σ_c IoU_c / C over all C classes of a confusion matrix, a class absent from both sides counting 0."""
    return float(np.nan_to_num(iou_per_class(matrix), nan=0.0).sum() / matrix.shape[0])


class FeatureDropout:
    """Seeded dropout on the input of ``model.classifier`` while active (the model perturbation); no-op without one."""

    def __init__(self, model: torch.nn.Module, p: float = DROPOUT_P, seed: int = 0) -> None:
        self.classifier = getattr(getattr(model, "module", model), "classifier", None)
        self.p, self.generator = p, torch.Generator().manual_seed(seed)
        self.available = isinstance(self.classifier, torch.nn.Module)

    def _drop(self, module: torch.nn.Module, inputs: tuple) -> tuple:
        features = inputs[0]
        keep = (torch.rand(features.shape, generator=self.generator) >= self.p).to(features.device, features.dtype)
        return (features * keep / (1.0 - self.p),) + tuple(inputs[1:])

    def predict(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Hard labels of ``model`` on ``images`` with dropout on the classifier's input."""
        handle = self.classifier.register_forward_pre_hook(self._drop)
        try:
            return model(images).argmax(dim=1)
        finally:
            handle.remove()


def _batches(dataset: Dataset, indices: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """Image batches of ``dataset`` at ``indices``; only the ``image`` key of a sample is read."""
    loader = DataLoader(Subset(dataset, [int(i) for i in indices]), batch_size=batch_size, shuffle=False,
                        collate_fn=list)
    for samples in loader:
        yield torch.stack([sample["image"] for sample in samples])


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


@torch.inference_mode()
def trial_selection_scores(model: torch.nn.Module, dataset: Dataset, indices: Sequence[int] | np.ndarray,
                           device: torch.device | str, task: str, batch_size: int = 8, seed: int = 0
                           ) -> dict[str, float]:
    """``{"consistency", "mixval"}`` of ``model`` on the first TRIAL_SCORE_IMAGES images ``indices`` (no labels)."""
    indices = np.asarray(indices, dtype=np.int64)[:TRIAL_SCORE_IMAGES]
    if indices.size == 0:
        return {}
    device = torch.device(device)
    was_training = model.training
    model.eval()
    dropout, rng = FeatureDropout(model, seed=seed), np.random.default_rng(seed)
    agreements: dict[str, ConfusionMatrix] = {}
    mix_hits = {"intra": [0, 0], "inter": [0, 0]}
    try:
        for images in _batches(dataset, indices, batch_size):
            images = images.to(device)
            logits = model(images)
            labels = logits.argmax(dim=1)
            num_classes = int(logits.shape[1])
            flipped = model(images.flip(-1)).argmax(dim=1)
            perturbed = {"flip": flipped.flip(-1) if task == "segmentation" else flipped,
                         "photometric": model(images * CONTRAST + BRIGHTNESS).argmax(dim=1)}
            if dropout.available:
                perturbed["dropout"] = dropout.predict(model, images)
            for name, prediction in perturbed.items():
                agreements.setdefault(name, ConfusionMatrix(num_classes)).update(
                    prediction.cpu().numpy(), labels.cpu().numpy())
            if task == "segmentation":
                mixed, targets = _classmix(images, labels, rng)
                agreements.setdefault("mixval", ConfusionMatrix(num_classes)).update(
                    model(mixed).argmax(dim=1).cpu().numpy(), targets.cpu().numpy())
            else:
                _mixup_probes(model, images, labels, mix_hits)
    finally:
        model.train(was_training)
    consistency = [class_balanced_agreement(agreements[name].matrix) for name in ("flip", "photometric", "dropout")
                   if name in agreements]
    if task == "segmentation":
        mixval = class_balanced_agreement(agreements["mixval"].matrix)
    else:
        mixval = float(np.mean([hits / total if total else 0.0 for hits, total in mix_hits.values()]))
    return {"consistency": float(np.mean(consistency)), "mixval": mixval}


def _mixup_probes(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  hits: dict[str, list[int]]) -> None:
    """MixVal's mixup probes with the reversed-batch partner; counts (correct, total) for intra/inter pairs."""
    partner = torch.arange(len(images) - 1, -1, -1, device=images.device)
    valid = partner != torch.arange(len(images), device=images.device)  # an odd batch's middle image mixes itself
    mixed = MIX_LAMBDA * images + (1.0 - MIX_LAMBDA) * images[partner]
    correct = model(mixed).argmax(dim=1) == labels
    same = labels == labels[partner]
    for kind, selected in (("intra", same & valid), ("inter", ~same & valid)):
        hits[kind][0] += int((correct & selected).sum())
        hits[kind][1] += int(selected.sum())


def run_trial_selection_scores(model: torch.nn.Module, ctx: "RunContext") -> dict[str, float]:
    """The trial-scored selectors' scores of a run's model on its seeded selection subset (finish_run, --repredict)."""
    target_images = ctx.target_dataset()
    indices = selection_subset(len(target_images), size=ctx.spec.selection_size, seed=ctx.spec.selection_seed)
    return trial_selection_scores(model, target_images, indices, ctx.device, ctx.task)
