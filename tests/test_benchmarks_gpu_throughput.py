"""benchmarks/gpu_throughput.py: refuses to run without CUDA (one line, exit 2), formats its table, and
(integration) runs every part end to end at the --smoke size on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_throughput as gt

REPO = Path(__file__).resolve().parent.parent


def run_script(*arguments: str, timeout: float) -> subprocess.CompletedProcess:
    # One torch thread, as in the rest of the suite: tiny CPU kernels on a shared 2-core machine run slower with two.
    environment = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_throughput", *arguments], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run")
def test_refuses_without_cuda_in_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        gt.main(["--no-write"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "error: no CUDA device: gpu_throughput measures a GPU; run it on a machine with one "
        "(or pass --smoke --allow-cpu to exercise its code paths on CPU)"]


def test_table_shows_rates_memory_and_the_sweep_ratio() -> None:
    rows = [gt.Row("HIAST self-training, deeplabv2_resnet101 512x1024, batch 6", "amp bf16", 2.5, "iterations/s",
                   15.0, 21.44), gt.Row("F-mIoU voting", "CPU (numpy)", 40.0, "images/s", 40.0)]
    sweep = {"gpus_per_trial": 0.25, "ratio": 1.8,
             "sequential": {"trials": 4, "span_s": 100.0, "images_per_second": 9.6, "utilisation": 41.0},
             "fractional": {"trials": 4, "span_s": 55.5, "images_per_second": 17.3, "utilisation": None}}
    text = gt.table(rows, sweep)
    assert "| HIAST self-training, deeplabv2_resnet101 512x1024, batch 6 | amp bf16 | 2.50 iterations/s | 15.0 | " \
           "21.4 |" in text
    assert "| F-mIoU voting | CPU (numpy) | 40.00 images/s | 40.0 | n/a |" in text
    assert "4-configuration HIAST sweep (0.25 GPU per trial):" in text
    assert "| one after another | 4 | 100.0 | 9.60 | 41% |" in text
    assert "| all at once (fractional) | 4 | 55.5 | 17.30 | n/a |" in text
    assert "**1.80x**" in text


@pytest.mark.integration
def test_smoke_run_on_cpu_prints_every_part(tmp_path: Path) -> None:
    result = run_script("--smoke", "--allow-cpu", "--no-write", "--workdir", str(tmp_path / "work"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    names = " ".join(line for line in lines if line.startswith("| "))
    for part in ("HIAST self-training, small_segnet 32x64, batch 2", "GSDA, small_cnn 32x32, batch 4+4",
                 "HDRQ reconstruction W4A4, small_segnet 32x64", "F-mIoU voting, 3 candidates x 4 images of 32x64"):
        assert part in names, result.stdout
    assert sum("| one after another | 2 |" in line or "| all at once (fractional) | 2 |" in line
               for line in lines) == 2
    assert any(line.startswith("Fractional / one after another: **") for line in lines)
    assert not (REPO / "BENCHMARKS.md").read_text().count("## gpu_throughput")  # written after GPU runs only
