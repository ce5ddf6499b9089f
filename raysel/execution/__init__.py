"""Execution on Ray: settings, connection, sessions, the per-trial run, the Tune experiment, progress, re-prediction.

Execution model (Ray 2.60, Train V2):

* Each Tune trial runs :func:`~raysel.execution.driver.trial_driver`, a function trainable.
* With ``--workers N > 1`` (or ``--executor train``) the driver builds a ``TorchTrainer`` whose workers run the
  method's per-worker loop with DDP (gloo on CPU, NCCL on GPU); checkpoints and metrics go through Ray Train, and
  ``ray.train.FailureConfig`` restarts killed workers from the last checkpoint.
* With one worker (``--executor auto``, the default) the same per-worker loop runs directly inside the Tune trial,
  reporting through ``ray.tune.report``. Ray Train's worker-group start-up costs 10–30 s per run on these machines
  (``../shared/reference/ray.md``), which dominated small single-worker trials; running the loop in the trial is
  the supported Tune function-trainable pattern and keeps checkpoints, resume and resources.
* Every finished or failed trial writes its own row to the Parquet store from inside the trial, so a killed sweep
  driver never loses a finished trial; ``--resume`` restores the Tune experiment and skips trials whose row is
  already ``finished``.
* :func:`run_local` runs one configuration in-process through the same per-worker function (no Tune).

What a sweep is (the checked, frozen request every trial reads) is :mod:`raysel.request`.
Modules: :mod:`.connection` (joining Ray), :mod:`.devices`,
:mod:`.sessions`, :mod:`.trial` (run_worker, finish_run), :mod:`.rows` (the trial row), :mod:`.driver` (the Tune
trainable, Ray Train), :mod:`.tuner`, :mod:`.tune_progress` (the Tune callback printing progress lines),
:mod:`.prediction_cache` and :mod:`.repredict` (candidate predictions, also as Ray tasks), :mod:`.local` (run_local).
Whole-sweep orchestration is :mod:`raysel.orchestration`.
"""

from raysel.execution.connection import cluster_cpus, connect
from raysel.execution.driver import trial_driver
from raysel.execution.local import LocalRun, run_local
from raysel.execution.sessions import TrainWorkerSession, TuneTrialSession
from raysel.execution.trial import finish_run, run_worker
from raysel.execution.tune_progress import ProgressPrinter
from raysel.execution.tuner import build_tuner, trial_concurrency
from raysel.request import Resources

__all__ = [
    "Resources", "TuneTrialSession", "TrainWorkerSession", "run_worker", "finish_run", "trial_driver", "connect",
    "cluster_cpus", "build_tuner", "trial_concurrency", "ProgressPrinter", "run_local", "LocalRun",
]
