"""The typed result of a method's training loop, and how a trial's saved model is written and rebuilt.

A method's ``train(config, ctx)`` returns a :class:`TrainResult`: the model that is evaluated and selected, how its
saved form is rebuilt (:data:`STATE_DICT`: the run's network builder plus the saved weights; :data:`MODULE`: the
whole module, for models no builder reproduces, such as HDRQ's quantized merged model), the label-free scores and
metrics the method computed itself, and the targets its model is evaluated on (multi-target methods).
:func:`save_model` writes ``model.pt`` plus a ``model.json`` recipe next to it; :func:`rebuild_model` reads both
back, so ``raysel.select --repredict`` rebuilds every method's model the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raysel.errors import DataError
from raysel.methods.base import RunContext

STATE_DICT = "state_dict"  # rebuilt with RunContext.build_model (the architecture the run was configured with)
MODULE = "module"  # saved and loaded as the whole module (its structure is not what build_model makes)
SAVED_FORMS = (STATE_DICT, MODULE)
RECIPE_SUFFIX = ".json"


@dataclass
class TrainResult:
    """What a train loop returns: the model to evaluate and select, how to rebuild it, and the method's own scores.

    ``scores`` are label-free scores stored as ``score_<name>``; ``metrics`` further columns of the trial's row;
    ``evaluation_targets`` the targets the model is scored on (empty: the run's own target).
    """

    model: nn.Module
    saved_as: str = STATE_DICT
    scores: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluation_targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.saved_as not in SAVED_FORMS:
            raise ValueError(f"TrainResult.saved_as must be one of {SAVED_FORMS}, got {self.saved_as!r}")
        self.evaluation_targets = tuple(self.evaluation_targets)


def unwrapped(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return getattr(model, "module", model)


def save_model(result: TrainResult, path: str | Path) -> Path:
    """Write the result's model to ``path`` in its saved form and the rebuild recipe to ``path`` + ``.json``."""
    path = Path(path)
    model = unwrapped(result.model)
    torch.save(model if result.saved_as == MODULE else model.state_dict(), path)
    recipe_path(path).write_text(json.dumps({"saved_as": result.saved_as}))
    return path


def recipe_path(checkpoint_path: str | Path) -> Path:
    """Where the rebuild recipe of a saved model lies (``model.pt`` -> ``model.pt.json``)."""
    return Path(f"{checkpoint_path}{RECIPE_SUFFIX}")


def rebuild_model(checkpoint_path: str | Path, ctx: RunContext) -> nn.Module:
    """The model a trial saved with :func:`save_model`, on ``ctx.device`` in eval mode.

    A checkpoint without a recipe (older trials) is a state dict. A state dict that does not fit the run's network
    raises DataError naming the checkpoint.
    """
    checkpoint_path = Path(checkpoint_path)
    recipe = recipe_path(checkpoint_path)
    saved_as = json.loads(recipe.read_text()).get("saved_as", STATE_DICT) if recipe.is_file() else STATE_DICT
    if saved_as == MODULE:
        # A whole module is a pickle: trial folders are the sweep's own output, as trusted as its Tune checkpoints.
        model = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        return model.to(ctx.device).eval()
    model = ctx.build_model(pretrained=False)
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"checkpoint {checkpoint_path} does not fit the model {ctx.spec.model or 'default'} of "
                        f"this run ({first_line})") from None
    return model.eval()
