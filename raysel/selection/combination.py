"""Numerics behind the ``cluster_ami`` and ``robust`` selectors (kept apart so selectors.py stays a thin registry).

* :func:`cluster_ami` — ClassAMI (Ericsson, Li, Hospedales, "Better practices for domain adaptation", AutoML
  2023, their best validator): k-means with k = C on a candidate's penultimate features, scored by the adjusted
  mutual information between the clusters and the candidate's own predicted labels. Well-adapted features form
  clusters that the classifier's decision follows; a collapsed candidate (one predicted class) scores 0.
* :func:`guarded_ranks` — the ensemble guard of ``robust`` (EnsV's worst-case idea, Hu et al. 2024).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

MAX_CLUSTER_SAMPLES = 5000


def cluster_ami(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0,
                max_samples: int = MAX_CLUSTER_SAMPLES) -> float:
    """AMI between k-means (k = num_classes, fixed seed) clusters of ``features [n, D]`` and predicted ``labels``.

    A seeded subsample of ``max_samples`` rows is clustered when there are more (the same rows for every candidate
    of a sweep, since every candidate cached the same pixels of the same images).
    """
    if len(features) > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(len(features), max_samples, replace=False))
        features, labels = features[rows], labels[rows]
    if len(np.unique(labels)) < 2:
        return 0.0  # one predicted class: nothing for the clusters to agree with
    # Imported on use, for start-up time only: scikit-learn costs about half a second to import and only this
    # selector needs it, while every `raysel select` and `raysel report` imports the selector registry.
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score

    clusters = KMeans(n_clusters=min(num_classes, len(features)), n_init=3, random_state=seed).fit_predict(
        np.nan_to_num(features.astype(np.float64)))
    return float(adjusted_mutual_info_score(labels, clusters))


def guarded_ranks(agreement: np.ndarray, ranker: np.ndarray, veto_quantile: float) -> np.ndarray:
    """Veto the candidates whose ensemble ``agreement`` lies below its ``veto_quantile`` quantile, rank the others.

    Survivors score their rank (1 = worst) by ``ranker``, plus the number of candidates; vetoed ones score their
    rank by agreement (never above a survivor). NaN counts as the worst value. At least one candidate survives.
    """
    agreement = np.where(np.isnan(agreement), -np.inf, agreement)
    ranker = np.where(np.isnan(ranker), -np.inf, ranker)
    threshold = np.quantile(agreement[np.isfinite(agreement)], veto_quantile) if np.isfinite(agreement).any() else 0
    survives = agreement >= threshold
    if not survives.any():
        survives = agreement == agreement.max()
    scores = rankdata(agreement).astype(np.float64)
    scores[survives] = len(agreement) + rankdata(ranker[survives])
    return scores
