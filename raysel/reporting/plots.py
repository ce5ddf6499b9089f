"""The PNG plots of the sweep report, drawn on matplotlib's Agg canvas (no display, no global pyplot state).

Per target: selector scores against held-out scores (the oracle check), swept hyperparameters against the selection
score, and held-out per-class IoU of the selected and best candidate. Each function writes one PNG and returns its
file name, which the Markdown and HTML reports link or embed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas

from raysel.errors import UserError
from raysel.reporting.formatting import HELDOUT_COLUMNS, POINTS, hashable, top_index
from raysel.store.schema import HYPERPARAMETER_PREFIX, SCORE_PREFIX

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

SELECTED_STYLE = {"marker": "*", "s": 260, "color": "tab:red", "edgecolors": "black", "zorder": 4}
BEST_STYLE = {"marker": "o", "s": 220, "facecolors": "none", "edgecolors": "tab:green", "linewidths": 2, "zorder": 5}




def _new_figure(panels: int, width: float = 4.2, height: float = 3.4) -> tuple["Figure", list[Any]]:
    """A figure on the Agg canvas with ``panels`` axes in rows of at most three."""
    # Lazy, not a cycle: matplotlib takes about a second to import and only a report that draws needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, list(axes[:panels])


def _save(figure: "Figure", path: Path) -> str:
    """Write ``figure`` as PNG to ``path``; return the file name (the Markdown links relative to the report)."""
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as error:
        raise UserError(f"cannot write the report plot {path}: {error.strerror or error}") from None
    return path.name


def plot_scores_against_heldout(candidates: "pandas.DataFrame", heldout: str, selectors: Sequence[str],
                                best_trial: str, path: Path, kendall_taus: dict[str, float] | None = None) -> str:
    """One panel per selector: label-free score (x) against held-out score in points (y); top score and best marked.

    ``kendall_taus`` (selector -> τ against the held-out scores) goes into the panel titles when given.
    """
    figure, axes = _new_figure(len(selectors), width=5.0)
    truth = candidates[heldout].to_numpy(dtype=np.float64, na_value=np.nan) * POINTS
    is_best = (candidates["trial_id"] == best_trial).to_numpy()
    for axis, selector in zip(axes, selectors):
        scores = candidates[SCORE_PREFIX + selector].to_numpy(dtype=np.float64, na_value=np.nan)
        axis.scatter(scores, truth, color="tab:blue", s=36, label="candidate", zorder=3)
        if not np.isnan(scores).all():
            top = top_index(scores)
            axis.scatter(scores[top], truth[top], label="selected (top score)", **SELECTED_STYLE)
        axis.scatter(scores[is_best], truth[is_best], label="best held-out (oracle)", **BEST_STYLE)
        tau = (kendall_taus or {}).get(selector)
        axis.set_title(selector if tau is None or not math.isfinite(tau) else f"{selector}  (Kendall τ {tau:.2f})")
        axis.set_xlabel(f"{selector} score (label-free)")
        axis.set_ylabel(f"{HELDOUT_COLUMNS[heldout]} (oracle, points)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    figure.suptitle(f"Label-free scores against {HELDOUT_COLUMNS[heldout]} (oracle check)", fontsize=10)
    return _save(figure, path)


def plot_hyperparameters(candidates: "pandas.DataFrame", hyperparameters: Sequence[str], selector: str,
                         selected: str | None, path: Path) -> str:
    """One panel per swept hyperparameter: its value (x; categories for non-numbers) against the selection score."""
    figure, axes = _new_figure(len(hyperparameters))
    scores = candidates[SCORE_PREFIX + selector].to_numpy(dtype=np.float64, na_value=np.nan)
    is_selected = (candidates["trial_id"] == selected).to_numpy()
    for axis, column in zip(axes, hyperparameters):
        values = hashable(candidates[column])
        numeric = pandas.api.types.is_numeric_dtype(values) and not pandas.api.types.is_bool_dtype(values)
        if numeric:
            positions = values.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            categories = pandas.Categorical(values.astype(str))
            positions = categories.codes.astype(np.float64)
            axis.set_xticks(np.arange(len(categories.categories)), list(categories.categories), rotation=30,
                            fontsize=8)
            axis.set_xlim(-0.5, len(categories.categories) - 0.5)
        axis.scatter(positions, scores, color="tab:blue", s=36, zorder=3)
        axis.scatter(positions[is_selected], scores[is_selected], label="selected", **SELECTED_STYLE)
        axis.set_xlabel(column[len(HYPERPARAMETER_PREFIX):])
        axis.set_ylabel(f"{selector} score")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    figure.suptitle(f"Swept hyperparameters against the {selector} selection score", fontsize=10)
    return _save(figure, path)


def plot_class_iou(class_names: Sequence[str], selected_iou: np.ndarray, best_iou: np.ndarray, selector: str,
                   same: bool, path: Path) -> str:
    """Grouped bars of held-out per-class IoU (points) of the selected and the best held-out candidate."""
    figure, (axis,) = _new_figure(1, width=max(6.0, 0.55 * len(class_names)), height=4.2)
    positions = np.arange(len(class_names))
    axis.bar(positions - 0.2, selected_iou * POINTS, width=0.4, color="tab:red", label=f"selected by {selector}")
    axis.bar(positions + 0.2, best_iou * POINTS, width=0.4, color="tab:green", label="best held-out (oracle)")
    axis.set_xticks(positions, list(class_names), rotation=45, ha="right", fontsize=8)
    for position in np.flatnonzero(np.isnan(selected_iou) & np.isnan(best_iou)):
        axis.text(position, 0.5, "absent", rotation=90, ha="center", va="bottom", fontsize=7, color="gray")
    axis.set_ylabel("held-out IoU (points)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    suffix = " (the selector chose the best candidate)" if same else ""
    axis.set_title(f"Held-out per-class IoU: selected vs best candidate{suffix}")
    return _save(figure, path)
