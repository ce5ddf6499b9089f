"""Search spaces: one YAML file per method (``search_spaces/METHOD.yaml``) saying what Ray Tune sweeps.

Format: a mapping from hyperparameter name (the method's config dataclass field, i.e. the paper's name) to an entry::

    # HIAST (paper Table 8): comments explain each hyperparameter
    alpha:    {grid: [0.2, 0.35, 0.5, 0.65, 0.8]}  # every value is tried (a Cartesian product with other grids)
    gamma:    {choice: [2.0, 4.0, 8.0]}            # one value drawn per sample
    lambda_i: {loguniform: [0.1, 3.0]}             # drawn log-uniformly in [low, high], 0 < low < high
    lambda_c: {uniform: [0.0, 0.3]}                # drawn uniformly in [low, high], low < high
    k:        {randint: [4, 10]}                   # an integer drawn in [low, high], BOTH bounds inclusive
    beta:     0.9                                  # a fixed value (not swept)

* A hyperparameter the file does not mention keeps the default of the method's config dataclass.
* A bare list is a fixed value only for list-typed hyperparameters (e.g. ``tuple[int, ...]``); to sweep, write
  ``{grid: [...]}`` or ``{choice: [...]}``.
* Scientific notation works as in YAML 1.2 (``1e-4`` is a float, not the string PyYAML's YAML 1.1 rules would make).
* Values are checked against the config's schema (:mod:`raysel.hyperparameters`): field types (``k: {uniform: ...}``
  on an ``int`` field is an error: use ``randint``), ``Literal`` choices and declared ranges of fixed, grid and choice
  values; cross-field checks of the method's ``validate()`` happen when each trial's config is built.
* ``--set key=value`` (:meth:`SearchSpace.apply_overrides`) replaces one entry; ``value`` is YAML, so
  ``--set alpha=0.5`` fixes a value and ``--set 'alpha={grid: [0.2, 0.5]}'`` sweeps it.

Search algorithms (:meth:`SearchSpace.to_tune`): with ``grid`` and ``random`` search, ``grid`` entries become
``tune.grid_search`` (each sample of the other entries is repeated for every grid point); Optuna cannot take
``grid_search`` (ValueError in Ray Tune), so with ``optuna`` a grid becomes ``tune.choice`` over the same values.
Ray is imported only inside ``to_tune``, so parsing and validation work without it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from raysel.errors import ConfigError, unknown_name_error
from raysel.hyperparameters import Range, field_ranges, field_types, type_name, value_problem

__all__ = [
    "SAMPLED_KINDS", "RANGE_KINDS", "FIXED", "SEARCH_ALGORITHMS", "SearchEntry", "parse_entry", "CheckedSpace",
    "SearchSpace", "load_search_space",
]

SAMPLED_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
RANGE_KINDS = ("uniform", "loguniform", "randint")
FIXED = "fixed"
SEARCH_ALGORITHMS = ("grid", "random", "optuna")  # the --search choices, declared once


# --------------------------------------------------------------------------------------------------------------
# YAML: safe loading, YAML 1.2 floats (1e-4), duplicate keys refused with their line
# --------------------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float and refuses duplicate mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {first: list(resolvers) for first, resolvers in
                                   yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml_scalar(text: str, where: str) -> Any:
    """Parse an override value as YAML (``0.5``, ``true``, ``[1, 2]``, ``{grid: [0.2, 0.5]}``)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: the value is not valid YAML ({problem})") from None


# --------------------------------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchEntry:
    """One hyperparameter's entry: ``kind`` is ``fixed`` or a sampled kind; ``values`` are its arguments.

    grid/choice: the candidate values; uniform/loguniform/randint: ``(low, high)`` (randint inclusive);
    fixed: ``(value,)``.
    """

    name: str
    kind: str
    values: tuple[Any, ...]

    @property
    def swept(self) -> bool:
        return self.kind != FIXED

    @property
    def value(self) -> Any:
        """The fixed value (only for ``fixed`` entries)."""
        if self.kind != FIXED:
            raise ValueError(f"{self.name} is swept ({self.kind}), it has no single value")
        return self.values[0]

    def holds(self, value: Any) -> bool:
        """Whether ``value`` lies in this entry's space: its fixed value, one of its grid or choice values (compared
        with ``==``, as Optuna finds a categorical value), or a number within its range's bounds (both inclusive, as
        Optuna's; a whole number for randint)."""
        if self.kind in (FIXED, "grid", "choice"):
            return any(value == candidate for candidate in self.values)
        low, high = self.values
        return _is_number(value) and low <= value <= high and (self.kind != "randint" or float(value).is_integer())

    def to_tune(self, search: str) -> Any:
        """The Ray Tune domain for this entry under ``search`` (see the module docstring)."""
        from ray import tune  # lazy: Ray takes seconds to import; loading and checking a space needs no Ray

        values = [_plain_copy(value) for value in self.values]
        if self.kind == FIXED:
            return _plain_copy(self.values[0])
        if self.kind == "grid":
            return tune.choice(values) if search == "optuna" else tune.grid_search(values)
        if self.kind == "choice":
            return tune.choice(values)
        if self.kind == "uniform":
            return tune.uniform(*values)
        if self.kind == "loguniform":
            return tune.loguniform(*values)
        if self.kind == "randint":
            low, high = values
            return tune.randint(low, high + 1)  # Tune's upper bound is exclusive; the YAML's is inclusive
        raise AssertionError(self.kind)

    def to_yaml_value(self) -> Any:
        """The entry as written in YAML/JSON (what :func:`parse_entry` reads back)."""
        if self.kind == FIXED:
            return _plain_copy(self.values[0])
        return {self.kind: [_plain_copy(value) for value in self.values]}

    def describe(self) -> str:
        """A short human description, e.g. ``grid [0.2, 0.5]`` or ``randint [4, 10] (inclusive)``."""
        if self.kind == FIXED:
            return f"fixed {self.values[0]!r}"
        suffix = " (inclusive)" if self.kind == "randint" else ""
        return f"{self.kind} [{', '.join(repr(value) for value in self.values)}]{suffix}"


    def frozen(self) -> "SearchEntry":
        """This entry with every list value turned into a tuple (hashable, as a frozen request needs)."""
        return dataclasses.replace(self, values=_frozen_copy(self.values))


def _plain_copy(value: Any) -> Any:
    return [_plain_copy(item) for item in value] if isinstance(value, (list, tuple)) else value


def _frozen_copy(value: Any) -> Any:
    return tuple(_frozen_copy(item) for item in value) if isinstance(value, (list, tuple)) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_kind(annotation: Any) -> str | None:
    """``int``/``float`` for numeric fields (Optional unwrapped), else None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
        return _numeric_kind(inner[0]) if len(inner) == 1 else None
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    return None


def _is_list_type(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_list_type(argument) for argument in typing.get_args(annotation))
    return origin in (tuple, list) or annotation in (tuple, list)


def parse_entry(name: str, raw: Any, annotation: Any = None, *, where: str,
                value_range: Range | None = None) -> SearchEntry:
    """Turn one YAML entry into a :class:`SearchEntry`, or raise ConfigError naming ``where`` and the key; values are
    checked against the field's type, Literal choices and declared range (:mod:`raysel.hyperparameters`)."""

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{where}: hyperparameter {name!r}: {message}")

    known_types = annotation is not None
    if isinstance(raw, dict):
        if len(raw) != 1 or next(iter(raw)) not in SAMPLED_KINDS:
            raise fail(f"an entry must be a plain value or a mapping with exactly one of "
                       f"{', '.join(SAMPLED_KINDS)}; got {raw!r}")
        kind, arguments = next(iter(raw.items()))
        if not isinstance(arguments, list) or not arguments:
            raise fail(f"{kind} needs a non-empty list, got {arguments!r}")
        if kind in RANGE_KINDS:
            entry = _parse_range(kind, arguments, annotation, fail)
        else:
            for value in arguments:
                reason = value_problem(value, annotation, value_range)
                if reason:
                    raise fail(f"{kind} value {value!r}: {type_name(annotation)} field {reason}")
            entry = SearchEntry(name, kind, tuple(_plain_copy(value) for value in arguments))
        return dataclasses.replace(entry, name=name)
    if isinstance(raw, list) and known_types and not _is_list_type(annotation):
        raise fail(f"a bare list is a fixed value only for list-typed hyperparameters; to sweep it write "
                   f"{{grid: {raw}}} or {{choice: {raw}}}")
    if raw is None and type(None) not in typing.get_args(annotation):
        raise fail("no value given (write a value, or remove the line to keep the default)")
    reason = value_problem(raw, annotation, value_range)
    if reason:
        raise fail(f"value {raw!r}: {type_name(annotation)} field {reason}")
    return SearchEntry(name, FIXED, (_plain_copy(raw),))


def _parse_range(kind: str, arguments: list[Any], annotation: Any, fail: Any) -> SearchEntry:
    """uniform / loguniform / randint: two numeric bounds, checked against each other and the field type."""
    if len(arguments) != 2 or not all(_is_number(value) for value in arguments):
        raise fail(f"{kind} needs [low, high] (two numbers), got {arguments!r}")
    low, high = arguments
    numeric = _numeric_kind(annotation)
    if annotation is not None and numeric is None:
        raise fail(f"{kind} needs a numeric hyperparameter, but it is {type_name(annotation)}; use grid or choice")
    if kind == "randint":
        if not all(float(value).is_integer() for value in arguments) or low > high:
            raise fail(f"randint needs integer bounds [low, high] with low <= high (both inclusive), got {arguments!r}")
        return SearchEntry("", kind, (int(low), int(high)))
    if numeric == "int":
        raise fail(f"{kind} draws floats but this hyperparameter is an integer; use randint (or grid/choice)")
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise fail(f"{kind} needs finite bounds [low, high] with low < high, got {arguments!r} "
                   f"(for a single value write it without {kind})")
    if kind == "loguniform" and low <= 0:
        raise fail(f"loguniform needs 0 < low < high, got {arguments!r}")
    return SearchEntry("", kind, (float(low), float(high)))


# --------------------------------------------------------------------------------------------------------------
# The search space
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SearchSpace:
    """A method's parsed search space: entries by hyperparameter name, plus what is needed to validate overrides."""

    method: str
    entries: dict[str, SearchEntry]
    valid_names: tuple[str, ...]
    field_types: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    field_ranges: dict[str, Range] = field(default_factory=dict)
    # Hyperparameter names of other methods -> those methods, so a key of the wrong method is named as such.
    owners_elsewhere: dict[str, tuple[str, ...]] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # the --set texts applied so far, in order

    def _unknown(self, name: str, where: str) -> ConfigError:
        """ConfigError for a key this method lacks: whose key it is, else near misses; always the valid keys."""
        listing = f"valid keys for {self.method}"
        owners = self.owners_elsewhere.get(name)
        if owners:
            return ConfigError(f"{where}: {name!r} is a hyperparameter of {', '.join(owners)}, not of {self.method} "
                               f"({listing}: {', '.join(self.valid_names)})")
        return ConfigError(f"{where}: {unknown_name_error('hyperparameter', name, self.valid_names, listing)}")

    def set_entry(self, name: str, raw: Any, where: str) -> SearchEntry:
        """Parse and store one entry (replacing any previous one); unknown names raise ConfigError."""
        if name not in self.valid_names:
            raise self._unknown(name, where)
        entry = parse_entry(name, raw, self.field_types.get(name), where=where,
                            value_range=self.field_ranges.get(name))
        self.entries[name] = entry
        return entry

    def apply_overrides(self, overrides: Iterable[str] | None) -> "SearchSpace":
        """Apply ``--set key=value`` overrides in order (value parsed as YAML); returns self."""
        for text in overrides or ():
            where = f"--set {text}"
            name, separator, value_text = text.partition("=")
            name = name.strip()
            if not separator or not name:
                raise ConfigError(f"{where}: expected key=value, e.g. --set alpha=0.5 or --set 'alpha={{grid: [0.2, 0.5]}}'")
            if not value_text.strip():
                raise ConfigError(f"{where}: no value after '='")
            self.set_entry(name, _parse_yaml_scalar(value_text, where), where)
            self.overrides.append(text)
        return self

    def checked(self) -> "CheckedSpace":
        """The space as it stands, frozen: what a sweep request keeps (entries, file, overrides applied)."""
        return CheckedSpace(entries=tuple(entry.frozen() for entry in self.entries.values()),
                            path=str(self.path) if self.path is not None else None, overrides=tuple(self.overrides))

    def to_tune(self, search: str = "grid") -> dict[str, Any]:
        """The Ray Tune ``param_space`` of the hyperparameters (see :meth:`CheckedSpace.to_tune`)."""
        return self.checked().to_tune(search)

    def num_grid_points(self) -> int:
        """How many grid combinations a grid/random search runs per sample (1 when nothing is gridded)."""
        return self.checked().num_grid_points()

    def swept_names(self) -> list[str]:
        """Names of the entries that vary across trials."""
        return list(self.checked().swept_names())

    def fixed_values(self) -> dict[str, Any]:
        """The entries fixed by the file or overrides (hyperparameters not mentioned keep dataclass defaults)."""
        return {name: entry.value for name, entry in self.entries.items() if not entry.swept}

    def candidate_values(self) -> Iterator[tuple[str, Any]]:
        """``(name, value)`` for every candidate of every swept entry (see :meth:`CheckedSpace.candidate_values`)."""
        return self.checked().candidate_values()

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready form (same format as the file); :meth:`from_dict` reads it back."""
        return self.checked().to_dict()

    def describe(self) -> list[str]:
        """One line per entry, for sweep summaries."""
        return self.checked().describe()

    @classmethod
    def empty(cls, method: Any, path: Path | None = None,
              owners_elsewhere: Mapping[str, tuple[str, ...]] | None = None) -> "SearchSpace":
        """A space with no entries (every hyperparameter at its default) for ``method``; ``owners_elsewhere`` maps
        other methods' hyperparameter names to those methods (for the message naming a key of the wrong method)."""
        config_class = getattr(method, "config_class", None)
        return cls(method=getattr(method, "name", str(method)), entries={},
                   valid_names=tuple(method.hyperparameter_names()), field_types=field_types(config_class), path=path,
                   field_ranges=field_ranges(config_class), owners_elsewhere=dict(owners_elsewhere or {}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], method: Any, *, where: str = "saved search space",
                  owners_elsewhere: Mapping[str, tuple[str, ...]] | None = None) -> "SearchSpace":
        """Build and validate a space from a mapping in the file's format (:meth:`to_dict` output, a study entry)."""
        space = cls.empty(method, owners_elsewhere=owners_elsewhere)
        for name, raw in data.items():
            space.set_entry(name, raw, where)
        return space


@dataclass(frozen=True)
class CheckedSpace:
    """A validated search space as a sweep request keeps it: entries in order, the file and the ``--set`` texts
    they came from. Frozen, and built only from a :class:`SearchSpace` (which validated it) or from a saved one."""

    entries: tuple[SearchEntry, ...] = ()
    path: str | None = None  # the YAML file, None for a space given as a mapping
    overrides: tuple[str, ...] = ()  # the --set texts applied after the file, in order

    def to_tune(self, search: str = "grid") -> dict[str, Any]:
        """The Ray Tune ``param_space`` of the hyperparameters (grid -> grid_search, or choice for optuna)."""
        if search not in SEARCH_ALGORITHMS:
            raise ConfigError(f"unknown search algorithm {search!r}; valid: {', '.join(SEARCH_ALGORITHMS)}")
        return {entry.name: entry.to_tune(search) for entry in self.entries}

    def num_grid_points(self) -> int:
        """How many grid combinations a grid/random search runs per sample (1 when nothing is gridded)."""
        return math.prod(len(entry.values) for entry in self.entries if entry.kind == "grid")

    def swept_names(self) -> tuple[str, ...]:
        """Names of the entries that vary across trials."""
        return tuple(entry.name for entry in self.entries if entry.swept)

    def fixed_values(self) -> dict[str, Any]:
        """The entries fixed by the file or overrides (hyperparameters not mentioned keep dataclass defaults)."""
        return {entry.name: entry.value for entry in self.entries if not entry.swept}

    def candidate_values(self) -> Iterator[tuple[str, Any]]:
        """``(name, value)`` for every candidate of every swept entry: grid/choice values and range ends."""
        for entry in self.entries:
            if entry.swept:
                yield from ((entry.name, value) for value in entry.values)

    def to_dict(self) -> dict[str, Any]:
        """The entries in the file's format (JSON/YAML-ready); :meth:`from_dict` reads it back."""
        return {entry.name: entry.to_yaml_value() for entry in self.entries}

    def describe(self) -> list[str]:
        """One line per entry, for sweep summaries."""
        width = max((len(entry.name) for entry in self.entries), default=0)
        return [f"{entry.name:<{width}}  {entry.describe()}" for entry in self.entries]

    @classmethod
    def from_dict(cls, entries: Mapping[str, Any], path: str | None = None,
                  overrides: Iterable[str] = ()) -> "CheckedSpace":
        """A space saved by :meth:`to_dict` (its sweep checked it): read back as written, without the method's schema,
        so reading a sweep needs no method module."""
        return cls(entries=tuple(saved_entry(name, raw) for name, raw in entries.items()), path=path,
                   overrides=tuple(overrides))


def saved_entry(name: str, raw: Any) -> SearchEntry:
    """One entry written by :meth:`SearchEntry.to_yaml_value`, read back (frozen); a mangled one is a ConfigError."""
    if isinstance(raw, dict):
        if len(raw) != 1 or next(iter(raw)) not in SAMPLED_KINDS or not isinstance(next(iter(raw.values())), list):
            raise ConfigError(f"saved search space: hyperparameter {name!r}: cannot read entry {raw!r}")
        kind, values = next(iter(raw.items()))
        return SearchEntry(name, kind, _frozen_copy(values))
    return SearchEntry(name, FIXED, (_frozen_copy(raw),))


def load_search_space(path: Path | str, method: Any, *,
                      owners_elsewhere: Mapping[str, tuple[str, ...]] | None = None) -> SearchSpace:
    """Read and validate ``path`` for ``method`` (a registry Method); errors name the file, line and key (and the
    method a key belongs to, given ``owners_elsewhere``: see :meth:`SearchSpace.empty`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"search space file {path} does not exist (one YAML per method belongs in search_spaces/; "
                          f"pass another with --space)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read search space file {path}: {getattr(error, 'strerror', None) or error}") from None
    space = SearchSpace.empty(method, path, owners_elsewhere)
    for name, raw, line in _read_entries(text, path):
        space.set_entry(name, raw, f"{path}, line {line}")
    return space


def _read_entries(text: str, path: Path) -> list[tuple[str, Any, int]]:
    """(name, raw value, line) for each top-level key of the YAML document."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return []
        if not isinstance(root, yaml.MappingNode):
            raise ConfigError(f"{path}, line {root.start_mark.line + 1}: a search space must be a mapping "
                              f"'hyperparameter: entry', not a {root.id}")
        entries: list[tuple[str, Any, int]] = []
        seen: set[str] = set()
        for key_node, value_node in root.value:
            line = key_node.start_mark.line + 1
            name = loader.construct_object(key_node, deep=True)
            if not isinstance(name, str):
                raise ConfigError(f"{path}, line {line}: hyperparameter names must be strings, got {name!r}")
            if name in seen:
                raise ConfigError(f"{path}, line {line}: hyperparameter {name!r} appears twice")
            seen.add(name)
            entries.append((name, loader.construct_object(value_node, deep=True), line))
        return entries
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    finally:
        loader.dispose()
