"""Studies without Ray: parsing and checking a study file, refusing a sweep stored with another request, the state
derived from the store, the stop-at-deadline search, and the rows export that outlives the machine.

Trial rows here are written the way a trial writes them (ResultStore.write_trial), without training; the real runs
(a study stopped by --max-minutes and continued) are tests/test_study_integration.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raysel.errors import ConfigError, UserError
from raysel.request import (DEADLINE_FILE, SweepRequest, load_request, mark_finished, request_differences,
                            save_request, write_deadline)
from raysel.store import ResultStore, load
from raysel.store.compaction import compact_sweep
from raysel.orchestration.studies import (EXIT_STOPPED, check_stored_requests, export_study_rows, import_study_rows,
                                          load_study, run_study, study_from_mapping)
from raysel.orchestration.study_rows import ROW_KIND, read_study_rows
from raysel.study_state import STUDY_FILE, load_plan, study_dir, study_status

LEARNING_RATES = (0.001, 0.002)
TARGET = "photo_digits"


def study_mapping(results: Path, **top) -> dict:
    """Two source_only sweeps on digits, two trials each, sharing a budget through the defaults."""
    space = {"learning_rate": {"grid": list(LEARNING_RATES)}}
    return {"name": "lr-study", "results": str(results),
            "defaults": {"method": "source_only", "data": "digits", "overrides": ["iterations=20"],
                         "selection_size": 12},
            "sweeps": [{"name": "lr-seed0", "seed": 0, "space": space},
                       {"name": "lr-seed1", "seed": 1, "space": space, "overrides": ["batch_size=8"]}], **top}


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def store_sweep(request: SweepRequest, trials: int | None = None, *, finished: bool = True) -> None:
    """What a run of ``request`` leaves: its sweep.json, ``trials`` trial rows (all by default), and when finished
    a headline decision, compacted rows and the finished marker."""
    store = ResultStore(request.results)
    save_request(request)
    count = request.expected_trials() if trials is None else trials
    for index in range(count):
        trial_id = f"{request.sweep_id}-t{index}"
        store.write_trial({"sweep_id": request.sweep_id, "trial_id": trial_id, "method": "source_only",
                           "task": "classification", "dataset": "digits", "target": TARGET, "seed": 0,
                           "status": "finished", "wall_time_s": 4.0, "started_at": 1_700_000_000.0 + 10 * index,
                           "finished_at": 1_700_000_004.0 + 10 * index, "heldout_accuracy": 0.5 + 0.1 * index,
                           "checkpoint_path": f"/old-machine/{trial_id}/model.pt",
                           "predictions_path": f"/old-machine/{trial_id}/predictions.npz",
                           "hyperparameters": {"learning_rate": LEARNING_RATES[index % 2], "iterations": 20},
                           "scores": {"fmiou": 0.6 + 0.1 * index}})
    if finished:
        store.write_selection({"sweep_id": request.sweep_id, "method": "source_only", "target": TARGET,
                               "selector": "fmiou", "selected_trial_id": f"{request.sweep_id}-t1", "score": 0.7,
                               "num_candidates": count, "headline": True})
        compact_sweep(store, request.sweep_id)
        mark_finished(request.sweep_dir, {"trials_stored": count})


# --------------------------------------------------------------------------------------------------------------
# Reading and checking a study
# --------------------------------------------------------------------------------------------------------------


def test_a_study_file_becomes_checked_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the file are relative to the current directory
    (tmp_path / "space.yaml").write_text("learning_rate: {grid: [0.001, 0.002, 0.004]}\n")
    path = write_yaml(tmp_path / "study.yaml", """
        name: lr-study
        results: out
        defaults: {method: source_only, data: digits, overrides: ["iterations=20"], target: noisy_digits}
        sweeps:
          - {name: from-file, space: space.yaml, seed: 3}
          - name: inline
            space: {learning_rate: {grid: [0.001, 0.002]}}
            overrides: ["iterations=30", "batch_size=8"]
            num_samples: 2
    """)
    study = load_study(path)
    assert study.name == "lr-study" and study.results == str(tmp_path / "out") and study.file == str(path)
    from_file, inline = (sweep.request for sweep in study.sweeps)
    assert from_file.sweep_id == "from-file" and from_file.results == str(tmp_path / "out")
    assert from_file.space.path == str(tmp_path / "space.yaml") and from_file.search.seed == 3
    assert from_file.expected_trials() == 3 and from_file.data.targets == ("noisy_digits",)
    # an entry's overrides follow the defaults' (the later --set wins); other keys replace the defaults'
    assert inline.space.overrides == ("iterations=20", "iterations=30", "batch_size=8")
    assert inline.space.to_dict()["iterations"] == 30 and inline.expected_trials() == 4
    assert study.plan().sweeps[1].expected_trials == 4
    assert study.entries["sweeps"][1]["num_samples"] == 2  # the file's entries, as written, go into the plan


def test_a_study_entry_runs_the_default_configuration_with_include_default(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "study.yaml", f"""
        name: defaults-study
        results: {tmp_path / 'results'}
        defaults: {{method: source_only, data: digits, space: {{learning_rate: {{grid: [0.0005, 0.002]}}}}}}
        sweeps:
          - {{name: with-default, include_default: true}}
          - {{name: without}}
    """)
    with_default, without = (sweep.request for sweep in load_study(path).sweeps)
    assert with_default.search.include_default and not without.search.include_default
    assert (with_default.expected_trials(), without.expected_trials()) == (3, 2)
    assert request_differences(without, dataclasses.replace(with_default, sweep_id="without")) == [
        "search.include_default (stored False, now True)"]


@pytest.mark.parametrize("change, message", [
    ({"sweeps": [{"name": "a", "method": "source_only", "include_default": "yes"}]},
     "study lr-study: sweep 'a': --include-default is on or off (true or false), got 'yes'"),
    ({"sweeps": [{"name": "a", "method": "source_only", "include_default": True,
                  "space": {"batch_size": {"grid": [8, 16]}}}]},
     "study lr-study: sweep 'a': --include-default: source_only has no default for the swept hyperparameter "
     "'batch_size'"),
    ({"sweeps": [{"name": "a", "method": "source_only", "num_sample": 2}]},
     "study lr-study: sweep 'a': unknown sweep option 'num_sample'; did you mean 'num_samples'?"),
    ({"sweeps": [{"name": "a", "method": "source_only", "search": "grdi"}]},
     "study lr-study: sweep 'a': --search: unknown search algorithm 'grdi'; did you mean 'grid'?"),
    ({"sweeps": [{"name": "a", "method": "source_only"}, {"name": "a", "method": "source_only"}]},
     "sweep 'a' is listed twice (sweeps[0] and sweeps[1])"),
    ({"sweeps": [{"method": "source_only"}]}, "sweeps[0] must be a mapping with a `name:`"),
    ({"sweeps": [{"name": "a", "method": "source_only", "results": "elsewhere"}]}, "`results` is the study's"),
    ({"defaults": {"name": "x"}}, "`name` is each sweep's own id"),
    ({"sweeps": []}, "`sweeps:` must be a non-empty list"),
    ({"sweep": []}, "unknown study key 'sweep'; did you mean 'sweeps'?"),
    ({"name": "a/b"}, "`name:` must name the study"),
    ({"sweeps": [{"name": "a", "method": "source_onyl"}]}, "study lr-study: sweep 'a': unknown method 'source_onyl'"),
    ({"sweeps": [{"name": "a", "method": "source_only", "data": "digits", "target": ["foggy_city"]}]},
     "study lr-study: sweep 'a': --target: unknown domain for dataset 'digits' 'foggy_city'"),
    ({"sweeps": [{"name": "a", "method": "source_only", "space": {"learning_rate": {"grid": [-1.0]}}}]},
     "study lr-study: sweep 'a': space: hyperparameter 'learning_rate': grid value -1.0: float field must be > 0"),
])
def test_a_bad_study_is_refused_in_one_line_naming_the_sweep_and_option(change: dict, message: str,
                                                                         tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        study_from_mapping({**study_mapping(tmp_path / "results"), **change})
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "results").exists()


def test_the_command_refuses_a_bad_entry_before_anything_is_written(tmp_path: Path, capsys) -> None:
    from raysel.study import main

    path = write_yaml(tmp_path / "study.yaml", f"""
        name: s
        results: {tmp_path / 'results'}
        sweeps:
          - {{name: ok, method: source_only, data: digits}}
          - {{name: bad, method: source_only, data: digits, selector: fmiuo}}
    """)
    with pytest.raises(SystemExit) as exited:
        main([str(path)])
    error = capsys.readouterr().err
    assert exited.value.code == 2 and error.count("\n") == 1
    assert error.startswith(f"error: study {path}: sweep 'bad': unknown sweep option 'selector'; did you mean "
                            "'selectors'")
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------------------------------------------
# A sweep stored with another request
# --------------------------------------------------------------------------------------------------------------


def test_request_differences_are_field_by_field_and_skip_what_belongs_to_one_run(tmp_path: Path) -> None:
    study = study_from_mapping(study_mapping(tmp_path / "a"))
    request = study.sweeps[0].request
    moved = dataclasses.replace(request, results=str(tmp_path / "b"), progress_interval_s=5.0, mlflow_uri="sqlite://",
                                data=dataclasses.replace(request.data, root="/other/machine/data"))
    assert request_differences(request, moved) == []
    other = study_from_mapping(study_mapping(tmp_path / "a", defaults={
        "method": "source_only", "data": "digits", "overrides": ["iterations=30"], "selection_size": 12,
        "target": "noisy_digits", "num_samples": 2}))
    assert request_differences(request, other.sweeps[0].request) == [
        "space.iterations (stored 20, now 30)", "data.targets (stored ('photo_digits',), now ('noisy_digits',))",
        "search.num_samples (stored 1, now 2)"]


def test_a_sweep_stored_with_another_request_is_refused_before_anything_runs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    stored = study_from_mapping(study_mapping(results))
    store_sweep(stored.sweeps[0].request, trials=1, finished=False)
    changed = study_mapping(results)
    changed["sweeps"][0]["num_samples"] = 3
    study = study_from_mapping(changed)
    with pytest.raises(UserError) as refused:
        run_study(study, stream=io.StringIO())
    message = str(refused.value)
    assert "\n" not in message and "lr-seed0: search.num_samples (stored 1, now 3)" in message
    assert "lr-seed1" not in message and "not compared: results, data.root, progress_interval_s" in message
    assert not (study_dir(results, "lr-study") / STUDY_FILE).exists()  # nothing written
    assert load_request(results, "lr-seed0").search.num_samples == 1
    check_stored_requests(stored)  # the original entries are accepted


# --------------------------------------------------------------------------------------------------------------
# State, status, and a run with nothing to do
# --------------------------------------------------------------------------------------------------------------


def test_state_comes_from_the_store_and_status_shows_the_study(tmp_path: Path, capsys) -> None:
    from raysel.status import main as status_main

    results = tmp_path / "results"
    study = study_from_mapping(study_mapping(results))
    store_sweep(study.sweeps[0].request)  # finished
    store_sweep(study.sweeps[1].request, trials=1, finished=False)  # killed after one trial
    from raysel.study_state import save_plan

    save_plan(study.plan())
    write_deadline(study.sweeps[1].request.sweep_dir, time.time() + 600)
    state = study_status(results, "lr-study")
    assert [(s.sweep_id, s.label, s.stored, s.left) for s in state.sweeps] == [
        ("lr-seed0", "finished", 2, 0), ("lr-seed1", "interrupted", 1, 1)]
    assert (state.finished_sweeps, state.stored, state.expected, state.left) == (1, 3, 4, 1)
    assert state.mean_trial_s() == 4.0 and state.remaining_s() == 4.0
    assert status_main(["lr-study", "--results", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "study lr-study: in progress or stopped" in printed
    assert "sweeps 1/2 finished, trials 3 stored (0 failed) of 4 expected, 1 left, about 4s left" in printed
    assert "lr-seed1  interrupted  1/2 trials stored, no new trial after" in printed


def test_a_finished_study_is_reused_without_starting_ray(tmp_path: Path) -> None:
    import ray

    study = study_from_mapping(study_mapping(tmp_path / "results"))
    for sweep in study.sweeps:
        store_sweep(sweep.request)
    printed = io.StringIO()
    outcome = run_study(study, max_minutes=1, stream=printed)
    assert outcome.complete and outcome.exit_code == 0 and not ray.is_initialized()
    assert outcome.actions == (("lr-seed0", "reused"), ("lr-seed1", "reused"))
    assert "study lr-study finished: 2 sweeps, 4 trials stored" in printed.getvalue()
    plan = load_plan(tmp_path / "results", "lr-study")
    assert [sweep.sweep_id for sweep in plan.sweeps] == ["lr-seed0", "lr-seed1"]
    assert SweepRequest.from_dict(plan.sweeps[0].request) == study.sweeps[0].request


def test_interrupted_sweeps_are_refused_without_resume_and_max_minutes_must_be_positive(tmp_path: Path) -> None:
    study = study_from_mapping(study_mapping(tmp_path / "results"))
    store_sweep(study.sweeps[0].request, trials=1, finished=False)
    with pytest.raises(UserError, match=r"interrupted sweep\(s\) lr-seed0 \(1 of 2 trials stored\)"):
        run_study(study, resume=False, stream=io.StringIO())
    with pytest.raises(ConfigError, match="--max-minutes must be positive"):
        run_study(study, max_minutes=0, stream=io.StringIO())


def test_the_help_documents_the_file_and_the_stopped_exit_status(capsys) -> None:
    from raysel.study import EXIT_STOPPED as documented
    from raysel.study import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert documented == EXIT_STOPPED == 3
    assert "3  stopped by --max-minutes with work left" in text and "defaults:" in text and "--export" in text


# --------------------------------------------------------------------------------------------------------------
# The stop-at-deadline search
# --------------------------------------------------------------------------------------------------------------


def test_past_its_deadline_the_search_proposes_one_trial_then_stops_and_a_restore_continues(tmp_path: Path) -> None:
    from ray import tune
    from ray.tune.experiment import Experiment

    from raysel.execution.tuner import DeadlineVariantGenerator

    deadline_file = tmp_path / DEADLINE_FILE
    write_deadline(tmp_path, time.time() - 1)
    search = DeadlineVariantGenerator(max_concurrent=0, random_state=0, deadline_file=deadline_file)
    search.add_configurations([Experiment("s", run=lambda config: None,
                                          config={"lr": tune.grid_search([1, 2, 3])})])
    first = search.next_trial()
    assert first is not None and search.next_trial() is None and search.is_finished()  # one per run, then stop
    state = search.get_state()
    assert "_proposed_here" not in state and not state["_finished"]  # saved as not finished: a resume continues
    restored = DeadlineVariantGenerator(max_concurrent=0, random_state=0, deadline_file=deadline_file)
    restored.set_state(state)
    deadline_file.unlink()  # the next run sets no deadline
    rest = [restored.next_trial(), restored.next_trial()]
    assert [trial.config["lr"] for trial in [first, *rest]] == [1, 2, 3]
    assert restored.next_trial() is None and restored.is_finished()


def test_an_optuna_search_past_its_deadline_stops_without_saving_itself_finished(tmp_path: Path) -> None:
    from ray.tune.experiment import Experiment
    from ray.tune.search import Searcher

    from raysel.execution.tuner import DeadlineSearchGenerator

    class Counting(Searcher):
        """Proposes x = 0, 1, 2, ...: the part of Optuna the wrapper sees."""

        def __init__(self) -> None:
            super().__init__(metric="score", mode="max")
            self.proposed = 0

        def suggest(self, trial_id: str) -> dict:
            self.proposed += 1
            return {"x": self.proposed - 1}

    write_deadline(tmp_path, time.time() - 1)
    search = DeadlineSearchGenerator(Counting(), deadline_file=tmp_path / DEADLINE_FILE)
    search.add_configurations([Experiment("s", run=lambda config: None, num_samples=4)])
    assert search.next_trial().config == {"x": 0}
    assert search.next_trial() is None and search.is_finished() and not search.get_state()["finished"]
    (tmp_path / DEADLINE_FILE).unlink()
    assert search.next_trial().config == {"x": 1} and not search.is_finished()


# --------------------------------------------------------------------------------------------------------------
# Evidence that outlives the machine
# --------------------------------------------------------------------------------------------------------------


def test_exported_rows_make_a_new_machine_reuse_every_sweep(tmp_path: Path) -> None:
    import ray

    old = study_from_mapping(study_mapping(tmp_path / "old-machine"))
    for sweep in old.sweeps:
        store_sweep(sweep.request)
    summary = export_study_rows(old, tmp_path / "lr-study.parquet")
    assert summary.sweeps == ("lr-seed0", "lr-seed1") and (summary.trials, summary.selections) == (4, 2)

    # a new machine with none of the old files: an empty results folder and the rows file
    new = study_from_mapping(study_mapping(tmp_path / "new-machine", rows=str(tmp_path / "lr-study.parquet")))
    printed = io.StringIO()
    outcome = run_study(new, stream=printed)
    assert outcome.complete and not ray.is_initialized()
    assert outcome.actions == (("lr-seed0", "imported"), ("lr-seed1", "imported"))
    assert "2 finished, 2 imported from" in printed.getvalue() and ", 0 left;" in printed.getvalue()
    trials = load(tmp_path / "new-machine", sweep_id="lr-seed0")
    assert sorted(trials["trial_id"]) == ["lr-seed0-t0", "lr-seed0-t1"]
    assert trials["checkpoint_path"].isna().all() and trials["predictions_path"].isna().all()
    assert load_request(tmp_path / "new-machine", "lr-seed1").results == str(tmp_path / "new-machine")
    assert import_study_rows(new, tmp_path / "lr-study.parquet") == ()  # present now: nothing imported twice


def test_a_table_reads_the_exported_rows_back_without_any_trial(tmp_path: Path) -> None:
    from raysel.reporting.summary import format_trials_table

    study = study_from_mapping(study_mapping(tmp_path / "results"))
    for sweep in study.sweeps:
        store_sweep(sweep.request)
    path = tmp_path / "lr-study.parquet"
    export_study_rows(study, path)
    best = duckdb.sql(f"SELECT sweep_id, max(heldout_accuracy) AS best FROM '{path}' WHERE {ROW_KIND} = 'trial' "
                      "GROUP BY sweep_id ORDER BY sweep_id").fetchall()
    assert best == [("lr-seed0", pytest.approx(0.6)), ("lr-seed1", pytest.approx(0.6))]
    picks = duckdb.sql(f"SELECT selected_trial_id FROM '{path}' WHERE {ROW_KIND} = 'selection' "
                       "ORDER BY sweep_id").fetchall()
    assert picks == [("lr-seed0-t1",), ("lr-seed1-t1",)]
    rows = read_study_rows(path)
    assert rows.study == "lr-study" and [sweep.sweep_id for sweep in rows.sweeps] == ["lr-seed0", "lr-seed1"]
    assert ROW_KIND not in rows.trials.column_names and "selected_trial_id" not in rows.trials.column_names
    assert rows.trials.schema.field("hp_learning_rate").type == pq.read_schema(path).field("hp_learning_rate").type
    trials = rows.trials.filter(pc.field("sweep_id") == "lr-seed0").to_pandas()
    decisions = rows.selections.filter(pc.field("sweep_id") == "lr-seed0").to_pylist()
    table = format_trials_table(trials, decisions)
    assert "lr-seed0-t1" in table and "0.002" in table
    metadata = json.loads(pq.read_schema(path).metadata[b"raysel.orchestration.study_rows"])
    assert metadata["sweeps"][0]["expected_trials"] == 2 and "request" in metadata["sweeps"][0]


def test_only_finished_sweeps_are_exported_and_a_differing_export_is_refused(tmp_path: Path) -> None:
    study = study_from_mapping(study_mapping(tmp_path / "results"))
    store_sweep(study.sweeps[0].request)
    store_sweep(study.sweeps[1].request, trials=1, finished=False)
    summary = export_study_rows(study, tmp_path / "rows.parquet")
    assert summary.sweeps == ("lr-seed0",) and summary.skipped == ("lr-seed1",)
    assert "not finished, not exported: lr-seed1" in summary.line()
    changed = study_mapping(tmp_path / "new", rows=str(tmp_path / "rows.parquet"))
    changed["sweeps"][0]["num_samples"] = 2
    with pytest.raises(UserError, match=r"lr-seed0: search.num_samples \(stored 1, now 2\)"):
        run_study(study_from_mapping(changed), stream=io.StringIO())
    assert not (tmp_path / "new" / "studies").exists() and not (tmp_path / "new" / "trials").exists()
    with pytest.raises(UserError, match="is not a raysel study rows file"):
        pq.write_table(pq.read_table(tmp_path / "rows.parquet").replace_schema_metadata({}), tmp_path / "plain.parquet")
        read_study_rows(tmp_path / "plain.parquet")


def test_the_study_api_docstring_example_runs() -> None:
    """The runnable example of raysel.orchestration.studies (building and checking a study without running it)."""
    import doctest

    import raysel.orchestration.studies as studies

    results = doctest.testmod(studies, optionflags=doctest.ELLIPSIS | doctest.IGNORE_EXCEPTION_DETAIL)
    assert results.failed == 0 and results.attempted >= 2
