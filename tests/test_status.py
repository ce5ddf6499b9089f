"""`raysel status`: a sweep's progress read from its real files (saved request, Parquet store, Tune folders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raysel.request import save_request
from raysel.request_build import build_request
from raysel.status import format_status, main, sweep_status
from tests.test_report import build_store


def save_sweep(results: Path, sweep_id: str = "sweep-a", alpha_grid: tuple = (0.3, 0.4, 0.5, 0.7, 0.9, 1.0)) -> None:
    """The request of a 6-point alpha grid on one target (6 expected trials), saved as raysel.sweep saves it."""
    save_request(build_request(method="hiast", name=sweep_id, results=results, data_root="/data", target=["day_city"],
                               selection_size=12, space={"alpha": {"grid": list(alpha_grid)}}))


def tune_trial(results: Path, trial_id: str, confidences: list[float], sweep_id: str = "sweep-a") -> Path:
    """A Tune trial folder with its params and the label-free confidences it reported."""
    folder = results / "sweeps" / sweep_id / "tune" / trial_id
    folder.mkdir(parents=True)
    (folder / "params.json").write_text("{}")
    (folder / "result.json").write_text("".join(json.dumps({"target_confidence": c}) + "\n" for c in confidences))
    return folder


def test_running_sweep_counts_trials_best_score_and_eta(tmp_path: Path) -> None:
    results = tmp_path / "results"
    build_store(results, decision=False)  # t0..t3 finished (fmiou scores), t9 failed
    save_sweep(results)
    for trial in ("t0", "t1", "t2", "t3", "t9"):
        tune_trial(results, trial, [0.5])
    tune_trial(results, "t5", [0.6, 0.95])
    progress_file = results / "sweeps" / "sweep-a" / "trials" / "t5" / "progress.txt"
    progress_file.parent.mkdir(parents=True)
    progress_file.write_text("adversarial warm-up: 3/10 [00:03<00:07, 1.00it/s, loss=0.512]\n")
    status = sweep_status(results, "sweep-a", now=1_700_000_100.0)
    assert (status.finished, status.failed, status.running, status.expected) == (4, 1, ["t5"], 6)
    assert status.best_score == ("fmiou (label-free)", 0.90, "t2")
    assert not status.done
    assert status.remaining_s == pytest.approx(status.elapsed_s / 5 * 1)
    text = format_status(status)
    assert "4 finished, 1 running, 1 failed, 6 expected" in text
    assert "t5: adversarial warm-up: 3/10" in text


def test_before_selection_the_best_reported_target_confidence_is_shown(tmp_path: Path) -> None:
    results = tmp_path / "results"
    save_sweep(results)
    tune_trial(results, "a1", [0.2, 0.7])
    tune_trial(results, "a2", [0.4])
    status = sweep_status(results, "sweep-a")
    assert status.best_score == ("target confidence (label-free)", 0.7, "a1")
    assert (status.finished, len(status.running), status.remaining_s) == (0, 2, None)


def test_finished_sweep_reports_done_and_its_own_duration(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    build_store(results)
    save_sweep(results, alpha_grid=(0.3, 0.5, 0.7, 0.9, 1.0))  # 5 expected = 4 finished + 1 failed
    assert main(["sweep-a", "--results", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "sweep sweep-a (hiast): finished" in printed and "elapsed 10s" in printed


def test_unknown_sweep_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    save_sweep(results)
    with pytest.raises(SystemExit) as exited:
        main(["nope", "--results", str(results)])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no sweep 'nope'" in error and "sweep-a" in error


def test_without_a_sweep_id_the_latest_sweep_is_shown(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    save_sweep(results, "older")
    save_sweep(results, "newer")
    import os

    os.utime(results / "sweeps" / "older" / "sweep.json", (1, 1))
    assert main(["--results", str(results)]) == 0
    assert "sweep newer (hiast)" in capsys.readouterr().out


def test_status_answers_without_importing_torch_or_ray(tmp_path: Path) -> None:
    import subprocess
    import sys

    save_sweep(tmp_path / "results")
    script = ("import sys\nfrom raysel.status import main\n"
              f"main(['sweep-a', '--results', {str(tmp_path / 'results')!r}])\n"
              "loaded = sorted(name for name in ('torch', 'ray') if name in sys.modules)\nassert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert "sweep sweep-a (hiast): in progress" in result.stdout and "0 finished, 0 running, 0 failed, 6 expected" \
        in result.stdout


@pytest.mark.integration
def test_status_of_the_real_tiny_sweep(tiny_hiast_sweep, capsys) -> None:
    assert tiny_hiast_sweep["code"] == 0
    assert main([tiny_hiast_sweep["sweep_id"], "--results", str(tiny_hiast_sweep["results"])]) == 0
    printed = capsys.readouterr().out
    assert "sweep tiny (hiast): finished" in printed
    assert "3 finished, 0 running, 0 failed, 3 expected" in printed
    assert "best so far: fmiou (label-free)" in printed
