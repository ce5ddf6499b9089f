"""MLflow tracking of a sweep (``--mlflow URI``), through Ray Tune's own ``MLflowLoggerCallback``.

One MLflow run per trial (a child of one parent run per sweep): Ray's callback logs the trial's Tune config
(``hp/<name>``, ``target``) as params and every reported metric over time. Held-out metrics are renamed
``oracle_<name>`` on the way (they evaluate a trial; no selection ever reads them). After the sweep's selection,
:meth:`SweepTracker.finish` adds to each trial run every hyperparameter (defaults included), its label-free
``score_<selector>`` values and its final held-out scores (``oracle_*``), and logs the selection decision on the
parent run (tag ``raysel.decision.<target>`` = the chosen trial, metric ``decision_score.<target>.<selector>``).

URIs: ``sqlite:///path/mlflow.db`` (no server) or an ``http(s)://`` tracking server. An unreachable or unusable URI
is a UserError before any trial starts.
"""

from __future__ import annotations

import math
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback

from raysel.errors import UserError

HELDOUT_PREFIX = "heldout_"
ORACLE_PREFIX = "oracle_"  # held-out (labelled) metrics: an evaluation, never used to select
EXPERIMENT = "raysel"
SWEEP_TAG, TRIAL_TAG = "raysel.sweep_id", "raysel.trial_id"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag nesting a run under another
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "databricks")


def oracle_marked(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with every held-out key renamed ``oracle_heldout_...`` (so no dashboard mistakes it for a score)."""
    return {(ORACLE_PREFIX + key if key.startswith(HELDOUT_PREFIX) else key): value for key, value in metrics.items()}


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail with one clear line when ``uri`` is not a usable MLflow tracking store (bad scheme, nothing listening)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in SCHEMES:
        hint = " (MLflow 3 no longer writes file stores: use sqlite:///PATH/mlflow.db)" if parsed.scheme in (
            "", "file") else ""
        raise UserError(f"--mlflow {uri!r}: unsupported tracking URI scheme {parsed.scheme or 'none'!r}{hint}; "
                        f"use sqlite:///PATH/mlflow.db or http(s)://HOST:PORT")
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname or "", port), timeout=timeout_s).close()
        except OSError as error:
            raise UserError(f"--mlflow {uri}: no MLflow server reachable at {parsed.hostname}:{port} "
                            f"({error.strerror or error}); start it or fix the URI") from None
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except (MlflowException, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"--mlflow {uri}: cannot use this MLflow tracking store: {first}") from None


class TrialRunsCallback(MLflowLoggerCallback):
    """Ray's MLflow callback, with each trial's run tagged with its trial id and held-out metrics marked oracle."""
    def log_trial_start(self, trial: Any) -> None:
        """Create the trial's run (Ray), then tag it with the trial id so the selection can find it."""
        known = trial in self._trial_runs
        super().log_trial_start(trial)
        if not known:
            self.mlflow_util._get_client().set_tag(self._trial_runs[trial], TRIAL_TAG, trial.trial_id)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        """Log the reported metrics over time, held-out ones as ``oracle_heldout_*``."""
        super().log_trial_result(iteration, trial, oracle_marked(result))


@dataclass
class SweepTracker:
    """The sweep's parent MLflow run and how trial runs attach to it."""
    uri: str
    sweep_id: str
    parent_run_id: str
    experiment_id: str

    @classmethod
    def start(cls, uri: str, sweep_id: str, params: dict[str, Any]) -> "SweepTracker":
        """Check ``uri``, then open the sweep's parent run in the ``raysel`` experiment with the sweep's settings."""

        check_tracking_uri(uri)
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
        run = client.create_run(experiment_id, run_name=f"sweep {sweep_id}", tags={SWEEP_TAG: sweep_id})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, _param_text(value))
        return cls(uri, sweep_id, run.info.run_id, experiment_id)

    def callback(self) -> TrialRunsCallback:
        """The Tune callback writing one child run per trial."""
        return TrialRunsCallback(tracking_uri=self.uri, experiment_name=EXPERIMENT,
                                 tags={PARENT_TAG: self.parent_run_id, SWEEP_TAG: self.sweep_id})

    def trial_runs(self) -> dict[str, str]:
        """Trial id -> MLflow run id of this sweep's trial runs."""

        runs = MlflowClient(tracking_uri=self.uri).search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'", max_results=10_000)
        return {run.data.tags[TRIAL_TAG]: run.info.run_id for run in runs if TRIAL_TAG in run.data.tags}

    def finish(self, trials: Any, decisions: list[dict[str, Any]], status: str = "FINISHED") -> None:
        """Complete the trial runs from the store rows, log the decisions on the parent run and close it."""

        client = MlflowClient(tracking_uri=self.uri)
        runs = self.trial_runs()
        for row in trials.to_dict("records"):
            if row["trial_id"] in runs:
                log_trial_row(client, runs[row["trial_id"]], row)
        for decision in decisions:
            target, selector = decision["target"], decision["selector"]
            client.set_tag(self.parent_run_id, f"raysel.decision.{target}.{selector}", decision["selected_trial_id"])
            client.log_metric(self.parent_run_id, f"decision_score.{target}.{selector}", float(decision["score"]))
            if isinstance(decision.get("heldout_regret"), (int, float)):
                client.log_metric(self.parent_run_id, f"{ORACLE_PREFIX}regret.{target}.{selector}",
                                  float(decision["heldout_regret"]))
        if decisions:  # the first selector decides (raysel.sweep --selector)
            for target in sorted({d["target"] for d in decisions}):
                first = next(d for d in decisions if d["target"] == target)
                client.set_tag(self.parent_run_id, f"raysel.decision.{target}", first["selected_trial_id"])
        client.set_terminated(self.parent_run_id, status=status)


def log_trial_row(client: Any, run_id: str, row: dict[str, Any]) -> None:
    """Every hyperparameter (``hp/<name>``, unless Ray logged it), label-free scores and oracle held-out scores."""
    logged = client.get_run(run_id).data.params
    for column, value in row.items():
        if column.startswith("hp_") and f"hp/{column[3:]}" not in logged and _present(value):
            client.log_param(run_id, f"hp/{column[3:]}", _param_text(value))
    client.set_tag(run_id, "raysel.status", str(row.get("status")))
    for column, value in row.items():
        if column.startswith("score_") and _finite(value):
            client.log_metric(run_id, column, float(value))
        elif column.startswith(HELDOUT_PREFIX) and _finite(value):
            client.log_metric(run_id, ORACLE_PREFIX + column, float(value))


def _present(value: Any) -> bool:
    """Whether a stored value exists (not None / NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _finite(value: Any) -> bool:
    """Whether a stored value is a finite number (a metric MLflow can plot)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _param_text(value: Any) -> str:
    """A parameter value as MLflow stores it (text); sequences as lists."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return str(list(value)) if isinstance(value, tuple) else str(value)
