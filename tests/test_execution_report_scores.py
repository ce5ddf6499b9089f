"""A trial-scored selector computed at every report (what ASHA compares at its rungs): real tiny GSDA runs on the
small generated digits data, in process (fast)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from raysel.execution.trial import train_and_finish
from raysel.methods.base import LocalSession, RunSpec

TINY_GSDA = {"groups": 2, "iterations": 4, "batch_size": 4, "num_reports": 2, "init_from_source": False,
             "discriminator_hidden": 8}


def tiny_gsda_run(root: Path, output: Path, report_score: str | None) -> tuple[list[dict], dict, torch.nn.Module]:
    """One tiny GSDA run on photo_digits: its reports, final metrics and model."""
    spec = RunSpec(method="gsda", dataset="digits", data_root=str(root), target="photo_digits", seed=0,
                   output_dir=str(output), cache_dir=str(output / "cache"), selection_size=8, num_threads=1)
    session = LocalSession(checkpoint_root=str(output / "checkpoints"))
    loop_config = {"method": "gsda", "hyperparameters": TINY_GSDA, "run": spec.to_dict(),
                   "report_score": report_score}
    worker = train_and_finish(loop_config, session)
    return session.reports, worker.final, worker.result.model


def test_every_report_carries_the_score_and_training_is_unchanged(tiny_roots, tmp_path: Path) -> None:
    reports, final, model = tiny_gsda_run(tiny_roots["digits"], tmp_path / "scored", "consistency")
    plain_reports, plain_final, plain_model = tiny_gsda_run(tiny_roots["digits"], tmp_path / "plain", None)

    assert [report["epoch"] for report in reports] == [1, 2]
    assert all(0.0 <= report["score_consistency"] <= 1.0 for report in reports), reports
    assert all("score_consistency" not in report and "score_mixval" not in report for report in plain_reports)
    # The last report scores the model the trial ships: the same value the trial stores at its end.
    assert math.isclose(reports[-1]["score_consistency"], final["scores"]["consistency"], abs_tol=1e-9)
    # Scoring runs the model in eval mode on its own random streams: training is exactly the unscored run's.
    assert [report["loss"] for report in reports] == [report["loss"] for report in plain_reports]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, plain_model.state_dict()[name], msg=f"scoring changed {name}")
    assert final["scores"] == plain_final["scores"]
