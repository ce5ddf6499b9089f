"""Label-free model selection (SPEC §5) and the benchmark-only evaluation of selectors.

* :mod:`raysel.selection.predictions` — fixed seeded subset of target *training* images, one prediction pass per
  candidate (no labels), compact ``.npz`` cache.
* :mod:`raysel.selection.voting` — fused majority vote (ties → lowest class id) and F-mIoU (HIAST §4.5, Alg. 3).
* :mod:`raysel.selection.selectors` — the selector registry: ``fmiou``, ``confident_fmiou``, ``soft_vote``,
  ``entropy``, ``im``, ``snd``, ``rank_mean``, ``cluster_ami``, ``robust`` (``get_selector(name).score(candidates)``,
  higher is better) and the trial-scored ``merge_quality``, ``consistency``, ``mixval``.
* :mod:`raysel.selection.model_scores` — consistency and MixVal, computed from the model inside each trial.
* :mod:`raysel.selection.combination` — ClassAMI clustering and the ensemble guard behind ``robust``.
* :mod:`raysel.selection.evaluate` — regret, gap closed, Kendall τ / Spearman ρ against held-out scores, the
  default-configuration and random-pick baselines, per-selector summaries over sweeps (benchmarks and the oracle
  check of a decision; held-out scores are an input, never read here).
* :mod:`raysel.selection.applicability` — which selectors a sweep's stored outputs allow, and why not the others.
* :mod:`raysel.selection.decision` — scores a finished sweep with every applicable selector and records the
  decisions in the store; the method's default selector makes the headline decision.
* :mod:`raysel.selection.agreement` — each selector's pick side by side and whether they agree.

Submodules are imported on use (``from raysel.selection.selectors import get_selector``) so that importing the
package stays cheap for workers that only need one part.
"""
