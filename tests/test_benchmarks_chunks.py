"""Chunked benchmarks (issue 28 item 2): hdrq_merge, method_gains, hiast_gain and domain_gap save each finished
unit keyed by its settings, reuse it, stop at --max-minutes with exit 3 and a partial section, and rebuild a
section from a committed evidence file without running any job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import _common, domain_gap, hdrq_merge, hiast_gain, method_gains
from benchmarks._hdrq_merge_tables import ConfigResult

DATA = {"generator": "digits", "version": 5, "config": {"size": 1}}


def test_partial_line_wording() -> None:
    assert _common.partial_line(3, 27, "units") == "**partial: 3 of 27 units**"


def test_hdrq_unit_keys_differ_with_every_setting() -> None:
    def key(*argv: str, unit: int = 1, data: dict | None = None, family: str = "digits") -> str:
        args = hdrq_merge.parse_args(["--families", family, "--no-write", *argv])
        job = hdrq_merge._job(args, family, args.seeds[0], "root", "work")
        return _common.unit_key(hdrq_merge.unit_fields(job, hdrq_merge.job_units(job)[unit], data or DATA))

    base = key()
    assert key() == base  # deterministic
    others = [key("--seeds", "1"), key("--iterations", "2000"), key("--merge-draws", "3"), key("--bits", "W2A4"),
              key(unit=2), key("--digits-adaptation", "iterations=9"), key("--quick"), key("--with-test-targets"),
              key(data={**DATA, "version": 6}), key(family="street_scenes"),
              key("--roundings", "noise", family="street_scenes")]  # 2 street targets: float rounding too
    assert len({base, *others}) == len(others) + 1
    assert key("--roundings", "noise") == base  # 3 digits targets have no ties: noise only either way
    assert key("--threads", "2", "--parallel", "2", "--workdir", "/elsewhere") == base  # not result-determining


def test_method_gains_unit_keys_differ_with_every_setting() -> None:
    variants = method_gains.selected_variants(["digits"], ["gsda_global", "gsda"])
    global_, full = variants[1], variants[2]

    def key(kind: str = "run", variant=full, target: str = "photo_digits", seed: int = 0, quick: bool = False,
            data: dict | None = None, workdir: str = "/w") -> str:
        job = method_gains.Job(kind, variant, (target,), seed, "/data", workdir, 1, quick)
        return _common.unit_key(method_gains.job_fields(job, data or DATA))

    base = key()
    others = [key("shared"), key(variant=global_), key(target="noisy_digits"), key(seed=1), key(quick=True),
              key(data={**DATA, "config": {"size": 2}})]
    assert len({base, *others}) == len(others) + 1 and key(workdir="/other") == base


def test_unit_store_round_trip_and_evidence(tmp_path: Path) -> None:
    store = _common.UnitStore(tmp_path / "units", tmp_path / "evidence" / "s.json")
    assert store.get("k1") is None
    store.save("k1", {"seed": 0}, {"value": 1.5})
    store.save("k2", {"seed": 1}, {"value": [1, 2]})
    assert store.get("k1") == {"value": 1.5} and store.load(["k1", "k2", "k3"]) == {"k1": {"value": 1.5},
                                                                                    "k2": {"value": [1, 2]}}
    evidence = json.loads((tmp_path / "evidence" / "s.json").read_text())
    assert set(evidence["units"]) == {"k1", "k2"} and evidence["units"]["k2"]["fields"] == {"seed": 1}
    fresh = _common.UnitStore(tmp_path / "new-machine", tmp_path / "evidence" / "s.json")  # empty workdir
    assert fresh.load(["k1", "k2"]) == store.load(["k1", "k2"])
    assert _common.UnitStore(tmp_path / "units").get("k1") == {"value": 1.5}  # no evidence file needed


def test_partial_section_header_and_complete_section(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    text = _common.write_partial_section("demo.x", "python -m x", "body", done=1, total=4, what="units",
                                         path=output, load=(1.0, 1.0))
    lines = text.split("\n")
    assert lines[0] == "## demo.x" and lines[2] == "**partial: 1 of 4 units**" and lines[4].startswith("Command:")
    assert output.read_text().count("## demo.x") == 1
    _common.write_partial_section("demo.x", "python -m x", "body", done=4, total=4, what="units", path=output,
                                  load=(1.0, 1.0))
    assert "partial" not in output.read_text() and output.read_text().count("Commit:") == 1


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Skip data generation: a fixed data version, no job may run."""
    root = tmp_path / "data"
    root.mkdir()
    for module in (hdrq_merge, method_gains):
        monkeypatch.setattr(module, "prepare_benchmark_data", lambda *a, **k: root)
        monkeypatch.setattr(module, "data_version", lambda folder: DATA)
    monkeypatch.setattr(method_gains, "data_identity", lambda folder: "fixed data")

    def fail(*args, **kwargs):
        raise AssertionError("a job ran")

    monkeypatch.setattr(hdrq_merge, "score_configuration", fail)
    monkeypatch.setattr(hdrq_merge, "job_context", fail)
    monkeypatch.setattr(method_gains, "run_job", fail)
    return root


HDRQ_ARGV = ["--families", "digits", "--seeds", "0", "1", "--bits", "W2A4", "--rows", "FP", "QDrop", "HDRQ"]


def test_hdrq_max_minutes_zero_stops_before_any_unit(no_data: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "BENCHMARKS.md"
    argv = [*HDRQ_ARGV, "--max-minutes", "0", "--workdir", str(tmp_path / "w"), "--evidence",
            str(tmp_path / "ev.json"), "--output", str(output), "--section", "hdrq_merge.regime"]
    assert hdrq_merge.main(argv) == _common.STOPPED_EXIT
    text = output.read_text()
    assert "## hdrq_merge.regime\n\n**partial: 0 of 6 units**\n" in text and "## hdrq_merge\n" not in text
    assert "digits seed 1 HDRQ W2A4" in text and "Pending (6 configuration(s)" in text
    printed = capsys.readouterr().out
    assert "0 of 6 units finished, 6 left" in printed and "python -m benchmarks.hdrq_merge --families digits" in printed


def hdrq_config(label: str, bits: str, harmonic: float) -> dict:
    entry = ConfigResult(label=label, bits=bits, rounding="fp" if bits == "FP" else "noise",
                         specialists={"photo_digits": 0.5, "noisy_digits": 0.5, "inverted_blur_digits": 0.5},
                         merged={"photo_digits": harmonic, "noisy_digits": harmonic, "inverted_blur_digits": harmonic},
                         harmonic=harmonic, merge_quality=0.5, error_barrier=0.0,
                         ptq_method="qdrop" if label == "QDrop" else "hdrq", draws=1, ptq_iterations=10,
                         ptq_loop_seconds=1.0, seconds=2.0)
    return hdrq_merge.unit_result([entry], {"ptq_stage": 1.0}, 2.0)


def committed_evidence(path: Path, skip: set[tuple[int, str]] = frozenset()) -> None:
    """A committed-style evidence file with the units of HDRQ_ARGV (except ``skip``), written by the real code."""
    args = hdrq_merge.parse_args([*HDRQ_ARGV, "--no-write"])
    store = _common.UnitStore(path.parent / "scratch", path)
    for seed in (0, 1):
        job = hdrq_merge._job(args, "digits", seed, "root", "work")
        for unit in hdrq_merge.job_units(job):
            if (seed, unit.label) in skip:
                continue
            fields = hdrq_merge.unit_fields(job, unit, DATA)
            value = {"FP": 0.40, "QDrop": 0.30 + 0.01 * seed, "HDRQ": 0.33 + 0.02 * seed}[unit.label]
            store.save(_common.unit_key(fields), fields, hdrq_config(unit.label, unit.bits, value))


def test_hdrq_section_rebuilt_from_committed_evidence_without_jobs(no_data: Path, tmp_path: Path) -> None:
    evidence, output = tmp_path / "benchmarks" / "results" / "hdrq_merge.regime.json", tmp_path / "BENCHMARKS.md"
    committed_evidence(evidence)
    argv = [*HDRQ_ARGV, "--workdir", str(tmp_path / "new-machine"), "--evidence", str(evidence), "--output",
            str(output), "--section", "hdrq_merge.regime"]
    assert hdrq_merge.main(argv) == 0
    text = output.read_text()
    assert "partial" not in text and "| digits | W2A4 | 40.00 | 30.50 | +9.50 (yes) | +3.00 / +4.00 |" in text
    assert "6 finished configuration(s) loaded from earlier runs" in text


def test_hdrq_partial_section_says_pending_for_the_interval(no_data: Path, tmp_path: Path) -> None:
    evidence, output = tmp_path / "ev.json", tmp_path / "BENCHMARKS.md"
    committed_evidence(evidence, skip={(1, "HDRQ")})
    argv = [*HDRQ_ARGV, "--workdir", str(tmp_path / "w"), "--evidence", str(evidence), "--output", str(output),
            "--max-minutes", "0"]
    assert hdrq_merge.main(argv) == _common.STOPPED_EXIT
    text = output.read_text()
    assert "**partial: 5 of 6 units**" in text and "digits seed 1 HDRQ W2A4" in text
    assert "pending (needs ≥ 2 seeds)" in text


def test_method_gains_max_minutes_zero_stops_before_any_unit(no_data: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "BENCHMARKS.md"
    argv = ["--families", "digits", "--max-minutes", "0", "--workdir", str(tmp_path / "w"), "--evidence",
            str(tmp_path / "ev.json"), "--output", str(output)]
    assert method_gains.main(argv) == _common.STOPPED_EXIT
    text = output.read_text()
    total = 2 * (1 + 2 * 3 + 2 * 3)  # seeds x (source + shared + runs)
    assert f"## method_gains\n\n**partial: 0 of {total} units**\n" in text
    assert "digits gsda run on noisy_digits seed 1" in text and "digits source_only source model" in text
    assert "python -m benchmarks.method_gains --families digits" in capsys.readouterr().out


def test_method_gains_section_rebuilt_from_committed_evidence(no_data: Path, tmp_path: Path) -> None:
    evidence, output = tmp_path / "method_gains.json", tmp_path / "BENCHMARKS.md"
    args = method_gains.parse_args(["--families", "digits", "--seeds", "0", "--no-write"])
    variants = method_gains.selected_variants(args.families, args.methods)
    make = lambda kind, v, targets, seed: method_gains.Job(kind, v, targets, seed, "r", "w", 1, False)  # noqa: E731
    store = _common.UnitStore(tmp_path / "scratch", evidence)
    for job in (j for phase in method_gains.phase_jobs(variants, [0], make) for j in phase):
        runs = [method_gains.RunResult("digits", job.variant.name, t, 0, 0.5 + 0.1 * (job.variant.name == "gsda"),
                                       [0.5] * 10, 3.0, 1.0) for t in job.targets] if job.kind != "shared" else []
        outcome = method_gains.JobOutcome(job, runs, 1.0 if job.kind == "shared" else None)
        fields = method_gains.job_fields(job, DATA)
        store.save(_common.unit_key(fields), fields, method_gains.outcome_result(outcome))
    argv = ["--families", "digits", "--seeds", "0", "--workdir", str(tmp_path / "w"), "--evidence", str(evidence),
            "--output", str(output)]
    assert method_gains.main(argv) == 0
    text = output.read_text()
    assert "partial" not in text and "gsda yes (+10.0)" in text


def test_hdrq_quick_resume_loads_the_finished_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--quick in-process: the first run stops after one configuration; the rerun loads it and runs the rest."""
    calls: list[str] = []
    real = hdrq_merge.score_configuration

    def counted(ctx, config, targets, label, *args, **kwargs):
        calls.append(label)
        return real(ctx, config, targets, label, *args, **kwargs)

    monkeypatch.setattr(hdrq_merge, "score_configuration", counted)
    monkeypatch.setattr(_common.Deadline, "passed", lambda self: self.at is not None and len(calls) >= 1)
    argv = ["--quick", "--families", "digits", "--rows", "FP", "QDrop", "--bits", "W4A4", "--workdir",
            str(tmp_path / "w")]
    assert hdrq_merge.main([*argv, "--max-minutes", "30"]) == _common.STOPPED_EXIT
    assert calls == ["FP"]
    assert hdrq_merge.main(argv) == 0
    assert calls == ["FP", "QDrop"]  # FP loaded, not recomputed
    assert len(list((tmp_path / "w" / "units").glob("*.json"))) == 2


# --------------------------------------------------------------------------------------------------------------
# hiast_gain and domain_gap: one run is one unit
# --------------------------------------------------------------------------------------------------------------

HIAST_ARGV = ["--targets", "day_city", "--seeds", "0", "--variants", "source_only", "hiast", "--parallel", "1"]


def hiast_result(job: hiast_gain.Job, miou: float) -> dict:
    """What run_job returns for a run (a HIAST one with the speed fields the tables read)."""
    result = {"variant": job.variant, "target": job.target, "seed": job.seed, "miou": miou, "iou": [miou] * 19,
              "run_seconds": 10.0, "heldout_eval_seconds": 1.0, "wall_seconds": 11.0}
    if job.variant in hiast_gain.ABLATIONS:
        result.update(iterations=10, batch_size=4, train_loop_seconds=8.0, pseudo_label_seconds=1.0,
                      progress_eval_seconds=0.5, warmup_fetch_seconds=0.1, pseudo_label_ratio=0.5, hard_classes="1")
    else:
        result["stage_seconds"] = 5.0
    return result


@pytest.fixture
def hiast_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, bool]]:
    """No data generation and no training: run_job records (variant, ...) and returns fixed scores."""
    root = tmp_path / "data"
    monkeypatch.setattr(hiast_gain, "prepare_benchmark_data", lambda *a, **k: root)
    monkeypatch.setattr(hiast_gain, "data_version", lambda folder: DATA)
    calls: list[str] = []

    def fake(job: hiast_gain.Job) -> dict:
        calls.append(job.variant)
        return hiast_result(job, 0.40 if job.variant == "hiast" else 0.30)

    monkeypatch.setattr(hiast_gain, "run_job", fake)
    return calls


def store_hiast_units(args_argv: list[str], store: _common.UnitStore, variants: set[str]) -> None:
    """Save the runs of ``variants`` as finished units, keyed by the real job_fields."""
    args = hiast_gain.parse_args(args_argv)
    make = lambda v, t, s: hiast_gain.Job(v, t, s, "root", "cache", 1, ())  # noqa: E731
    for job in (j for phase in hiast_gain.phase_jobs(args.variants, ["day_city"], args.seeds, make) for j in phase):
        if job.variant in variants:
            fields = hiast_gain.job_fields(job, DATA)
            store.save(_common.unit_key(fields), fields, hiast_result(job, 0.25))


def test_hiast_gain_unit_keys_differ_with_every_setting() -> None:
    def key(variant: str = "hiast", target: str = "day_city", seed: int = 0, overrides: tuple = (),
            data: dict | None = None, threads: int = 1, cache: str = "/c") -> str:
        job = hiast_gain.Job(variant, target, seed, "/data", cache, threads, overrides)
        return _common.unit_key(hiast_gain.job_fields(job, data or DATA))

    base = key()
    others = [key("no_ias"), key("no_r_cst"), key("source_only"), key("warm_up"), key(target="dusk_city"),
              key(seed=1), key(overrides=tuple(hiast_gain.QUICK.items())), key(overrides=(("rounds", 3),)),
              key(data={**DATA, "version": 6})]
    assert len({base, *others}) == len(others) + 1
    assert key(threads=2, cache="/elsewhere") == base  # not result-determining


def test_hiast_gain_max_minutes_zero_writes_a_partial_section_from_stored_runs(hiast_runs: list[str],
                                                                               tmp_path: Path, capsys) -> None:
    evidence, output = tmp_path / "hiast_gain.json", tmp_path / "BENCHMARKS.md"
    store_hiast_units(HIAST_ARGV, _common.UnitStore(tmp_path / "old-machine", evidence), {"source_only"})
    argv = [*HIAST_ARGV, "--max-minutes", "0", "--workdir", str(tmp_path / "w"), "--evidence", str(evidence),
            "--output", str(output)]
    assert hiast_gain.main(argv) == _common.STOPPED_EXIT
    assert hiast_runs == []  # nothing ran, not even the rebuild of the source stage
    text = output.read_text()
    assert text.count("## hiast_gain\n\n**partial: 1 of 2 runs**\n") == 1
    assert "| source_only | 25.00 (25.00) | 25.00 |" in text and "| hiast | - | - |" in text
    assert "Pending (1 run(s)" in text and "hiast on day_city seed 0" in text
    assert "HIAST beats source-only (seed mean): day_city: pending" in text
    printed = capsys.readouterr().out
    assert "1 of 2 runs finished, 1 left" in printed and "python -m benchmarks.hiast_gain --targets day_city" in printed


def test_hiast_gain_loads_a_run_finished_here_and_does_not_rerun_it(hiast_runs: list[str], tmp_path: Path) -> None:
    workdir, output = tmp_path / "w", tmp_path / "BENCHMARKS.md"
    store_hiast_units(HIAST_ARGV, _common.UnitStore(workdir / "units"), {"source_only"})  # this workdir's own
    argv = [*HIAST_ARGV, "--workdir", str(workdir), "--evidence", str(tmp_path / "ev.json"), "--output", str(output)]
    assert hiast_gain.main(argv) == 0
    assert hiast_runs == ["hiast"]  # source_only loaded; its stage is in this workdir's cache
    text = output.read_text()
    assert "partial" not in text and "| source_only | 25.00 (25.00) | 25.00 |" in text
    assert "| hiast | 40.00 (40.00) | 40.00 |" in text and "day_city: yes" in text
    assert "1 finished run(s) loaded from earlier runs" in text
    assert hiast_gain.main(argv) == 0 and hiast_runs == ["hiast"]  # everything finished: nothing runs again


def test_hiast_gain_rebuilds_the_stage_of_a_run_finished_elsewhere_without_saving(hiast_runs: list[str],
                                                                                  tmp_path: Path) -> None:
    evidence = tmp_path / "ev.json"
    store_hiast_units(HIAST_ARGV, _common.UnitStore(tmp_path / "old-machine", evidence), {"source_only"})
    argv = [*HIAST_ARGV, "--workdir", str(tmp_path / "new-machine"), "--evidence", str(evidence), "--output",
            str(tmp_path / "BENCHMARKS.md")]
    assert hiast_gain.main(argv) == 0
    assert hiast_runs == ["source_only", "hiast"]  # the cached source model rebuilt first, then the pending run
    assert "| source_only | 25.00 (25.00) | 25.00 |" in (tmp_path / "BENCHMARKS.md").read_text()  # kept, not resaved
    assert len(list((tmp_path / "new-machine" / "units").glob("*.json"))) == 1  # only the hiast run saved here


DOMAIN_ARGV = ["--families", "digits", "--seeds", "0"]


@pytest.fixture
def domain_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, str]]:
    """No data, chance baselines or training: prepare_family gives fixed sizes and chance; run_job records
    (kind, trained_on) and returns fixed scores."""
    from raysel import data

    family = data.get_family("digits")
    domains = (family.default_source, *family.default_targets)

    def prepared(name: str, root: Path) -> domain_gap.FamilyResult:
        return domain_gap.FamilyResult(family=family, chance={t: {"majority": 0.1, "uniform": 0.1}
                                                              for t in family.default_targets},
                                       sizes={d: {"train": 10, "test": 5, "heldout": 5} for d in domains},
                                       folder=tmp_path, data_identity="fixed data")

    monkeypatch.setattr(domain_gap, "prepare_family", prepared)
    monkeypatch.setattr(domain_gap, "data_version", lambda folder: DATA)
    monkeypatch.setattr(domain_gap, "data_identity", lambda folder: "fixed data")
    calls: list[tuple[str, str]] = []

    def fake(job: domain_gap.Job) -> dict:
        calls.append((job.kind, job.trained_on))
        return domain_result(job, 0.9)

    monkeypatch.setattr(domain_gap, "run_job", fake)
    return calls


def domain_result(job: domain_gap.Job, score: float) -> dict:
    return {"scores": {t: score for t in job.scored_targets()}, "train_seconds": 3.0, "eval_seconds": 1.0}


def store_domain_units(store: _common.UnitStore, kinds: set[str]) -> None:
    """Save the digits seed-0 runs of ``kinds`` (source-only at 40 %) as finished units."""
    args = domain_gap.parse_args([*DOMAIN_ARGV, "--no-write"])
    from raysel import data

    for job in domain_gap.family_jobs(data.get_family("digits"), args, Path("root"), {}, Path("w")):
        if job.kind in kinds:
            fields = domain_gap.job_fields(job, DATA)
            store.save(_common.unit_key(fields), fields, domain_result(job, 0.4))


def test_domain_gap_unit_keys_differ_with_every_setting() -> None:
    def key(kind: str = "oracle", family: str = "digits", trained_on: str = "photo_digits", seed: int = 0,
            overrides: tuple = (), data: dict | None = None, workdir: str = "/w", threads: int = 1) -> str:
        job = domain_gap.Job(kind, family, trained_on, seed, "/data", workdir, threads, overrides)
        return _common.unit_key(domain_gap.job_fields(job, data or DATA))

    base = key()
    others = [key("source-only", trained_on="clean_digits"), key(trained_on="noisy_digits"), key(seed=1),
              key(overrides=(("iterations", domain_gap.QUICK_ITERATIONS),)), key(data={**DATA, "version": 6}),
              key(family="street_scenes", trained_on="day_city")]
    assert len({base, *others}) == len(others) + 1
    assert key(workdir="/elsewhere", threads=2) == base  # not result-determining


def test_domain_gap_max_minutes_zero_writes_a_partial_section_from_stored_runs(domain_runs: list, tmp_path: Path,
                                                                               capsys) -> None:
    evidence, output = tmp_path / "domain_gap.json", tmp_path / "BENCHMARKS.md"
    store_domain_units(_common.UnitStore(tmp_path / "old-machine", evidence), {"source-only"})
    argv = [*DOMAIN_ARGV, "--max-minutes", "0", "--workdir", str(tmp_path / "w"), "--evidence", str(evidence),
            "--output", str(output)]
    assert domain_gap.main(argv) == _common.STOPPED_EXIT
    assert domain_runs == []
    text = output.read_text()
    assert text.count("## domain_gap\n\n**partial: 1 of 4 runs**\n") == 1
    assert "| photo_digits | 10.0 / 10.0 | 40.0 | **40.0** | - | - | - | - | yes |" in text
    assert "digits oracle trained on noisy_digits seed 0" in text and "**Requirements (pending)**" in text
    printed = capsys.readouterr().out
    assert "1 of 4 runs finished, 3 left" in printed and "python -m benchmarks.domain_gap --families digits" in printed


def test_domain_gap_loads_finished_runs_and_runs_only_the_rest(domain_runs: list, tmp_path: Path) -> None:
    evidence, output = tmp_path / "domain_gap.json", tmp_path / "BENCHMARKS.md"
    store_domain_units(_common.UnitStore(tmp_path / "old-machine", evidence), {"source-only"})
    argv = [*DOMAIN_ARGV, "--workdir", str(tmp_path / "w"), "--evidence", str(evidence), "--output", str(output)]
    assert domain_gap.main(argv) == 0
    assert domain_runs == [("oracle", "photo_digits"), ("oracle", "noisy_digits"), ("oracle", "inverted_blur_digits")]
    text = output.read_text()
    assert "partial" not in text and "| photo_digits | 10.0 / 10.0 | 40.0 | **40.0** | 90.0 | **90.0** | **50.0** |" in text
    assert "**Requirements (met)**" in text and "1 finished run(s) loaded from earlier runs" in text
    assert domain_gap.main(argv) == 0 and len(domain_runs) == 3  # all finished: nothing runs again
