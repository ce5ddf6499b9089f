"""Benchmarks are outside users of raysel (issue 27): they reach only what raysel exports in ``__all__``.

import-linter (pyproject.toml) keeps benchmarks off ``tests``, off raysel's command-line entry modules and off each
other; what it cannot express is checked here by reading every ``benchmarks/*.py`` with ``ast``: each
``from raysel.X import name`` and each ``module.name`` on an imported raysel module names something in
``raysel.X.__all__`` (read from the source when it is a literal list, else from the imported module), never a
private ``_name``, and comes from the package when the package re-exports it. The last test imports every raysel module that declares
``__all__`` and checks each entry exists.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
PACKAGE = "raysel"
# import-linter's forbidden contract keeps benchmarks off these (run as commands, never imported); not checked here.
CLI_MODULES = frozenset(f"raysel.{name}" for name in ("cli", "sweep", "select", "report", "query", "submit", "status",
                                                     "study"))


@dataclass(frozen=True)
class Use:
    """One raysel name a benchmark reaches: ``name`` looked up in module ``module`` on line ``line``."""

    module: str
    name: str
    line: int


def module_file(module: str) -> Path | None:
    """The source file of a raysel module or package, None when ``module`` is not one."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def exported(module: str) -> list[str] | None:
    """The module's top-level ``__all__`` (None when it declares none): parsed when it is a literal, so most checks
    import nothing; computed ones (``raysel.selection``'s) are read from the imported module."""
    path = module_file(module)
    tree = ast.parse(path.read_text(), filename=str(path)) if path else ast.Module(body=[], type_ignores=[])
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        if any(isinstance(target, ast.Name) and target.id == "__all__" for target in targets):
            try:
                return list(ast.literal_eval(node.value))
            except ValueError:
                return list(importlib.import_module(module).__all__)
    return None


def _is_raysel(module: str | None) -> bool:
    return module is not None and (module == PACKAGE or module.startswith(PACKAGE + "."))


def _module_aliases(tree: ast.AST) -> dict[str, str]:
    """Local names bound to raysel modules anywhere in the file (``import raysel.x as y``, ``from raysel import x``)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_raysel(alias.name):
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else PACKAGE
        elif isinstance(node, ast.ImportFrom) and not node.level and _is_raysel(node.module):
            for alias in node.names:
                if module_file(f"{node.module}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None when the chain does not start at a plain name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    return [node.id, *parts] if isinstance(node, ast.Name) else None


def raysel_uses(source: str, filename: str = "<benchmark>") -> list[Use]:
    """Every raysel name the source reaches: imported names, submodules, and attributes of imported modules."""
    tree = ast.parse(source, filename=filename)
    aliases = _module_aliases(tree)
    uses: set[Use] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and _is_raysel(node.module):
            uses.update(Use(node.module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                uses.update(Use(".".join(parts[:i]), parts[i], node.lineno) for i in range(1, len(parts))
                            if _is_raysel(alias.name))
        elif isinstance(node, ast.Attribute) and (parts := _dotted(node)) and parts[0] in aliases:
            module = aliases[parts[0]]
            for part in parts[1:]:
                uses.add(Use(module, part, node.lineno))
                if not module_file(f"{module}.{part}"):
                    break
                module = f"{module}.{part}"
    return sorted(uses, key=lambda use: (use.line, use.module, use.name))


def violations(source: str, filename: str = "<benchmark>") -> list[str]:
    """What in ``source`` reaches past raysel's exported API, as ``file:line: message``."""
    found = []
    for use in raysel_uses(source, filename):
        where, full = f"{filename}:{use.line}", f"{use.module}.{use.name}"
        parent = use.module.rpartition(".")[0]
        if use.module in CLI_MODULES or full in CLI_MODULES:
            continue
        if use.name == "*":
            found.append(f"{where}: star import from {use.module}")
        elif use.name.startswith("_"):
            found.append(f"{where}: {full} is private")
        elif module_file(full):
            continue  # a public submodule: the names used on it are checked one by one
        elif _is_raysel(parent) and use.name in (exported(parent) or []):
            found.append(f"{where}: import {use.name} from {parent}, which exports it")
        elif (names := exported(use.module)) is None:
            found.append(f"{where}: {use.module} declares no __all__ (needed for {use.name})")
        elif use.name not in names:
            found.append(f"{where}: {full} is not in {use.module}.__all__")
    return found


def test_benchmarks_use_only_what_raysel_exports() -> None:
    found = [entry for path in sorted(BENCHMARKS.glob("*.py"))
             for entry in violations(path.read_text(), path.relative_to(ROOT).as_posix())]
    assert not found, "\n".join(found)


def test_the_checks_can_fail() -> None:
    """Private names, names outside ``__all__``, module attributes, star imports and bypassed packages are flagged."""
    source = """
from raysel.metrics import miou, _not_public, not_exported
from raysel.quant.merge_quality import merge_quality
from raysel.store import *
from raysel import store
import raysel.data.digits
import raysel.selection.voting as voting
from raysel.sweep import main

store.load, store._key_of, store.missing
raysel.data.digits.DigitsConfig.small(), raysel.data.digits.render_stroke
voting._hidden
"""
    assert violations(source, "b.py") == [
        "b.py:2: raysel.metrics._not_public is private",
        "b.py:2: raysel.metrics.not_exported is not in raysel.metrics.__all__",
        "b.py:3: raysel.quant.merge_quality declares no __all__ (needed for merge_quality)",
        "b.py:4: star import from raysel.store",
        "b.py:10: raysel.store._key_of is private",
        "b.py:10: raysel.store.missing is not in raysel.store.__all__",
        "b.py:11: raysel.data.digits.render_stroke is not in raysel.data.digits.__all__",
        "b.py:12: raysel.selection.voting._hidden is private",
    ]
    assert violations("from raysel.quant.fold import fold_batchnorm\nfrom raysel.selection.voting import fused_vote\n"
                      "from raysel.selection import fused_vote, voting\nvoting.fmiou_scores\n", "c.py") == [
        "c.py:1: import fold_batchnorm from raysel.quant, which exports it",
        "c.py:2: import fused_vote from raysel.selection, which exports it",
        "c.py:4: import fmiou_scores from raysel.selection, which exports it",
    ]


def _modules_declaring_all() -> list[str]:
    """Every raysel module (package ``__init__`` included) whose source declares ``__all__``."""
    modules = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if exported(module) is not None:
            modules.append(module)
    return modules


def test_every_exported_name_exists() -> None:
    missing = []
    for module in _modules_declaring_all():
        imported = importlib.import_module(module)
        names = exported(module) or []
        missing += [f"{module}.{name}" for name in names if not hasattr(imported, name)
                    and not module_file(f"{module}.{name}")]
        missing += [f"{module}: {name} listed twice" for name in set(names) if names.count(name) > 1]
    assert not missing, missing
