"""Where a trial's time goes (time_<phase>_s columns), the shared stages built as parallel, timed Ray tasks, and a
sweep's selection overlapping the local Ray's shutdown."""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from raysel.execution.timing import PhaseClock
from raysel.orchestration.pipeline import conclude_while_stopping
from raysel.store.schema import TRIAL_PHASES, TRIAL_TIMING_COLUMNS, trial_table

TINY_HIAST = {"rounds": 1, "iterations_per_round": 2, "reports_per_round": 1, "warmup_iterations": 2,
              "source_iterations": 2}


def test_a_sweep_concludes_while_its_local_ray_stops() -> None:
    """Selection and Ray's shutdown overlap: each waits at a barrier for the other, which a sequential order breaks."""
    both_running = threading.Barrier(2, timeout=10)

    def conclude() -> str:
        both_running.wait()
        return "selected"

    assert conclude_while_stopping(conclude, both_running.wait) == "selected"


def test_a_failed_conclusion_is_raised_once_ray_has_stopped() -> None:
    stopped: list[bool] = []

    def conclude() -> None:
        raise RuntimeError("selection failed")

    with pytest.raises(RuntimeError, match="selection failed"):
        conclude_while_stopping(conclude, lambda: stopped.append(True))
    assert stopped == [True]


def test_phase_clock_counts_time_in_nested_phases_once() -> None:
    now = [0.0]
    clock = PhaseClock(clock=lambda: now[0])
    with clock.phase("train") as outer:
        now[0] += 1.0
        with clock.phase("data") as inner:
            now[0] += 2.0
        now[0] += 3.0
        with clock.phase("data"):
            now[0] += 0.5
    assert clock.seconds == {"train": 4.0, "data": 2.5}
    assert (outer.seconds, outer.elapsed_s, inner.seconds) == (4.0, 6.5, 2.0)
    assert clock.columns() == {"time_train_s": 4.0, "time_data_s": 2.5}


def _row(**extra: object) -> dict[str, object]:
    return {"method": "hiast", "sweep_id": "s", "trial_id": "t", "status": "finished", "target": "day_city", **extra}


def test_trial_rows_declare_a_float_column_per_phase_null_when_not_timed() -> None:
    assert set(TRIAL_TIMING_COLUMNS) == {f"time_{phase}_s" for phase in TRIAL_PHASES}
    _, timed = trial_table(_row(time_train_s=12.5, time_data_s=1))
    _, untimed = trial_table(_row())
    for table in (timed, untimed):
        for column in TRIAL_TIMING_COLUMNS:
            assert table.schema.field(column).type == pa.float64()
    assert timed.column("time_train_s")[0].as_py() == 12.5 and timed.column("time_data_s")[0].as_py() == 1.0
    assert untimed.column("time_train_s")[0].as_py() is None
    with pytest.raises(ValueError, match="time_train_s"):
        trial_table(_row(time_train_s="slow"))


def test_written_rows_carry_the_trial_phases(tmp_path: Path) -> None:
    from raysel import store
    from raysel.execution.rows import write_row
    from raysel.request_build import build_request

    request = build_request(method="hiast", name="timed", results=tmp_path, target=["day_city"])
    final = {"status": "finished", "time_train_s": 3.0, "time_predictions_s": 0.25, "not_a_phase_s": 1.0}
    write_row(store.ResultStore(tmp_path), request, "t1", {"target": "day_city", "hp": {}}, 0.0, final)
    trials = store.load(tmp_path, sweep_id="timed")
    assert trials["time_train_s"].iloc[0] == 3.0 and trials["time_predictions_s"].iloc[0] == 0.25
    assert trials["time_heldout_s"].isna().all() and "not_a_phase_s" not in trials


def hiast_request(tmp_path: Path, text: str, **options: object):
    """A HIAST sweep request whose search space is the YAML ``text`` (written to a file, as a user's --space is)."""
    from raysel.request_build import build_request

    path = tmp_path / "space.yaml"
    path.write_text(text)
    return build_request(method="hiast", space=path, results=tmp_path / "results", **options)


def test_sweeping_a_stage_setting_skips_preparation_and_says_which(tmp_path: Path) -> None:
    """A swept warm-up length keys the warm-up stage: no stage is pre-built at the default length no trial uses."""
    from raysel.orchestration.pipeline import prepare_shared_stages, stage_keying_names
    from raysel.registry import get_method

    request = hiast_request(tmp_path, "alpha: {grid: [0.2, 0.5]}\nwarmup_iterations: {grid: [2, 4]}\n"
                                      "source_iterations: 2\n")
    assert stage_keying_names(get_method("hiast"), request.space) == ["warmup_iterations"]
    printed = io.StringIO()
    assert prepare_shared_stages(request, local=True, stream=printed) == []  # returns before any Ray task
    assert "the sweep varies warmup_iterations" in printed.getvalue()


def test_sweeping_only_trial_settings_keeps_the_shared_stage(tmp_path: Path) -> None:
    from raysel.orchestration.pipeline import stage_keying_names
    from raysel.registry import get_method

    request = hiast_request(tmp_path, "alpha: {grid: [0.2, 0.5]}\ngamma: {uniform: [0.1, 0.9]}\n"
                                      "warmup_iterations: 4\n")
    assert stage_keying_names(get_method("hiast"), request.space) == []


def test_a_finished_preparation_is_skipped_while_its_stage_files_exist(tmp_path: Path) -> None:
    """Its marker lists the stage files; with all present no Ray task starts, with one gone the target is redone."""
    from raysel.orchestration.pipeline import StageRecord, _prepared_earlier, _write_marker, preparation_marker
    from raysel.request_build import build_request

    request = build_request(method="hiast", name="s", results=tmp_path, data_root=tmp_path, target=["day_city"])
    marker = preparation_marker(request, dict(TINY_HIAST), "day_city")
    assert marker.parent.parent == tmp_path / "_raysel_cache"  # the stage cache under the data root
    assert marker != preparation_marker(request, {**TINY_HIAST, "warmup_iterations": 3}, "day_city")
    assert marker != preparation_marker(request, dict(TINY_HIAST), "dusk_city")
    stage = tmp_path / "cache" / "adversarial_warmup" / "abc" / "state.pt"
    stage.parent.mkdir(parents=True)
    stage.write_bytes(b"state")
    assert _prepared_earlier(marker, "day_city", 0) is None
    _write_marker(marker, [StageRecord("adversarial_warmup", "day_city", 0, 3.0, True, "t", 1, 0.0, 1.0, str(stage))])
    [earlier] = _prepared_earlier(marker, "day_city", 0)
    assert (earlier.name, earlier.built, earlier.path) == ("adversarial_warmup", False, str(stage))
    stage.unlink()
    assert _prepared_earlier(marker, "day_city", 0) is None


def test_a_method_with_shared_stages_must_say_what_keys_them() -> None:
    from raysel.registry import Method, register

    method = Method(name="keyless", tasks=("classification",), config_class=object, train=lambda c, x: None,
                    description="", prepare_shared=lambda config, ctx: None)
    with pytest.raises(ValueError, match="shared_stage_key"):
        register(method)


@pytest.mark.integration
def test_a_timed_trial_stamps_every_phase_and_gives_the_same_results(tiny_roots: dict, tmp_path: Path) -> None:
    """The trial's timed context changes nothing but the clock: same held-out score, same label-free scores."""
    from raysel.execution.timing import timed_context
    from raysel.execution.trial import train_and_finish
    from raysel.methods.base import LocalSession

    def run(name: str, context_class: object = None) -> dict:
        spec = {"method": "hiast", "dataset": "street_scenes", "data_root": str(tiny_roots["street_scenes"]),
                "source": "game", "target": "day_city", "seed": 0, "selection_size": 4, "num_threads": 1,
                "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / name)}
        loop = {"method": "hiast", "hyperparameters": TINY_HIAST, "run": spec}
        session = LocalSession(checkpoint_root=str(tmp_path / f"{name}-ckpt"))
        extra = (context_class,) if context_class is not None else ()
        return train_and_finish(loop, session, *extra).final

    clock = PhaseClock()
    timed = run("timed", timed_context(clock))  # builds the shared stages into the cache
    plain = run("plain")
    assert timed["status"] == plain["status"] == "finished"
    assert timed["heldout_miou"] == plain["heldout_miou"] and timed["scores"] == plain["scores"]
    assert set(clock.seconds) == set(TRIAL_PHASES) - {"setup"}
    assert all(seconds >= 0 for seconds in clock.seconds.values())
    assert sum(clock.seconds.values()) <= timed["train_time_s"] + 60  # exclusive: nothing counted twice


@pytest.mark.integration
def test_independent_stages_are_built_by_parallel_ray_tasks(ray_local, tiny_roots: dict, tmp_path: Path) -> None:
    """Two targets' HIAST warm-ups: two Ray tasks at once; the source model they share is built once."""
    from raysel.orchestration.pipeline import prepare_shared_stages
    from raysel.request_build import build_request

    data_root = tmp_path / "data"  # a copy: the stage cache under it starts empty
    shutil.copytree(tiny_roots["street_scenes"], data_root)
    request = build_request(method="hiast", name="stages", results=tmp_path / "results", data_root=data_root,
                            target=["day_city", "dusk_city"], space=dict(TINY_HIAST))
    printed = io.StringIO()
    records = prepare_shared_stages(request, local=True, stream=printed)

    warmups = [record for record in records if record.name == "adversarial_warmup"]
    assert sorted(record.target for record in warmups) == ["day_city", "dusk_city"]
    assert all(record.built for record in warmups)
    assert len({record.task_id for record in warmups}) == 2 and len({record.pid for record in warmups}) == 2
    assert max(r.task_started for r in warmups) < min(r.task_finished for r in warmups)  # they ran at once
    sources = [record for record in records if record.name == "source_only"]
    assert [record.built for record in sources].count(True) == 1  # shared by both targets, built once
    lines = printed.getvalue().splitlines()
    for record in records:
        assert f"  {record.line()}" in lines
    assert any(line.startswith("  stage adversarial_warmup (target dusk_city, seed 0): built in ") for line in lines)
    assert any(" s" in line and "cached, loaded in" in line for line in lines)
    assert "2 Ray task(s) of 1 CPU(s)" in printed.getvalue()

    again = io.StringIO()  # the next sweep with the same inputs: the markers say every stage file is there
    cached = prepare_shared_stages(request, local=True, stream=again)
    assert cached and not any(record.built for record in cached)
    assert all(record.task_id == "" for record in cached), "no Ray task only to load cached stages"
    assert {record.path for record in cached} <= {record.path for record in records}
    assert "prepared by an earlier sweep" in again.getvalue() and "Ray task(s)" not in again.getvalue()


def test_sweep_overhead_breakdown_partitions_the_sweep_wall_time(tmp_path: Path) -> None:
    """The benchmark's breakdown: per-phase means from real stored rows, plus the time outside any trial."""
    from benchmarks.sweep_overhead import SweepRun, breakdown_rows
    from raysel import store
    from raysel.execution.rows import write_row
    from raysel.request_build import build_request

    request = build_request(method="hiast", name="seq", results=tmp_path, target=["day_city"])
    writer = store.ResultStore(tmp_path)
    for index, started in enumerate((1000.0, 1010.0)):  # finished_at: when the row is written (now)
        write_row(writer, request, f"t{index}", {"target": "day_city", "hp": {}}, started,
                  {"status": "finished", "time_train_s": 5.0, "time_setup_s": 1.0})
    trials = store.load(tmp_path, sweep_id="seq")
    ends = {row.trial_id: row.finished_at.timestamp() for row in trials.itertuples()}
    run = SweepRun(seconds=ends["t1"] + 2.0 - 997.0, started=997.0, finished=ends["t1"] + 2.0, trials=trials)
    plain = [{"time_train_s": 4.0, "time_setup_s": 0.5}] * 2
    rows = breakdown_rows(plain, run, configs=2)
    assert "| train | 4.00 | 5.00 | +1.00 |" in rows and "| setup | 0.50 | 1.00 | +0.50 |" in rows
    before = next(row for row in rows if row.startswith("| before the first trial"))
    assert "| 1.50 |" in before  # 3 s before the first trial, over 2 configurations
    between = next(row for row in rows if row.startswith("| between trials"))
    assert float(between.split("|")[3]) == pytest.approx((1010.0 - ends["t0"]) / 2, abs=0.01)
    assert rows[-1].startswith("| **total per configuration** | 4.50 | ")


def test_sweep_overhead_states_rays_floor_against_what_the_goal_allows() -> None:
    """Ray's measured floor is set against a tenth of the plain loops' time (the ratio 1.10 the goal allows)."""
    from benchmarks.sweep_overhead import floor_lines

    floor = {"start a local Ray": 2.5, "one worker process importing raysel.execution": 4.5, "stop Ray": 1.0,
             "total": 8.0}
    lines = floor_lines(floor, plain_s=70.0, sequential_s=80.0)
    assert "**8.0 s** per sweep, against the 7.0 s" in lines[0] and "spent 10.0 s over them" in lines[0]
    assert "| start a local Ray | 2.50 |" in lines and not any(line.startswith("| total") for line in lines)
