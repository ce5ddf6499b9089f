"""The house rules that are about structure: the import layering (import-linter contract in pyproject.toml),
no function over 60 lines anywhere in raysel/, no module over 500 lines outside methods/ and the data generators,
and no two modules of the same name in different folders (SPEC §2)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "raysel"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 500
# Exempt from the module limit: the methods (one paper each) and the embedded data generators.
LONG_MODULES_ALLOWED = ("methods/", "data/street_scenes.py", "data/digits.py")
# Names more than one folder may use: a package's own base classes (models/base.py, methods/base.py).
SHARED_NAMES_ALLOWED = ("__init__.py", "base.py")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _long_functions(source: str, relative: str) -> list[str]:
    """Functions and methods in ``source`` longer than MAX_FUNCTION_LINES, as ``relative::name (N lines)``."""
    return [f"{relative}::{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(source, filename=relative))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def _module_too_long(source: str, relative: str) -> bool:
    """Whether a module outside methods/ and the data generators exceeds MAX_MODULE_LINES."""
    return source.count("\n") > MAX_MODULE_LINES and not relative.startswith(LONG_MODULES_ALLOWED)


def test_imports_follow_the_declared_layers() -> None:
    # In a subprocess: import-linter reconfigures logging (dictConfig disables existing loggers) in its process.
    code = (f"import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_no_function_is_longer_than_60_lines() -> None:
    too_long = [entry for path in _modules()
                for entry in _long_functions(path.read_text(), path.relative_to(PACKAGE).as_posix())]
    assert not too_long, too_long


def test_no_module_outside_methods_and_data_generators_is_longer_than_500_lines() -> None:
    too_long = [f"{path.relative_to(PACKAGE).as_posix()} ({path.read_text().count(chr(10))} lines)"
                for path in _modules() if _module_too_long(path.read_text(), path.relative_to(PACKAGE).as_posix())]
    assert not too_long, too_long


def _same_names(relatives: list[str]) -> dict[str, list[str]]:
    """Module file names used in more than one folder (outside SHARED_NAMES_ALLOWED), each with its paths."""
    by_name: dict[str, list[str]] = {}
    for relative in relatives:
        by_name.setdefault(relative.rpartition("/")[2], []).append(relative)
    return {name: paths for name, paths in by_name.items() if len(paths) > 1 and name not in SHARED_NAMES_ALLOWED}


def test_no_two_modules_in_different_folders_share_a_name() -> None:
    """``raysel/progress.py`` next to ``raysel/execution/progress.py`` made every reader ask which one is meant."""
    same = _same_names([path.relative_to(PACKAGE).as_posix() for path in _modules()])
    assert not same, same
    assert _same_names(["progress.py", "execution/progress.py", "models/base.py", "methods/base.py"]) \
        == {"progress.py": ["progress.py", "execution/progress.py"]}


def _function(name: str, lines: int, indent: str = "") -> str:
    """Source of a function spanning ``lines`` lines, its ``def`` line included."""
    return f"{indent}def {name}():\n" + "".join(f"{indent}    x{index} = {index}\n" for index in range(lines - 1))


def test_the_size_checks_can_fail() -> None:
    """The checks above flag a 61-line method and a 501-line module, and exempt only the methods and generators."""
    assert _long_functions(_function("fits", MAX_FUNCTION_LINES), "m.py") == []
    assert _long_functions("class C:\n" + _function("long", MAX_FUNCTION_LINES + 1, "    "), "m.py") \
        == [f"m.py::long ({MAX_FUNCTION_LINES + 1} lines)"]
    assert not _module_too_long("x = 0\n" * MAX_MODULE_LINES, "report.py")
    too_long = "x = 0\n" * (MAX_MODULE_LINES + 1)
    assert _module_too_long(too_long, "report.py") and _module_too_long(too_long, "quant/reconstruct.py")
    assert not _module_too_long(too_long, "methods/hiast.py") and not _module_too_long(too_long, "data/digits.py")
    longest_method = max((PACKAGE / "methods").glob("*.py"), key=lambda p: p.read_text().count("\n"))
    assert _module_too_long(longest_method.read_text(), "report.py")  # real code the exemption is needed for
