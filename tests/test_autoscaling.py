"""Autoscaling for real on one machine: a raysel sweep whose trials request GPUs scales fake GPU nodes 0 -> 2 -> 0.

Ray's fake multi-node provider (raysel/testing/fake_cluster.py) starts a CPU-only, token-authenticated head whose
worker node type advertises one GPU; ``python -m raysel.sweep ... --gpus-per-worker 1 --address`` runs against it
while a separate driver samples the node count. Trials on the fake GPU nodes compute on CPU because the head's
environment opts in with ``RAYSEL_FAKE_GPUS=1``. Only bounded waits for state changes, no speed thresholds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from raysel.testing.fake_cluster import FakeCluster, NodeSampler, run_sweep_cli, summarize

LEARNING_RATES = [0.001, 0.0015, 0.002, 0.0025]
MAX_GPU_NODES = 2
IDLE_TIMEOUT_MINUTES = 0.2
SCALE_DOWN_WAIT_S = 180  # idle timeout (12 s) plus autoscaler and node shutdown on a loaded 2-core machine


def sweep_args(results: Path, data_root: Path) -> list[str]:
    """A 4-trial source_only grid whose trials each hold one (fake) GPU."""
    grid = ", ".join(str(rate) for rate in LEARNING_RATES)
    return ["source_only", "--results", str(results), "--name", "autoscale", "--data-root", str(data_root),
            "--set", f"learning_rate={{grid: [{grid}]}}", "--set", "iterations=10", "--selection-size", "12",
            "--gpus-per-worker", "1", "--progress-interval", "10"]


@pytest.mark.integration
def test_gpu_sweep_scales_fake_nodes_up_and_back_to_zero(embedded_data_root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    with FakeCluster(max_workers=MAX_GPU_NODES, idle_timeout_minutes=IDLE_TIMEOUT_MINUTES) as cluster:
        with NodeSampler(cluster) as sampler:
            assert sampler.latest().workers == 0, "the cluster should start with no worker nodes"
            sweep = run_sweep_cli(cluster, sweep_args(results, embedded_data_root), tmp_path / "sweep.log",
                                  timeout_s=900)
            assert sweep.returncode == 0, sweep.output[-4000:] + cluster.autoscaler_log()
            sampler.wait_until(lambda sample: sample.workers == 0 and sample.time > sweep.ended, SCALE_DOWN_WAIT_S,
                               what="scale-down to 0 worker nodes after the sweep")
            fake_gpu_logs = cluster.logs_containing("RAYSEL_FAKE_GPUS=1 and no CUDA")
        samples = list(sampler.samples)

    from raysel import store

    trials = store.load(results, sweep_id="autoscale")
    assert len(trials) == len(LEARNING_RATES) and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"finished"}
    assert sorted(trials["hp_learning_rate"]) == LEARNING_RATES
    assert "selected by fmiou" in sweep.output

    during = [sample for sample in samples if sweep.started <= sample.time <= sweep.ended]
    timeline = summarize(samples, sweep.started, trials["finished_at"].max().timestamp())
    print(timeline)
    assert max(sample.workers for sample in during) >= 2, timeline.rows
    assert max(sample.workers for sample in samples) <= MAX_GPU_NODES, timeline.rows
    assert timeline.peak_gpus_busy >= 2, f"trials never ran on two GPU nodes at once: {timeline.rows}"
    assert timeline.scale_down_s is not None, timeline.rows
    assert fake_gpu_logs, "no trial reported computing on CPU under RAYSEL_FAKE_GPUS=1"
