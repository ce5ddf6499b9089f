"""Where a run's time goes: exclusive per-phase ``time.perf_counter`` stamps, and a RunContext that stamps data
loading, model building and shared-stage loading, so a trial's row can say what its wall time was spent on."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from torch import nn
from torch.utils.data import Dataset

from raysel.methods.base import CHECKPOINT_FILE, RunContext, RunSpec, Session
from raysel.store.schema import TIMING_PREFIX

__all__ = [
    "PhaseStamp", "PhaseClock", "StageTiming", "TimedRunContext", "phase", "timed_context",
]


@dataclass
class PhaseStamp:
    """One timed block: its phase name and, once it ended, its exclusive seconds (nested phases excluded)."""

    name: str
    started: float
    nested_s: float = 0.0
    seconds: float = 0.0
    elapsed_s: float = 0.0  # nested phases included


@dataclass
class PhaseClock:
    """Exclusive seconds per phase: time inside a nested phase counts for that phase only, never twice."""

    seconds: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.perf_counter
    _open: list[PhaseStamp] = field(default_factory=list)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[PhaseStamp]:
        """Time the block as ``name``; the yielded stamp holds its exclusive seconds after the block."""
        stamp = PhaseStamp(name, self.clock())
        self._open.append(stamp)
        try:
            yield stamp
        finally:
            self._open.pop()
            elapsed = stamp.elapsed_s = self.clock() - stamp.started
            stamp.seconds = max(0.0, elapsed - stamp.nested_s)
            self.seconds[name] = self.seconds.get(name, 0.0) + stamp.seconds
            if self._open:
                self._open[-1].nested_s += elapsed

    def columns(self) -> dict[str, float]:
        """The row columns ``time_<phase>_s`` (see :data:`raysel.store.schema.TRIAL_TIMING_COLUMNS`)."""
        return {f"{TIMING_PREFIX}{name}_s": seconds for name, seconds in self.seconds.items()}


@dataclass
class StageTiming:
    """One shared stage as a run met it: built here or loaded from the cache (waiting for a concurrent build
    included), and its seconds, data loading included, stages it built first excluded."""

    name: str
    built: bool
    seconds: float
    path: str = ""  # the stage's cached file


class TimedRunContext(RunContext):
    """A RunContext whose data loading, model building and shared stages are timed on ``clock`` (phases ``data``,
    ``model_build``, ``shared_stages``); every stage met is listed in ``stages``. Same results as RunContext."""

    def __init__(self, spec: RunSpec, session: Session, clock: PhaseClock | None = None) -> None:
        super().__init__(spec, session)
        self.clock = clock if clock is not None else PhaseClock()
        self.stages: list[StageTiming] = []
        self._nested_stage_s: list[float] = []  # per open stage: seconds of the stages it opened

    def source_dataset(self, split: str = "train") -> Dataset:
        """Labelled source images (timed as ``data``)."""
        with self.clock.phase("data"):
            return super().source_dataset(split)

    def target_dataset(self) -> Dataset:
        """Unlabelled target training images (timed as ``data``)."""
        with self.clock.phase("data"):
            return super().target_dataset()

    def build_model(self, pretrained: bool = True) -> nn.Module:
        """A fresh model on the run's device (timed as ``model_build``)."""
        with self.clock.phase("model_build"):
            return super().build_model(pretrained)

    def cached_stage(self, name: str, key: dict[str, Any], build: Callable[[], dict[str, Any]],
                     per_target: bool = True) -> dict[str, Any]:
        """RunContext.cached_stage, timed as ``shared_stages`` and listed in ``stages`` as built or cached."""
        built = [False]

        def timed_build() -> dict[str, Any]:
            built[0] = True
            return build()

        self._nested_stage_s.append(0.0)
        try:
            with self.clock.phase("shared_stages") as stamp:
                state = super().cached_stage(name, key, timed_build, per_target)
        finally:
            nested = self._nested_stage_s.pop()
        if self._nested_stage_s:
            self._nested_stage_s[-1] += stamp.elapsed_s
        path = self.stage_directory(name, key, per_target) / CHECKPOINT_FILE
        self.stages.append(StageTiming(name, built[0], stamp.elapsed_s - nested, str(path)))
        return state


def phase(ctx: RunContext, name: str) -> contextlib.AbstractContextManager[Any]:
    """Time a block as ``name`` on ``ctx``'s clock when it has one (a TimedRunContext), else do nothing."""
    clock = getattr(ctx, "clock", None)
    return clock.phase(name) if isinstance(clock, PhaseClock) else contextlib.nullcontext()


def timed_context(clock: PhaseClock) -> Callable[[RunSpec, Session], TimedRunContext]:
    """A ``context_class`` for :func:`raysel.execution.trial.train_and_finish` whose contexts stamp ``clock``."""
    return lambda spec, session: TimedRunContext(spec, session, clock)
