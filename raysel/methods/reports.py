"""What a trial reports at each report point, as one typed record, and the names of its keys (stated once here).

Every method's train loop builds an :class:`EpochReport` with :meth:`EpochReport.from_measurements` and hands it to
``RunContext.report``; :meth:`EpochReport.to_metrics` is the flat dict Ray Tune receives (stored rows, ASHA's
``time_attr``/metric and Optuna's objective read those keys). The execution layer, ``raysel status`` and the sweep
settings name the keys through the constants below, as they do the keys a run's final metrics take from its
``TrainResult``. The module needs neither torch nor Ray, so commands that only
read results can import it.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from typing import Any, Mapping

from raysel.store.schema import SCORE_PREFIX

__all__ = [
    "ROUND", "EPOCH", "ITERATION", "LOSS", "TARGET_CONFIDENCE", "STEP_KEYS", "RESERVED_KEYS", "FINAL_SCORES",
    "FINAL_METRICS", "EpochReport",
]

ROUND = "round"  # self-training round (multi-round methods)
EPOCH = "epoch"  # report count: Tune's progress and ASHA's time attribute
ITERATION = "iteration"  # optimisation steps done so far
LOSS = "loss"  # the training loss; a non-finite value stops the trial
TARGET_CONFIDENCE = "target_confidence"  # label-free mean max-probability on target images; ASHA's default metric
STEP_KEYS = (ROUND, EPOCH, ITERATION)
RESERVED_KEYS = (*STEP_KEYS, LOSS, TARGET_CONFIDENCE)
# A run's final metrics carry its TrainResult's label-free scores and further metrics under these keys.
FINAL_SCORES = "scores"
FINAL_METRICS = "metrics"


def _frozen(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of ``values`` (the record is frozen, its mappings too)."""
    return types.MappingProxyType(dict(values))


@dataclass(frozen=True)
class EpochReport:
    """One report of a training run: its step, loss and target confidence, the method's own extra metrics, and the
    trial-scored selector scores of the model at that point (by selector name; reported as ``score_<name>``).

    ``loss`` is None for methods without a training loss (HDRQ's single report after quantization and merging);
    ``round`` is None for single-round methods. Absent values are left out of :meth:`to_metrics`, as before.
    """

    epoch: int
    iteration: int
    target_confidence: float
    loss: float | None = None
    round: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Freeze the mappings and refuse extra metrics that would shadow a reserved key or a score column."""
        clashes = sorted(name for name in self.extra if name in RESERVED_KEYS or name.startswith(SCORE_PREFIX))
        if clashes:
            raise ValueError(f"extra report metric(s) {', '.join(clashes)} clash with the report's own keys")
        object.__setattr__(self, "extra", _frozen(self.extra))
        object.__setattr__(self, "scores", _frozen(self.scores))

    @classmethod
    def from_measurements(cls, *, epoch: int, iteration: int, measurements: Mapping[str, Any],
                          round: int | None = None) -> "EpochReport":
        """The one constructor every method uses: ``measurements`` (running means, statistics, timings) must hold
        ``target_confidence`` and holds ``loss`` when the method trains on one; every other entry is an extra metric."""
        values = dict(measurements)
        if TARGET_CONFIDENCE not in values:
            raise ValueError(f"a report needs {TARGET_CONFIDENCE!r} (ASHA's default metric); got {sorted(values)}")
        confidence = float(values.pop(TARGET_CONFIDENCE))
        loss = values.pop(LOSS, None)
        return cls(epoch=int(epoch), iteration=int(iteration), target_confidence=confidence,
                   loss=None if loss is None else float(loss), round=None if round is None else int(round),
                   extra=values)

    def with_scores(self, scores: Mapping[str, float]) -> "EpochReport":
        """This report with further trial-scored selector scores (a later score of the same name wins)."""
        return dataclasses.replace(self, scores={**self.scores, **scores})

    def steps(self) -> dict[str, int]:
        """The step counters present: ``round`` (when set), ``epoch``, ``iteration``."""
        counters = {ROUND: self.round, EPOCH: self.epoch, ITERATION: self.iteration}
        return {name: value for name, value in counters.items() if value is not None}

    def step_text(self) -> str:
        """``round=2, epoch=3, iteration=40``: where a run stopped, for error messages."""
        return ", ".join(f"{name}={value}" for name, value in self.steps().items())

    def to_metrics(self) -> dict[str, Any]:
        """The flat dict Ray Tune receives: step counters, ``loss`` (when set), ``target_confidence``, the extra
        metrics and ``score_<name>`` per trial-scored selector."""
        metrics: dict[str, Any] = dict(self.steps())
        if self.loss is not None:
            metrics[LOSS] = self.loss
        metrics[TARGET_CONFIDENCE] = self.target_confidence
        metrics.update(self.extra)
        metrics.update({f"{SCORE_PREFIX}{name}": value for name, value in self.scores.items()})
        return metrics
