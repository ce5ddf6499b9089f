"""One hyperparameter schema, read from a method's frozen config dataclass, for every consumer.

A config dataclass declares each hyperparameter once: its type (``int``, ``float``, ``bool``, ``str``,
``tuple[int, ...]``, ``X | None``), its allowed values (``Literal["ias", "constant"]``) and its range
(``alpha: float = bounded(0.5, gt=0.0, le=1.0)``; ``ge``/``gt``/``le``/``lt`` say which bounds are inclusive).
From that this module serves

* validation and coercion of a dict (YAML, Tune config, ``--set``) into the frozen config: :func:`config_from_dict`,
  with :func:`check_fields` for configs built directly (each config's ``validate`` calls it, then its cross-field
  checks);
* the search-space checks of :mod:`raysel.search_space`: :func:`value_problem` says why a grid/choice/fixed value
  does not fit a field's type, Literal or range;
* the store's column types: :func:`field_types` gives each field's resolved annotation.

It sits at the layer of search_space and imports nothing of raysel above ``errors``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from raysel.errors import ConfigError

__all__ = [
    "RANGE_KEY", "HELP_KEY", "Range", "bounded", "field_types", "field_ranges", "literal_choices", "type_name",
    "type_problem", "range_problem", "value_problem", "coerce", "check_fields", "config_from_dict",
]

RANGE_KEY = "range"
HELP_KEY = "help"


# --------------------------------------------------------------------------------------------------------------
# Declaring ranges
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """Numeric bounds of a hyperparameter; ``*_inclusive`` says whether the bound itself is allowed."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside (NaN never does)."""
        if math.isnan(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return not (self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)))

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``<= 5`` or ``in (0, 1]``, as error messages show it."""
        low, high = _number_text(self.low), _number_text(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'[' if self.low_inclusive else '('}{low}, {high}{']' if self.high_inclusive else ')'}"
        if self.low is not None:
            return f"{'>=' if self.low_inclusive else '>'} {low}"
        return f"{'<=' if self.high_inclusive else '<'} {high}"


def _number_text(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, help: str = "") -> Any:
    """A dataclass field with ``default`` and a declared range: ``ge``/``le`` inclusive, ``gt``/``lt`` exclusive;
    ``help`` (the paper's meaning) is shown in error messages after the key."""
    if (ge is not None and gt is not None) or (le is not None and lt is not None):
        raise ValueError("give at most one lower (ge/gt) and one upper (le/lt) bound")
    value_range = Range(low=ge if ge is not None else gt, high=le if le is not None else lt,
                        low_inclusive=gt is None, high_inclusive=lt is None)
    metadata = {RANGE_KEY: value_range, **({HELP_KEY: help} if help else {})}
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------------------------
# Reading the schema
# --------------------------------------------------------------------------------------------------------------


def field_types(config_class: type) -> dict[str, Any]:
    """Each field's resolved annotation (the raw annotation when a forward reference cannot be resolved)."""
    if not dataclasses.is_dataclass(config_class):
        return {}
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # unresolvable forward reference: fall back to the raw annotations
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(config_class)}


def field_ranges(config_class: type) -> dict[str, Range]:
    """The declared range of each bounded field (fields without one are absent)."""
    if not dataclasses.is_dataclass(config_class):
        return {}
    return {f.name: f.metadata[RANGE_KEY] for f in dataclasses.fields(config_class) if RANGE_KEY in f.metadata}


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` annotation (Optional unwrapped), else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for argument in typing.get_args(annotation):
            choices = literal_choices(argument)
            if choices is not None:
                return choices
    return None


def type_name(annotation: Any) -> str:
    """A readable name of an annotation (``int``, ``float | None``, ``tuple[int, ...]``)."""
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# --------------------------------------------------------------------------------------------------------------
# Checking one value
# --------------------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def type_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` does not fit the field ``annotation`` (None when it fits or the type is not checked)."""
    if annotation is None or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        reasons = [type_problem(value, argument) for argument in arguments if argument is not type(None)]
        return None if any(reason is None for reason in reasons) else reasons[0]
    if origin is typing.Literal:
        return None if value in arguments else f"expects one of {', '.join(repr(a) for a in arguments)}"
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return f"expects a list ({type_name(annotation)})"
        inner = [argument for argument in arguments if argument is not Ellipsis]
        if len(set(inner)) == 1:
            for item in value:
                reason = type_problem(item, inner[0])
                if reason:
                    return reason
        return None
    simple = {bool: (lambda v: isinstance(v, bool), "expects true or false"),
              int: (lambda v: _is_number(v) and float(v).is_integer(), "expects an integer"),
              float: (_is_number, "expects a number"), str: (lambda v: isinstance(v, str), "expects a string")}
    if annotation in simple:
        fits, reason = simple[annotation]
        return None if fits(value) else reason
    return None


def range_problem(value: Any, value_range: Range | None) -> str | None:
    """Why a numeric ``value`` lies outside ``value_range`` (None inside, without a range, or for non-numbers)."""
    if value_range is None or not _is_number(value) or value_range.contains(float(value)):
        return None
    return f"must be {value_range.describe()}"


def value_problem(value: Any, annotation: Any, value_range: Range | None = None) -> str | None:
    """Why ``value`` does not fit a field: its type or Literal first, then its declared range."""
    return type_problem(value, annotation) or range_problem(value, value_range)


# --------------------------------------------------------------------------------------------------------------
# Building and validating configs
# --------------------------------------------------------------------------------------------------------------


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML/Tune value to the field's declared type, or raise ConfigError naming the key."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation, annotation)
    origin = typing.get_origin(annotation)
    try:
        if origin in (typing.Union, types.UnionType):
            inner = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
            return value if value is None or len(inner) != 1 else coerce(name, value, inner[0])
        if annotation is bool:
            return _to_bool(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
        if origin in (tuple, list) and isinstance(value, (list, tuple)):
            (inner_type,) = set(typing.get_args(annotation)) - {Ellipsis} or {Any}
            return tuple(coerce(name, item, inner_type) for item in value)
    except (TypeError, ValueError):
        raise ConfigError(f"hyperparameter {name!r} expects {type_name(annotation)}, got {value!r}") from None
    return value


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(value)
    return bool(value)


def check_fields(config: Any, label: str = "") -> None:
    """Raise ConfigError naming the first field whose value is outside its Literal choices or declared range.

    ``label`` prefixes the key in the message (``"source "`` -> ``source iterations must be >= 1, got 0``).
    """
    config_class = type(config)
    types_by_name = field_types(config_class)
    ranges = field_ranges(config_class)
    helps = {f.name: f.metadata.get(HELP_KEY) for f in dataclasses.fields(config_class)}
    for name, annotation in types_by_name.items():
        value = getattr(config, name)
        key = f"{label}{name} ({helps[name]})" if helps.get(name) else f"{label}{name}"
        choices = literal_choices(annotation)
        if choices is not None and value not in choices and not (value is None and _allows_none(annotation)):
            raise ConfigError(f"{key} must be one of {', '.join(str(c) for c in choices)}, got {value!r}")
        reason = range_problem(value, ranges.get(name))
        if reason:
            raise ConfigError(f"{key} {reason}, got {value!r}")


def _allows_none(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def config_from_dict(config_class: type, values: dict[str, Any], *, context: str = "") -> Any:
    """Build a frozen hyperparameter dataclass from a dict: unknown keys raise ConfigError listing the valid ones,
    values are coerced to the declared types, then the config's ``validate`` (schema + cross-field checks) runs."""
    valid = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - valid)
    if unknown:
        where = f" in {context}" if context else ""
        raise ConfigError(f"unknown hyperparameter(s) {', '.join(unknown)}{where}; valid keys for "
                          f"{config_class.__name__}: {', '.join(sorted(valid))}")
    types_by_name = field_types(config_class)
    config = config_class(**{key: coerce(key, value, types_by_name.get(key, Any)) for key, value in values.items()})
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    else:
        check_fields(config)
    return config
