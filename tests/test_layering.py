"""The house rules that are about structure: the import layering (import-linter contract in pyproject.toml),
no function over 60 lines anywhere in raysel/, no module over 500 lines outside methods/ and the data generators."""

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
# Being split on branch h2/h3 (methods/hiast.py's train loop; report.py; quant/reconstruct.py): emptied at merge.
KNOWN_LONG_FUNCTIONS = {"methods/hiast.py::train_hiast"}
KNOWN_LONG_MODULES = {"report.py", "quant/reconstruct.py"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_imports_follow_the_declared_layers() -> None:
    # In a subprocess: import-linter reconfigures logging (dictConfig disables existing loggers) in its process.
    code = (f"import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_no_function_is_longer_than_60_lines() -> None:
    too_long = []
    for path in _modules():
        relative = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and f"{relative}::{node.name}" not in KNOWN_LONG_FUNCTIONS:
                    too_long.append(f"{relative}::{node.name} ({length} lines)")
    assert not too_long, too_long


def test_no_module_outside_methods_and_data_generators_is_longer_than_500_lines() -> None:
    too_long = []
    for path in _modules():
        relative = path.relative_to(PACKAGE).as_posix()
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES and not relative.startswith(LONG_MODULES_ALLOWED) \
                and relative not in KNOWN_LONG_MODULES:
            too_long.append(f"{relative} ({lines} lines)")
    assert not too_long, too_long


def test_the_size_checks_can_fail() -> None:
    """The checks above look at real code: the allow-lists name existing files, and the methods exceed 500 lines."""
    for entry in [*KNOWN_LONG_MODULES, *(name.split("::")[0] for name in KNOWN_LONG_FUNCTIONS)]:
        assert (PACKAGE / entry).is_file(), entry
    assert max((PACKAGE / "methods").glob("*.py"), key=lambda p: p.read_text().count("\n")).read_text().count("\n") \
        > MAX_MODULE_LINES
