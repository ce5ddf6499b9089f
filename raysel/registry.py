"""The one method registry: name -> Method (task, hyperparameter dataclass, per-worker train loop, search space).

Adding a method means adding one module under ``raysel/methods/`` that calls :func:`register`; every module in that
package is imported on first lookup, so nothing else has to change.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import raysel.methods as methods_package
from raysel.errors import ConfigError, unknown_name_error

if TYPE_CHECKING:  # pragma: no cover
    from raysel.methods.base import RunContext
    from raysel.methods.result import TrainResult

__all__ = [
    "SEARCH_SPACE_DIR", "TASKS", "Method", "register", "method_names", "get_method",
]

SEARCH_SPACE_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
TASKS = ("segmentation", "classification")


@dataclass(frozen=True)
class Method:
    """A registered adaptation method.

    ``train(config, ctx)`` is the per-worker training loop (it runs on every Ray Train worker, or directly inside a
    Tune trial for single-worker runs) and returns a :class:`~raysel.methods.result.TrainResult`: the model whose
    predictions are evaluated and selected, and how to rebuild it.
    ``tasks`` lists the tasks the method supports (HDRQ supports both).
    """

    name: str
    tasks: tuple[str, ...]
    config_class: type
    train: Callable[[Any, "RunContext"], "TrainResult"]
    description: str
    # Optional: build the stages that do not depend on swept hyperparameters (source model, warm-up) through
    # ``ctx.cached_stage``. The sweep calls it once per target before any trial starts, with all the CPUs it has.
    prepare_shared: Callable[[Any, "RunContext"], None] | None = None
    # Required with ``prepare_shared``: the hyperparameters its stages are keyed by, as a pure function of the config.
    # A sweep that varies any of them has no one shared stage, so it skips the preparation (each trial builds and
    # caches the stage for its own values) instead of pre-building one at the defaults that no trial would load.
    shared_stage_key: Callable[[Any], Any] | None = None
    # Label-free selectors recorded after a sweep when ``--selector`` is not given; the first decides.
    default_selectors: tuple[str, ...] = ("fmiou",)

    @property
    def search_space_path(self) -> Path:
        return SEARCH_SPACE_DIR / f"{self.name}.yaml"

    def hyperparameter_names(self) -> list[str]:
        return [field.name for field in dataclasses.fields(self.config_class)]

    def default_config(self) -> Any:
        return self.config_class()

    def check_task(self, task: str, data: str | None = None, role: str = "method") -> None:
        """Raise ConfigError unless this method supports ``task``: the one task check every run goes through.

        ``data`` names where the task came from (a dataset family), ``role`` how the method is used (HDRQ's
        ``adaptation method``); the message names the method, the task and the tasks it supports.
        """
        if task not in self.tasks:
            origin = f" ({data})" if data else ""
            raise ConfigError(f"{role} {self.name} does not support {task} data{origin}; "
                              f"it supports {', '.join(self.tasks)}")


_REGISTRY: dict[str, Method] = {}
_DISCOVERED = False


def register(method: Method) -> Method:
    """Add a method to the registry (called at import time by each module in ``raysel.methods``)."""
    for task in method.tasks:
        if task not in TASKS:
            raise ValueError(f"method {method.name!r}: unknown task {task!r}; expected one of {TASKS}")
    if method.prepare_shared is not None and method.shared_stage_key is None:
        raise ValueError(f"method {method.name!r}: prepare_shared needs shared_stage_key (the hyperparameters its "
                         "stages are keyed by)")
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    for module in pkgutil.iter_modules(methods_package.__path__):
        if not module.name.startswith("_") and module.name not in ("base", "result"):
            importlib.import_module(f"{methods_package.__name__}.{module.name}")
    _DISCOVERED = True


def method_names() -> list[str]:
    """Names of every registered method, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """Look a method up by name; an unknown name raises ConfigError listing the registered ones."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name_error("method", name, sorted(_REGISTRY), "registered methods") from None
