"""The trial-row schema, once: fixed columns and their types, column prefixes, the headline held-out metric per
task, and the missing-value rules. The writer (:mod:`raysel.execution.rows`), the store, the summary, the report
and the selection read it from here.

Missing values: every Parquet file carries every fixed column, NULL when a trial has no value (a failed trial, a
dataset without target labels), so ``SELECT heldout_miou FROM trials`` always works; a held-out column "holds
values" for a set of trials when at least one of them (or, for a selection's own evaluation, every one) has one.
"""

from __future__ import annotations

import dataclasses
import datetime
import types
import typing
from pathlib import Path
from typing import Any

import pyarrow as pa

from raysel.errors import ConfigError
from raysel.hyperparameters import field_types

__all__ = [
    "HYPERPARAMETER_PREFIX", "SCORE_PREFIX", "HELDOUT_PREFIX", "PRIMARY_HELDOUT_COLUMNS",
    "PER_TARGET_HELDOUT_PREFIXES", "FINAL_METRIC_COLUMNS", "TIMESTAMP", "TRIAL_IDENTITY_COLUMNS", "TRIAL_PHASES",
    "TIMING_PREFIX", "TRIAL_TIMING_COLUMNS", "TRIAL_RUN_COLUMNS", "TRIAL_ESTIMATE_COLUMNS", "TRIAL_HELDOUT_COLUMNS",
    "TRIAL_TRAILING_COLUMNS", "TRIAL_FIXED_COLUMNS", "SELECTION_GUARD_COLUMNS", "SELECTION_FIXED_COLUMNS",
    "NESTED_GROUPS", "TRIAL_STATUSES", "KEY_SEPARATOR",
    "primary_heldout_column", "heldout_column_with_values", "arrow_type_for_annotation", "arrow_type_for_value",
    "hyperparameter_arrow_types", "trial_table", "selection_table", "column_order", "relocated_path",
]

HYPERPARAMETER_PREFIX = "hp_"  # hp_<name>: one typed column per hyperparameter, swept or default
SCORE_PREFIX = "score_"  # score_<selector>: label-free scores (selectors, and scores a method computed itself)
HELDOUT_PREFIX = "heldout_"  # held-out (oracle) evaluation only: never an input of a selector or a method
# The headline held-out metric of each task (what "held-out" means in summaries, reports and selection rows).
PRIMARY_HELDOUT_COLUMNS: dict[str, str] = {"segmentation": "heldout_miou", "classification": "heldout_accuracy"}
# Multi-target methods (hdrq) add one column per evaluation target: heldout_<metric>_<target>.
PER_TARGET_HELDOUT_PREFIXES = ("heldout_miou_", "heldout_accuracy_", "heldout_iou_")
# Final metrics of a run that become fixed columns of its row when present.
FINAL_METRIC_COLUMNS = ("heldout_miou", "heldout_accuracy", "heldout_iou", "train_time_s")

TIMESTAMP = pa.timestamp("us", tz="UTC")

# Fixed columns of a trial row, in display order. Hyperparameter columns go after ``seed``; score columns, the
# label-free estimate, held-out metrics and other final metrics after the run columns.
TRIAL_IDENTITY_COLUMNS: dict[str, pa.DataType] = {
    "sweep_id": pa.string(),
    "trial_id": pa.string(),
    "task": pa.string(),
    "dataset": pa.string(),
    "source": pa.string(),
    "target": pa.string(),
    "model": pa.string(),
    "seed": pa.int64(),
}
# Where a trial's wall time went, in seconds per phase (exclusive: a phase's time excludes phases nested in it):
# time_<phase>_s, stamped with time.perf_counter by raysel.execution.timing. NULL in rows written before them.
TRIAL_PHASES = ("setup", "data", "model_build", "shared_stages", "train", "save_model", "predictions", "heldout",
                "selection_scores")
TIMING_PREFIX = "time_"
TRIAL_TIMING_COLUMNS: dict[str, pa.DataType] = {f"{TIMING_PREFIX}{phase}_s": pa.float64() for phase in TRIAL_PHASES}
TRIAL_RUN_COLUMNS: dict[str, pa.DataType] = {
    "status": pa.string(),
    "error": pa.string(),
    "retries": pa.int64(),
    "wall_time_s": pa.float64(),
    "started_at": TIMESTAMP,
    "finished_at": TIMESTAMP,
    **TRIAL_TIMING_COLUMNS,
}
# The label-free estimate of the trial's target score (fraction) with its 90 % interval and the estimator that made
# it (raysel.selection.estimate); written when the sweep's selection runs, NULL before and where none could be made.
TRIAL_ESTIMATE_COLUMNS: dict[str, pa.DataType] = {
    "estimate_score": pa.float64(),
    "estimate_low": pa.float64(),
    "estimate_high": pa.float64(),
    "estimate_method": pa.string(),
}
TRIAL_HELDOUT_COLUMNS: dict[str, pa.DataType] = {
    "heldout_miou": pa.float64(),
    "heldout_iou": pa.list_(pa.float64()),
    "heldout_accuracy": pa.float64(),
}
TRIAL_TRAILING_COLUMNS: dict[str, pa.DataType] = {
    # The dataset family's class names in class-id order: what each entry of heldout_iou is. Stored with the row so
    # that SQL users and `raysel report` name classes without loading the data package (and torch with it).
    "class_names": pa.list_(pa.string()),
    "checkpoint_path": pa.string(),
    "predictions_path": pa.string(),
    "raysel_version": pa.string(),
    "ray_version": pa.string(),
    "torch_version": pa.string(),
}
TRIAL_FIXED_COLUMNS: dict[str, pa.DataType] = {
    **TRIAL_IDENTITY_COLUMNS, **TRIAL_RUN_COLUMNS, **TRIAL_ESTIMATE_COLUMNS, **TRIAL_HELDOUT_COLUMNS,
    **TRIAL_TRAILING_COLUMNS,
}
# The guarded decision of a target (raysel.selection.guarded), the same on every selection row of that target: whether
# the pick is confident, why (not), the trial kept, the default configuration's candidate, the short-list of the
# panel's distinct picks and the panel itself. NULL in rows written before the guard existed.
SELECTION_GUARD_COLUMNS: dict[str, pa.DataType] = {
    "guard_confident": pa.bool_(),
    "guard_reason": pa.string(),
    "guarded_trial_id": pa.string(),
    "default_trial_id": pa.string(),
    "shortlist": pa.list_(pa.string()),
    "guard_selectors": pa.list_(pa.string()),
}
SELECTION_FIXED_COLUMNS: dict[str, pa.DataType] = {
    "sweep_id": pa.string(),
    "selection_id": pa.string(),
    "target": pa.string(),
    "selector": pa.string(),
    "selected_trial_id": pa.string(),
    "score": pa.float64(),
    "num_candidates": pa.int64(),
    "created_at": TIMESTAMP,
    **SELECTION_GUARD_COLUMNS,
}
# Keys of a row dict that hold nested groups of columns rather than a column.
NESTED_GROUPS = ("hyperparameters", "scores", "metrics")
TRIAL_STATUSES = ("finished", "failed", "stopped")
KEY_SEPARATOR = "__"


def primary_heldout_column(task: str) -> str:
    """The headline held-out column of a task: ``heldout_miou`` (segmentation) or ``heldout_accuracy``."""
    return PRIMARY_HELDOUT_COLUMNS[task]


def heldout_column_with_values(trials: Any, *, every_row: bool = False) -> str | None:
    """The headline held-out column that holds values in ``trials`` (a DataFrame): in any row, or in
    ``every_row``; segmentation's first. None when neither does (no target labels, or failed trials)."""
    for column in PRIMARY_HELDOUT_COLUMNS.values():
        if column in trials and trials[column] is not None:
            present = trials[column].notna()
            if present.all() if every_row else present.any():
                return column
    return None


# --------------------------------------------------------------------------------------------------------------
# Types: Python annotations and values -> pyarrow types, values -> column arrays
# --------------------------------------------------------------------------------------------------------------


def arrow_type_for_annotation(annotation: Any) -> pa.DataType | None:
    """The pyarrow type of a hyperparameter annotation (``int``, ``float | None``, ``tuple[int, ...]``), or None."""
    if isinstance(annotation, pa.DataType):
        return annotation
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation, annotation)
    scalar = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    if annotation in scalar:
        return scalar[annotation]
    origin = typing.get_origin(annotation)
    arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(arguments) == 1:  # Optional[X]
        return arrow_type_for_annotation(arguments[0])
    if origin is typing.Literal and arguments:
        literal_types = {type(argument) for argument in arguments}
        return scalar.get(literal_types.pop()) if len(literal_types) == 1 else None
    if origin in (tuple, list):
        inner = [argument for argument in arguments if argument is not Ellipsis]
        if len(set(inner)) == 1:
            inner_type = arrow_type_for_annotation(inner[0])
            return pa.list_(inner_type) if inner_type is not None else None
    return None


def arrow_type_for_value(value: Any) -> pa.DataType:
    """The pyarrow type of a Python/numpy scalar or sequence (None -> float64: unknown metrics are numbers)."""
    value = _plain(value)
    if value is None:
        return pa.float64()
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, datetime.datetime):
        return TIMESTAMP
    if isinstance(value, (list, tuple)):
        items = [item for item in value if item is not None]
        if items and all(isinstance(item, bool) for item in items):
            return pa.list_(pa.bool_())
        if items and all(isinstance(item, int) and not isinstance(item, bool) for item in items):
            return pa.list_(pa.int64())
        if all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in items):
            return pa.list_(pa.float64())
        return pa.list_(pa.string())
    return pa.string()


def hyperparameter_arrow_types(hyperparameter_types: Any) -> dict[str, pa.DataType | None]:
    """Normalise ``hyperparameter_types`` (a config dataclass, or name -> annotation / pyarrow type) to arrow types."""
    if hyperparameter_types is None:
        return {}
    if dataclasses.is_dataclass(hyperparameter_types):
        config_class = hyperparameter_types if isinstance(hyperparameter_types, type) else type(hyperparameter_types)
        hyperparameter_types = field_types(config_class)
    return {name: arrow_type_for_annotation(annotation) for name, annotation in dict(hyperparameter_types).items()}


def _plain(value: Any) -> Any:
    """Turn numpy/torch scalars and arrays into plain Python values (lists for arrays)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


def _to_timestamp(value: Any) -> datetime.datetime | None:
    """Epoch seconds, an ISO string or a datetime (naive = local time) -> an aware UTC datetime."""
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(float(value), tz=datetime.timezone.utc)
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        value = value.to_pydatetime()
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.timezone.utc)
    raise TypeError(f"cannot read {value!r} as a timestamp")


def _coerce_value(column: str, value: Any, arrow_type: pa.DataType) -> Any:
    """Convert a value to what ``arrow_type`` holds; a value of the wrong kind raises ValueError naming the column."""
    value = _plain(value)
    if value is None:
        return None
    try:
        if pa.types.is_timestamp(arrow_type):
            return _to_timestamp(value)
        if pa.types.is_boolean(arrow_type):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if pa.types.is_integer(arrow_type):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
                raise TypeError
            return int(value)
        if pa.types.is_floating(arrow_type):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return float(value)
        if pa.types.is_string(arrow_type):
            return value if isinstance(value, str) else str(value)
        if pa.types.is_list(arrow_type):
            if not isinstance(value, list):
                raise TypeError
            return [_coerce_value(column, item, arrow_type.value_type) for item in value]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"result column {column!r} is typed {arrow_type} but got {value!r}") from None
    return value


def _table_from_columns(columns: dict[str, tuple[pa.DataType, Any]]) -> pa.Table:
    """A one-row table from ``{name: (type, value)}``, each value coerced to its type."""
    arrays = {name: pa.array([_coerce_value(name, value, arrow_type)], type=arrow_type)
              for name, (arrow_type, value) in columns.items()}
    return pa.table(arrays)


def _check_name(kind: str, value: Any, *, allow_separator: bool = True) -> str:
    """Validate a key part used in a file or folder name (no path separators, no leading dot, not empty)."""
    if not isinstance(value, str) or not value or value.startswith(".") or any(c in value for c in "/\\\0"):
        raise ConfigError(f"invalid {kind} {value!r}: it must be a non-empty name without '/', '\\' or a leading '.'")
    if not allow_separator and KEY_SEPARATOR in value:
        raise ConfigError(f"invalid {kind} {value!r}: it may not contain {KEY_SEPARATOR!r} (the store's key separator)")
    return value


def column_order(table: str, names: list[str]) -> list[str]:
    """The order readers show a table's columns in (``names``: those present): key and method first, then the fixed
    columns with hyperparameters, scores, the estimate and metrics in their groups."""
    present = set(names)
    if table == "selections":
        fixed = ["sweep_id", "selection_id", "method", *list(SELECTION_FIXED_COLUMNS)[2:]]
        head = [name for name in fixed if name in present]
        return head + [name for name in names if name not in head]
    hyperparameters = [name for name in names if name.startswith(HYPERPARAMETER_PREFIX)]
    scores = sorted(name for name in names if name.startswith(SCORE_PREFIX))
    grouped = set(hyperparameters) | set(scores) | set(TRIAL_FIXED_COLUMNS) | {"method"}
    metrics = [name for name in names if name not in grouped]
    identity = ["sweep_id", "trial_id", "method", *list(TRIAL_IDENTITY_COLUMNS)[2:]]
    ordered = (identity + hyperparameters + list(TRIAL_RUN_COLUMNS) + scores + list(TRIAL_ESTIMATE_COLUMNS)
               + list(TRIAL_HELDOUT_COLUMNS) + metrics + list(TRIAL_TRAILING_COLUMNS))
    return [name for name in ordered if name in present]


# --------------------------------------------------------------------------------------------------------------
# Building rows
# --------------------------------------------------------------------------------------------------------------


def trial_table(row: dict[str, Any], hyperparameter_types: Any = None) -> tuple[str, pa.Table]:
    """Build the one-row table of a trial (without the ``method`` partition column); returns (method, table).

    ``row`` holds the fixed columns by name; hyperparameters either as ``row["hyperparameters"] = {name: value}`` or as
    ``hp_<name>`` keys; selector scores as ``row["scores"] = {selector: value}`` or ``score_<selector>`` keys; other
    final metrics as ``row["metrics"] = {name: scalar}`` or as any further top-level key (typed from the value).
    """
    row = dict(row)
    method = _check_name("method", row.pop("method", None))
    status = row.get("status")
    if status not in TRIAL_STATUSES:
        raise ValueError(f"trial status must be one of {', '.join(TRIAL_STATUSES)}, got {status!r}")
    hyperparameters = {f"{HYPERPARAMETER_PREFIX}{name}": value for name, value in (row.pop("hyperparameters", None) or {}).items()}
    scores = {_score_column(name): value for name, value in (row.pop("scores", None) or {}).items()}
    metrics = dict(row.pop("metrics", None) or {})
    for key in list(row):
        if key in TRIAL_FIXED_COLUMNS:
            continue
        value = row.pop(key)
        if key.startswith(HYPERPARAMETER_PREFIX):
            hyperparameters[key] = value
        elif key.startswith(SCORE_PREFIX):
            scores[key] = value
        else:
            metrics[key] = value
    clashes = sorted(set(metrics) & (set(TRIAL_FIXED_COLUMNS) | set(hyperparameters) | set(scores) | {"method"}))
    if clashes:
        raise ValueError(f"metric name(s) {', '.join(clashes)} clash with fixed trial columns")
    declared = {f"{HYPERPARAMETER_PREFIX}{name}": arrow_type
                for name, arrow_type in hyperparameter_arrow_types(hyperparameter_types).items()}
    for column in declared:  # a declared hyperparameter absent from the row is still a typed (NULL) column
        hyperparameters.setdefault(column, None)

    columns: dict[str, tuple[pa.DataType, Any]] = {}
    for name, arrow_type in TRIAL_IDENTITY_COLUMNS.items():
        columns[name] = (arrow_type, row.get(name))
    for name, value in hyperparameters.items():
        columns[name] = (declared.get(name) or arrow_type_for_value(value), value)
    for name, arrow_type in TRIAL_RUN_COLUMNS.items():
        columns[name] = (arrow_type, row.get(name))
    for name, value in sorted(scores.items()):
        columns[name] = (pa.float64(), value)
    for name, arrow_type in TRIAL_ESTIMATE_COLUMNS.items():
        columns[name] = (arrow_type, row.get(name))
    for name, arrow_type in TRIAL_HELDOUT_COLUMNS.items():
        columns[name] = (arrow_type, row.get(name))
    for name, value in metrics.items():
        columns[name] = (arrow_type_for_value(value), value)
    for name, arrow_type in TRIAL_TRAILING_COLUMNS.items():
        columns[name] = (arrow_type, row.get(name))
    _check_name("sweep_id", columns["sweep_id"][1], allow_separator=False)
    _check_name("trial_id", columns["trial_id"][1])
    return method, _table_from_columns(columns)


def selection_table(row: dict[str, Any]) -> tuple[str, pa.Table]:
    """Build the one-row table of a selection decision (without ``method``); returns (method, table).

    ``selection_id`` defaults to ``<target>-<selector>``; ``created_at`` to now. Further keys (``heldout_regret``,
    ``heldout_selected_miou``, ...) become columns typed from their values.
    """
    row = dict(row)
    method = _check_name("method", row.pop("method", None))
    row.setdefault("selection_id", f"{row.get('target')}-{row.get('selector')}")
    row.setdefault("created_at", datetime.datetime.now(datetime.timezone.utc))
    columns: dict[str, tuple[pa.DataType, Any]] = {name: (arrow_type, row.pop(name, None))
                                                   for name, arrow_type in SELECTION_FIXED_COLUMNS.items()}
    for name, value in row.items():
        columns[name] = (arrow_type_for_value(value), value)
    _check_name("sweep_id", columns["sweep_id"][1], allow_separator=False)
    _check_name("selection_id", columns["selection_id"][1])
    return method, _table_from_columns(columns)


def _score_column(selector: str) -> str:
    return selector if selector.startswith(SCORE_PREFIX) else f"{SCORE_PREFIX}{selector}"


def relocated_path(path: str | Path, recorded_root: str | Path | None, store_root: str | Path) -> Path:
    """``path`` as it lies in ``store_root`` when it was recorded under ``recorded_root`` (the sweep's results folder
    before a copy or move); other paths unchanged.

    Rows record absolute checkpoint and prediction paths under the results folder of the sweep that wrote them; a copy
    or move of that folder keeps the files at the same place relative to the store. Re-prediction and `raysel select`'s
    check for missing prediction caches both apply this one rule."""
    path = Path(path)
    if recorded_root is None:
        return path
    try:
        relative = path.relative_to(Path(recorded_root))
    except ValueError:
        return path
    return Path(store_root).resolve() / relative
