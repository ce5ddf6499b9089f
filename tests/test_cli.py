"""The `raysel` console script: every command is its `python -m raysel.<command>`, and each explains itself."""

from __future__ import annotations

import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from raysel.cli import COMMANDS, main

REPO = Path(__file__).resolve().parent.parent


def test_the_console_script_offers_every_command() -> None:
    assert list(COMMANDS) == ["sweep", "select", "query", "report", "submit", "status", "study"]


def run_module_as_main(command: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """What ``python -m raysel.<command> ARGV`` does, in this process: run the module as ``__main__``."""
    monkeypatch.setattr(sys, "argv", [f"raysel.{command}", *argv])
    with warnings.catch_warnings():  # runpy warns that the module was imported before; that is expected here
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(SystemExit) as exited:
            runpy.run_module(f"raysel.{command}", run_name="__main__")
    return exited.value.code


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_of_each_command_is_the_modules_help(command: str, capsys, monkeypatch) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    via_cli = capsys.readouterr().out
    assert run_module_as_main(command, ["--help"], monkeypatch) == 0
    module = capsys.readouterr().out
    assert via_cli == module
    assert f"python -m raysel.{command}" in via_cli and len(via_cli.splitlines()) > 5


def test_no_command_lists_them_and_exits_2(capsys) -> None:
    assert main([]) == 2
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in COMMANDS)


def test_status_through_the_cli_is_the_module(tmp_path: Path, capsys) -> None:
    """The one real process here: `python -m raysel.status` answers as `raysel status` does in-process."""
    with pytest.raises(SystemExit) as exited:
        main(["status", "missing", "--results", str(tmp_path)])
    via_cli = capsys.readouterr()
    module = subprocess.run([sys.executable, "-m", "raysel.status", "missing", "--results", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True)
    assert exited.value.code == module.returncode == 2
    assert via_cli.err == module.stderr and via_cli.err.startswith("error: no sweep 'missing'")
