"""The one place a sweep is checked: :func:`build_request` turns the user's options into a :class:`SweepRequest`.

Every option is validated and every default filled here, once, before Ray starts and before anything is written:
the method, the dataset family and its domains, the search space with its ``--set`` overrides (each value against
the method's schema, each candidate against the method's own cross-field ``validate()``), the search algorithm,
scheduler and objective, the selectors, the resources and the GPU switches. A mistake is one
:class:`~raysel.errors.ConfigError` naming the option, the valid choices and a near miss where there is one.

The command line (:mod:`raysel.sweep`), Python callers and study files all come through :func:`build_request`;
``--resume`` reads the request a sweep saved (:func:`resume_request`). Method modules import torch, so this module
does too; reading a saved request (:mod:`raysel.request`) does not.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from raysel import data as data_module
from raysel.acceleration_switches import SWITCHES, AccelerationSwitches
from raysel.conventions import default_results_root
from raysel.errors import ConfigError, UserError, unknown_name_error
from raysel.hyperparameters import config_from_dict
from raysel.models import model_names
from raysel.registry import Method, get_method, method_names
from raysel.request import (CONFIDENCE_OBJECTIVE, EXECUTORS, SCHEDULERS, SEARCH_ALGORITHMS, DataChoice, Resources,
                            SearchPlan, SweepOptions, SweepRequest, latest_sweep_id, load_request)
from raysel.search_space import CheckedSpace, SearchSpace, load_search_space
from raysel.selection.model_scores import TASK_TRIAL_SCORES, TRIAL_SCORE_NAMES
from raysel.selection.selectors import SELECTORS, TRIAL_SCORE_SELECTORS, selector_names

__all__ = ["build_request", "resume_request", "checked_space", "check_candidates", "default_point", "default_dataset",
           "default_targets", "option_name"]

T = TypeVar("T")
OPTION_NAMES = {"overrides": "--set", "selectors": "--selector"}  # fields whose option is not --<field>


def _results_root(options: SweepOptions) -> Path:
    """The sweep's result store: the one given, else ``$RAYSEL_RESULTS``, else ``./results`` (as every command)."""
    return Path(options.results).expanduser() if options.results is not None else default_results_root()


def option_name(field: str) -> str:
    """The command-line option of a :class:`SweepOptions` field (``num_samples`` -> ``--num-samples``)."""
    return OPTION_NAMES.get(field, f"--{field.replace('_', '-')}")


def build_request(options: SweepOptions | Mapping[str, Any] | None = None, /, **keywords: Any) -> SweepRequest:
    """Check a sweep's options and fill their defaults: the one way to make a :class:`SweepRequest`.

    Args:
        options: a :class:`SweepOptions`, or a plain mapping of its fields (a study file's entry); None with
            ``keywords`` only.
        **keywords: :class:`SweepOptions` fields (``method=``, ``target=``, ``overrides=``, ``num_samples=``, ...),
            on top of ``options``.

    Returns:
        The frozen request: absolute results folder and data root, canonical domain names, the checked search space,
        the resolved objective and selectors, and a sweep id (``METHOD-YYYYmmdd-HHMMSS`` unless ``name`` is given).

    Raises:
        ConfigError: one line naming the option at fault, its valid choices and a near miss where there is one.

    Example:
        >>> request = build_request(method="source_only", data="digits", target=["noisy_digits"],
        ...                         overrides=["iterations=2"], results="/tmp/raysel-doc", name="doc")
        >>> request.data.targets, request.search.algorithm, request.expected_trials()
        (('noisy_digits',), 'grid', 3)
        >>> build_request(method="source_only", selectors=["fmiuo"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        raysel.errors.ConfigError: --selector: unknown selector 'fmiuo'; did you mean 'fmiou'? ...
    """
    options = _merged_options(options, keywords)
    method = get_method(options.method)
    family = _option(option_name("data"), lambda: data_module.get_family(options.data or default_dataset(method)))
    _option(f"--data {family.name}", lambda: method.check_task(family.task))
    space = checked_space(method, options.space, _names("overrides", options.overrides))
    check_candidates(method, space)
    data = _data_choice(family, options)
    search = _search_plan(options, data.targets, family.task)
    if search.include_default:
        default_point(method, space, search.algorithm)  # refuses a default configuration no trial could run
    return SweepRequest(method=method.name, sweep_id=_sweep_id(method, options.name),
                        results=str(_results_root(options).resolve()), space=space, data=data,
                        search=search, resources=_resources(options),
                        acceleration=_acceleration(options), selectors=_selectors(method, options.selectors),
                        max_failures=_whole("max_failures", options.max_failures, minimum=0),
                        mlflow_uri=options.mlflow or None,
                        progress_interval_s=_positive("progress_interval", options.progress_interval))


def resume_request(options: SweepOptions | Mapping[str, Any] | None = None, /, **keywords: Any) -> SweepRequest:
    """The request of the sweep ``--resume`` continues, read back from its ``sweep.json``.

    ``name`` picks the sweep (default: the latest sweep of ``method`` under ``results``); every other option is the
    saved one except ``progress_interval`` and ``mlflow``, which belong to this invocation.
    """
    options = _merged_options(options, keywords)
    method = get_method(options.method)
    results = _results_root(options)
    sweep_id = options.name or latest_sweep_id(results, method.name)
    if sweep_id is None:
        raise UserError(f"--resume: no previous {method.name} sweep under {results / 'sweeps'}")
    try:
        saved = load_request(results, sweep_id)
    except UserError as error:
        raise UserError(f"--resume: {error}") from None
    if saved.method != method.name:
        raise ConfigError(f"--resume: sweep {sweep_id!r} is a {saved.method} sweep, not {method.name}")
    return dataclasses.replace(saved, mlflow_uri=options.mlflow or None,
                               progress_interval_s=_positive("progress_interval", options.progress_interval))


def default_dataset(method: Method) -> str:
    """The embedded family of the method's task: ``street_scenes`` for segmentation methods, else ``digits``."""
    return "street_scenes" if "segmentation" in method.tasks else "digits"


def default_targets(family: data_module.DatasetFamily) -> tuple[str, ...]:
    """The targets a sweep takes when none is given: the family's first development target."""
    return tuple(family.default_targets[:1])


# --------------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------------


def _merged_options(options: SweepOptions | Mapping[str, Any] | None, keywords: Mapping[str, Any]) -> SweepOptions:
    """One :class:`SweepOptions` from options, a mapping and/or keywords (keywords win)."""
    if isinstance(options, SweepOptions):
        base = {field.name: getattr(options, field.name) for field in dataclasses.fields(SweepOptions)}
    else:
        base = dict(options or {})
    merged = {**base, **keywords}
    if "method" not in merged:
        raise ConfigError("a sweep needs a method: pass method=NAME (registered methods: "
                          f"{', '.join(method_names())})")
    return SweepOptions.from_mapping(merged)


def _option(option: str, check: Callable[[], T]) -> T:
    """``check()``, its ConfigError prefixed with the option it is about."""
    try:
        return check()
    except ConfigError as error:
        raise ConfigError(f"{option}: {error}") from None


def _names(field: str, value: Any) -> tuple[str, ...]:
    """A name or several (a list from Python, a tuple from the command line) as a tuple of strings."""
    names = (value,) if isinstance(value, str) else tuple(value or ())
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"{option_name(field)} takes names, got {name!r}")
    return names


def _whole(field: str, value: Any, *, minimum: int) -> int:
    """An integer option of at least ``minimum``, or a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{option_name(field)} must be an integer >= {minimum}, got {value!r}")
    return value


def _positive(field: str, value: Any, *, zero_allowed: bool = False) -> float:
    """A positive number (or 0 with ``zero_allowed``) as a float, or a ConfigError naming the option."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or math.isnan(value) or value < 0 or (value == 0 and not zero_allowed):
        bound = "0 or positive" if zero_allowed else "positive"
        raise ConfigError(f"{option_name(field)} must be {bound}, got {value!r}")
    return float(value)


def _switch(field: str, value: Any) -> bool:
    """An on/off option (a flag on the command line, ``true``/``false`` in a study file), or a ConfigError."""
    if not isinstance(value, bool):
        raise ConfigError(f"{option_name(field)} is on or off (true or false), got {value!r}")
    return value


def _choice(field: str, what: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` when it is one of ``choices``, else a ConfigError naming the option, the choices and a near miss."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{option_name(field)}: {unknown_name_error(what, value, choices)}")
    return value


# --------------------------------------------------------------------------------------------------------------
# The search space
# --------------------------------------------------------------------------------------------------------------


def checked_space(method: Method, space: str | Path | Mapping[str, Any] | None,
                  overrides: tuple[str, ...]) -> CheckedSpace:
    """The method's space (its YAML, another file, or a mapping in the file's format) with ``overrides`` applied,
    every value checked against the method's schema; a key of another method says whose it is."""
    owners = _owners_elsewhere(method)
    if isinstance(space, Mapping):
        loaded = SearchSpace.from_dict(space, method, where="space", owners_elsewhere=owners)
    else:
        path = Path(space).expanduser().absolute() if space is not None else method.search_space_path
        loaded = load_search_space(path, method, owners_elsewhere=owners)
    return loaded.apply_overrides(overrides).checked()


def _owners_elsewhere(method: Method) -> dict[str, tuple[str, ...]]:
    """Other methods' hyperparameter names (that ``method`` lacks) -> the methods that have them."""
    own = set(method.hyperparameter_names())
    owners: dict[str, list[str]] = {}
    for other in method_names():
        for name in get_method(other).hyperparameter_names():
            if other != method.name and name not in own:
                owners.setdefault(name, []).append(other)
    return {name: tuple(methods) for name, methods in owners.items()}


def check_candidates(method: Method, space: CheckedSpace) -> None:
    """Build the method's config from the space's fixed values, and with each swept candidate in turn (grid and
    choice values, range ends): the method's own cross-field ``validate()`` refuses a sweep no trial could run."""
    fixed = space.fixed_values()
    _candidate_config(method, space, fixed, "its fixed values")
    for name, value in space.candidate_values():
        _candidate_config(method, space, {**fixed, name: value}, f"{name}={value!r} (the rest fixed)")


def default_point(method: Method, space: CheckedSpace, algorithm: str = "grid") -> dict[str, Any]:
    """The method's default configuration as one point of ``space``: each swept hyperparameter at the method's
    default, for Tune's ``points_to_evaluate`` (``--include-default``).

    The defaults are ``method.default_config()``'s, the same ones the guarded decision recognises the default
    configuration's candidate by (:func:`raysel.selection.guarded.default_trial_ids`), so the trial this point runs
    is the one the guard falls back to. The space's fixed values stay as they are (Tune keeps them), and the point
    with them must be a valid configuration.

    Args:
        method: the sweep's method.
        space: the checked space; its swept hyperparameters are the point's keys.
        algorithm: the search algorithm (``SEARCH_ALGORITHMS``). Under ``grid`` and ``random``, Tune's
            BasicVariantGenerator evaluates a point as given, also a value outside the space (Ray 2.60 only logs a
            warning); Optuna cannot (a categorical value not among the choices fails when the trial is asked for, a
            number outside a range is recorded outside its distribution), so there the point must lie in the space.

    Returns:
        swept hyperparameter -> its default, in the space's order (empty when nothing is swept).

    Raises:
        ConfigError: one line naming ``--include-default``, the hyperparameter, its default and what is allowed,
            when the method has no default for a swept hyperparameter (a default of None is decided at run time, so
            no stored trial can equal it), when the default lies outside the space under Optuna, or when the
            defaults with the space's fixed values are no valid configuration.

    Example:
        >>> from raysel.registry import get_method
        >>> space = checked_space(get_method("hiast"), None, ("alpha={grid: [0.3, 0.7]}", "gamma={choice: [4.0, 16.0]}",
        ...                                                  "k=14", "lambda_cst=0.5", "lambda_i=1.0"))
        >>> default_point(get_method("hiast"), space)
        {'alpha': 0.5, 'gamma': 8.0}
        >>> default_point(get_method("hiast"), space, "optuna")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        raysel.errors.ConfigError: --include-default: hyperparameter 'alpha' has the default 0.5, which is not ...
    """
    defaults = method.default_config()
    point: dict[str, Any] = {}
    for entry in space.entries:
        if not entry.swept:
            continue
        value = getattr(defaults, entry.name, None)
        if value is None:
            raise ConfigError(f"--include-default: {method.name} has no default for the swept hyperparameter "
                              f"{entry.name!r} (its default is None: the method decides it at run time, so no trial "
                              f"can be its default configuration); fix it with --set {entry.name}=VALUE, or sweep "
                              "without --include-default")
        if algorithm == "optuna" and not entry.holds(value):
            raise ConfigError(f"--include-default: hyperparameter {entry.name!r} has the default {value!r}, which is "
                              f"not inside its space ({entry.describe()}), and --search optuna evaluates only values "
                              f"inside the space: add {value!r} to the space, or use --search grid or random (which "
                              "run it as given)")
        point[entry.name] = value
    _candidate_config(method, space, {**space.fixed_values(), **point},
                      f"--include-default's default configuration ({_listing(point)}, the rest fixed)")
    return point


def _listing(values: Mapping[str, Any]) -> str:
    """``alpha=0.5, gamma=8.0``: hyperparameter values for a one-line message."""
    return ", ".join(f"{name}={value!r}" for name, value in values.items()) or "nothing swept"


def _candidate_config(method: Method, space: CheckedSpace, values: dict[str, Any], what: str) -> None:
    """``config_from_dict`` of one candidate; its ConfigError names the space and the candidate."""
    try:
        config_from_dict(method.config_class, values)
    except ConfigError as error:
        origin = f"search space {space.path}" if space.path else "search space"
        sets = f" with --set {', '.join(space.overrides)}" if space.overrides else ""
        raise ConfigError(f"{origin}{sets}: {what} is not a valid {method.name} configuration: {error}") from None


# --------------------------------------------------------------------------------------------------------------
# Data, search, resources, selectors, the sweep id
# --------------------------------------------------------------------------------------------------------------


def _data_choice(family: data_module.DatasetFamily, options: SweepOptions) -> DataChoice:
    """Family, absolute data root, canonical source and targets, model, image size and selection subset size."""
    source = _option("--source", lambda: family.resolve_domain(options.source or family.default_source))
    given = _names("target", options.target)
    targets = tuple(_option("--target", lambda: family.resolve_domain(target)) for target in given)
    targets = targets or default_targets(family)
    repeated = sorted({target for target in targets if targets.count(target) > 1})
    if repeated:
        raise ConfigError(f"--target lists {', '.join(repeated)} more than once")
    if options.model is not None:
        _choice("model", f"{family.task} model", options.model, model_names(family.task))
    root = Path(options.data_root) if options.data_root is not None else data_module.default_data_root()
    return DataChoice(family=family.name, root=str(root.expanduser().resolve()), source=source, targets=targets,
                      model=options.model, image_size=_image_size(options.image_size),
                      selection_size=_whole("selection_size", options.selection_size, minimum=1))


def _image_size(value: Any) -> tuple[int, int] | None:
    """``(height, width)`` of two positive integers, or None for the dataset's native size."""
    if value is None:
        return None
    if (not isinstance(value, tuple) or len(value) != 2
            or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in value)):
        raise ConfigError(f"--image-size takes two positive integers H W, got {value!r}")
    return value


def _search_plan(options: SweepOptions, targets: tuple[str, ...], task: str) -> SearchPlan:
    """The search algorithm, its budget and seed, the scheduler and the label-free objective they read."""
    algorithm = _choice("search", "search algorithm", options.search, SEARCH_ALGORITHMS)
    scheduler = _choice("scheduler", "scheduler", options.scheduler, SCHEDULERS)
    objective = _objective(options.objective, scheduler, task)
    if algorithm == "optuna" and len(targets) > 1:
        raise ConfigError(f"--search optuna tunes one target at a time, and --target lists {len(targets)} "
                          f"({', '.join(targets)}): pass one of them, or --search grid or random to sweep them all")
    max_concurrent = options.max_concurrent
    return SearchPlan(algorithm=algorithm, num_samples=_whole("num_samples", options.num_samples, minimum=1),
                      seed=_whole("seed", options.seed, minimum=0),
                      startup_trials=_whole("startup_trials", options.startup_trials, minimum=1),
                      max_concurrent=None if max_concurrent is None else _whole("max_concurrent", max_concurrent,
                                                                                minimum=1),
                      scheduler=scheduler, objective=objective,
                      report_score=objective if scheduler == "asha" and objective in TRIAL_SCORE_NAMES else None,
                      include_default=_switch("include_default", options.include_default))


def _objective(objective: Any, scheduler: str, task: str) -> str:
    """The label-free score Optuna maximises and ASHA compares: the confidence or a trial-scored selector whose score
    the trials of ``task`` compute (:data:`~raysel.selection.model_scores.TASK_TRIAL_SCORES`)."""
    task_scores = TASK_TRIAL_SCORES[task]
    objectives = (CONFIDENCE_OBJECTIVE, *(name for name in TRIAL_SCORE_SELECTORS
                                          if name not in TRIAL_SCORE_NAMES or name in task_scores))
    if objective in SELECTORS:
        raise ConfigError(f"--objective {objective} is a sweep-level selector (it compares the candidates after the "
                          f"sweep), not a score one trial can report: use one of {', '.join(objectives)}")
    if objective in TRIAL_SCORE_NAMES and objective not in task_scores:
        # mixval on segmentation, classmix_consistency on classification: no trial would ever report it.
        others = [other for other, names in TASK_TRIAL_SCORES.items() if objective in names]
        own = [name for name in task_scores if not all(name in names for names in TASK_TRIAL_SCORES.values())]
        near = f"did you mean {' or '.join(repr(name) for name in own)}? " if own else ""
        raise ConfigError(f"--objective: {task} trials do not compute {objective!r} (it exists for "
                          f"{' and '.join(others)} only); {near}(valid choices for {task}: {', '.join(objectives)})")
    _choice("objective", "objective", objective, objectives)
    every_report = (CONFIDENCE_OBJECTIVE, *task_scores)
    if scheduler == "asha" and objective not in every_report:
        # merge_quality comes out of HDRQ's merge, once per trial: there is nothing to compare at ASHA's rungs.
        raise ConfigError(f"--scheduler asha compares trials at every report, and {objective!r} exists only once a "
                          f"trial has ended: use --scheduler fifo, or asha with --objective one of "
                          f"{', '.join(every_report)}")
    return objective


def _resources(options: SweepOptions) -> Resources:
    """Per-trial workers, CPUs and GPUs (fractions allowed) and the executor running them."""
    workers = _whole("workers", options.workers, minimum=1)
    executor = _choice("executor", "executor", options.executor, EXECUTORS)
    if executor == "direct" and workers > 1:
        raise ConfigError("--executor direct runs one worker; use --executor train (or auto) with --workers > 1")
    return Resources(workers=workers, cpus_per_worker=_positive("cpus_per_worker", options.cpus_per_worker),
                     gpus_per_worker=_positive("gpus_per_worker", options.gpus_per_worker, zero_allowed=True),
                     executor=executor)


def _acceleration(options: SweepOptions) -> AccelerationSwitches:
    """The GPU switches (``auto`` decided per device when a trial starts)."""
    switches = AccelerationSwitches(amp=options.amp, loader_workers=options.loader_workers,
                                    **{name: getattr(options, name) for name in SWITCHES})
    switches.validate()
    return switches


def _selectors(method: Method, selectors: Any) -> tuple[str, ...]:
    """The selectors in decision order (default: the method's); an unknown one suggests the near miss."""
    names = tuple(dict.fromkeys(_names("selectors", selectors))) or method.default_selectors
    for name in names:
        _choice("selectors", "selector", name, selector_names())
    return names


def _sweep_id(method: Method, name: Any) -> str:
    """``name``, or ``METHOD-YYYYmmdd-HHMMSS``; an id that cannot be a folder and a store key is refused."""
    sweep_id = name or f"{method.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    if not isinstance(sweep_id, str) or "__" in sweep_id or "/" in sweep_id or "\\" in sweep_id \
            or sweep_id.startswith("."):
        raise ConfigError(f"--name {sweep_id!r}: a sweep id may not contain '__', '/' or '\\' or start with '.'")
    return sweep_id
