"""The `raysel` console script: every command is its `python -m raysel.<command>`, and each explains itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raysel.cli import COMMANDS, main

REPO = Path(__file__).resolve().parent.parent


def test_the_console_script_offers_every_command() -> None:
    assert list(COMMANDS) == ["sweep", "select", "query", "report", "submit", "status"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_of_each_command_is_the_modules_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    via_cli = capsys.readouterr().out
    module = subprocess.run([sys.executable, "-m", f"raysel.{command}", "--help"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    assert via_cli == module
    assert f"python -m raysel.{command}" in via_cli and len(via_cli.splitlines()) > 5


def test_no_command_lists_them_and_exits_2(capsys) -> None:
    assert main([]) == 2
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in COMMANDS)


def test_status_through_the_cli_is_the_module(tmp_path: Path) -> None:
    via_cli = subprocess.run([sys.executable, "-c", "import sys; from raysel.cli import main; sys.exit(main())",
                              "status", "missing", "--results", str(tmp_path)], cwd=REPO, capture_output=True,
                             text=True)
    module = subprocess.run([sys.executable, "-m", "raysel.status", "missing", "--results", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True)
    assert via_cli.returncode == module.returncode == 2
    assert via_cli.stderr == module.stderr and via_cli.stderr.startswith("error: no sweep 'missing'")
