"""Search-space YAML: parsing, validation with file/line/key messages, overrides, Ray Tune conversion."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from raysel.errors import ConfigError
from raysel.search_space import SearchEntry, SearchSpace, load_search_space

REPO = Path(__file__).resolve().parent.parent

EXAMPLE = """\
# HIAST-like example: every kind of entry
alpha:    {grid: [0.2, 0.35, 0.5, 0.65, 0.8]}
gamma:    {choice: [2.0, 4.0, 8.0]}
lambda_i: {loguniform: [1e-1, 3.0]}   # YAML 1.2 float spelling
lambda_c: {uniform: [0.0, 0.3]}
k:        {randint: [4, 10]}          # inclusive bounds
beta:     0.9
"""


@dataclasses.dataclass
class FakeConfig:
    alpha: float = 0.5
    beta: float = 0.999
    gamma: float = 8.0
    k: int = 4
    lambda_i: float = 1.0
    lambda_c: float = 0.1
    use_ias: bool = True
    bits: tuple[int, ...] = (4, 8)
    baseline: str = "hdrq"
    num_groups: int | None = None


@dataclasses.dataclass(frozen=True)
class FakeMethod:
    """Stands in for registry.Method: only ``name``, ``config_class`` and ``hyperparameter_names()`` are used."""

    name: str = "fake"
    config_class: type = FakeConfig

    def hyperparameter_names(self) -> list[str]:
        return [field.name for field in dataclasses.fields(self.config_class)]


def write(tmp_path: Path, text: str, name: str = "fake.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> SearchSpace:
    return load_search_space(write(tmp_path, text), FakeMethod())


def test_every_entry_kind_is_parsed(tmp_path: Path) -> None:
    space = load_text(tmp_path, EXAMPLE)
    kinds = {name: (entry.kind, entry.values) for name, entry in space.entries.items()}
    assert kinds == {
        "alpha": ("grid", (0.2, 0.35, 0.5, 0.65, 0.8)),
        "gamma": ("choice", (2.0, 4.0, 8.0)),
        "lambda_i": ("loguniform", (0.1, 3.0)),
        "lambda_c": ("uniform", (0.0, 0.3)),
        "k": ("randint", (4, 10)),
        "beta": ("fixed", (0.9,)),
    }
    assert space.num_grid_points() == 5
    assert space.swept_names() == ["alpha", "gamma", "lambda_i", "lambda_c", "k"]
    assert space.fixed_values() == {"beta": 0.9}
    assert "randint [4, 10] (inclusive)" in "\n".join(space.describe())


def test_grid_points_multiply_and_empty_file_means_defaults(tmp_path: Path) -> None:
    space = load_text(tmp_path, "alpha: {grid: [0.2, 0.5]}\nuse_ias: {grid: [true, false]}\nk: {grid: [4, 6, 8]}\n")
    assert space.num_grid_points() == 12
    empty = load_text(tmp_path, "# nothing swept: every hyperparameter keeps its dataclass default\n")
    assert empty.entries == {} and empty.num_grid_points() == 1


def test_list_typed_and_optional_fixed_values(tmp_path: Path) -> None:
    space = load_text(tmp_path, "bits: [2, 4]\nnum_groups: null\nbaseline: {choice: [brecq, qdrop, hdrq]}\n")
    assert space.entries["bits"].value == [2, 4]
    assert space.entries["num_groups"].value is None
    assert space.entries["baseline"].values == ("brecq", "qdrop", "hdrq")


def test_round_trip_through_to_dict(tmp_path: Path) -> None:
    space = load_text(tmp_path, EXAMPLE + "bits: {grid: [[2, 4], [4, 8]]}\n")
    again = SearchSpace.from_dict(space.to_dict(), FakeMethod())
    assert again.entries == space.entries


def test_unknown_key_names_file_line_key_and_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "alpha: 0.5\n\nlamda_i: 1.0\n")
    with pytest.raises(ConfigError) as caught:
        load_search_space(path, FakeMethod())
    message = str(caught.value)
    assert message.startswith(f"{path}, line 3: unknown hyperparameter 'lamda_i'; did you mean 'lambda_i'")
    assert "(valid keys for fake: alpha, beta, gamma, k, lambda_i" in message


def test_malformed_yaml_reports_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "alpha: {grid: [0.2, 0.5]}\nbeta: 0.9\ngamma: {choice: [2.0, 4.0}\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 3: invalid YAML: "):
        load_search_space(path, FakeMethod())
    path = write(tmp_path, "alpha: 0.5\n  beta: 0.9\n")
    with pytest.raises(ConfigError, match=r", line 2: invalid YAML: mapping values are not allowed here"):
        load_search_space(path, FakeMethod())


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"search space file {tmp_path / 'nope.yaml'} does not exist"):
        load_search_space(tmp_path / "nope.yaml", FakeMethod())


@pytest.mark.parametrize("text, expected", [
    ("- alpha\n", r"line 1: a search space must be a mapping"),
    ("alpha: {grid: []}\n", r"line 1: hyperparameter 'alpha': grid needs a non-empty list"),
    ("alpha: {gird: [0.2]}\n", r"exactly one of grid, choice, uniform, loguniform, randint"),
    ("alpha: {grid: [0.2], choice: [0.3]}\n", r"exactly one of"),
    ("beta: 0.9\nalpha: [0.2, 0.5]\n", r"line 2: hyperparameter 'alpha': a bare list is a fixed value only for "
                                       r"list-typed hyperparameters; to sweep it write \{grid: \[0.2, 0.5\]\}"),
    ("alpha: {uniform: [0.5, 0.5]}\n", r"uniform needs finite bounds \[low, high\] with low < high"),
    ("alpha: {uniform: [0.1]}\n", r"uniform needs \[low, high\] \(two numbers\)"),
    ("lambda_i: {loguniform: [0.0, 1.0]}\n", r"loguniform needs 0 < low < high"),
    ("k: {randint: [4.5, 10]}\n", r"randint needs integer bounds"),
    ("k: {randint: [10, 4]}\n", r"randint needs integer bounds \[low, high\] with low <= high"),
    ("k: {uniform: [4, 10]}\n", r"'k': uniform draws floats but this hyperparameter is an integer; use randint"),
    ("k: 4.5\n", r"'k': value 4.5: int field expects an integer"),
    ("use_ias: {grid: [true, 0.5]}\n", r"'use_ias': grid value 0.5: bool field expects true or false"),
    ("baseline: {uniform: [0.0, 1.0]}\n", r"'baseline': uniform needs a numeric hyperparameter"),
    ("alpha:\n", r"'alpha': no value given"),
    ("alpha: 0.5\nalpha: 0.6\n", r"line 2: hyperparameter 'alpha' appears twice"),
    ("alpha: {grid: [0.2], grid: [0.3]}\n", r"line 1: invalid YAML: duplicate key 'grid'"),
])
def test_wrong_entries_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_search_space(path, FakeMethod())
    assert str(caught.value).startswith(str(path))


def test_overrides_fix_sweep_and_refuse_unknown_keys(tmp_path: Path) -> None:
    space = load_text(tmp_path, EXAMPLE)
    space.apply_overrides(["alpha=0.5", "k={grid: [4, 6]}", "lambda_i=1e-3", "use_ias=false"])
    assert space.entries["alpha"].kind == "fixed" and space.entries["alpha"].value == 0.5
    assert space.entries["k"].kind == "grid" and space.entries["k"].values == (4, 6)
    assert space.entries["lambda_i"].value == 0.001  # 1e-3 is a float, not a string
    assert space.entries["use_ias"].value is False
    assert space.num_grid_points() == 2

    with pytest.raises(ConfigError, match=r"^--set lamda=1: unknown hyperparameter 'lamda'; did you mean 'lambda_i'"
                                          r".*\(valid keys for fake: alpha, beta"):
        space.apply_overrides(["lamda=1"])
    assert space.overrides == ["alpha=0.5", "k={grid: [4, 6]}", "lambda_i=1e-3", "use_ias=false"]
    with pytest.raises(ConfigError, match=r"^--set alpha: expected key=value"):
        space.apply_overrides(["alpha"])
    with pytest.raises(ConfigError, match=r"^--set alpha=: no value"):
        space.apply_overrides(["alpha="])
    with pytest.raises(ConfigError, match=r"^--set k=x: hyperparameter 'k': value 'x': int field"):
        space.apply_overrides(["k=x"])
    with pytest.raises(ConfigError, match=r"^--set alpha=\{grid: \[1: the value is not valid YAML"):
        space.apply_overrides(["alpha={grid: [1"])


def test_to_tune_grid_and_random_use_grid_search(tmp_path: Path) -> None:
    from ray import tune
    from ray.tune.search.sample import Categorical, Float, Integer

    space = load_text(tmp_path, EXAMPLE)
    for search in ("grid", "random"):
        tuned = space.to_tune(search)
        assert tuned["alpha"] == tune.grid_search([0.2, 0.35, 0.5, 0.65, 0.8])
        assert isinstance(tuned["gamma"], Categorical) and tuned["gamma"].categories == [2.0, 4.0, 8.0]
        assert isinstance(tuned["lambda_i"], Float) and (tuned["lambda_i"].lower, tuned["lambda_i"].upper) == (0.1, 3.0)
        assert isinstance(tuned["lambda_c"], Float)
        assert isinstance(tuned["k"], Integer)
        assert tuned["beta"] == 0.9
    # randint bounds are inclusive in the YAML: Tune's exclusive upper bound is high + 1.
    samples = space.to_tune("random")["k"].sample(size=400)
    assert min(samples) == 4 and max(samples) == 10
    logs = space.to_tune("random")["lambda_i"].sample(size=200)
    assert all(0.1 <= value <= 3.0 for value in logs)
    with pytest.raises(ConfigError, match="unknown search algorithm 'bayes'; valid: grid, random, optuna"):
        space.to_tune("bayes")


def test_to_tune_for_optuna_turns_grids_into_choices(tmp_path: Path) -> None:
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.sample import Categorical

    space = load_text(tmp_path, EXAMPLE)
    tuned = space.to_tune("optuna")
    assert isinstance(tuned["alpha"], Categorical) and tuned["alpha"].categories == [0.2, 0.35, 0.5, 0.65, 0.8]
    converted = OptunaSearch.convert_search_space(tuned)  # what OptunaSearch does with a param_space
    assert set(converted) == {"alpha", "gamma", "lambda_i", "lambda_c", "k"}  # name -> optuna distribution
    with pytest.raises(ValueError):  # the Ray limitation this conversion works around
        OptunaSearch.convert_search_space(space.to_tune("grid"))


def test_parsing_does_not_import_ray(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    script = (
        "import dataclasses, sys\n"
        "from raysel.search_space import load_search_space\n"
        "@dataclasses.dataclass\n"
        "class C:\n    alpha: float = 0.5\n    beta: float = 0.9\n    gamma: float = 8.0\n    k: int = 4\n"
        "    lambda_i: float = 1.0\n    lambda_c: float = 0.1\n"
        "class M:\n    name = 'm'\n    config_class = C\n"
        "    def hyperparameter_names(self): return [f.name for f in dataclasses.fields(C)]\n"
        f"space = load_search_space({str(path)!r}, M()).apply_overrides(['alpha=0.3'])\n"
        "assert space.num_grid_points() == 1\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_shipped_search_spaces_parse_against_their_methods() -> None:
    """Every search_spaces/*.yaml of a registered method loads (skipped until methods are registered)."""
    if not list((REPO / "search_spaces").glob("*.yaml")):
        pytest.skip("no search_spaces/*.yaml yet")
    from raysel.registry import get_method, method_names

    names = [name for name in method_names() if get_method(name).search_space_path.exists()]
    if not names:
        pytest.skip("no registered method with a search_spaces/METHOD.yaml yet")
    for name in names:
        method = get_method(name)
        space = load_search_space(method.search_space_path, method)
        assert space.num_grid_points() >= 1
        space.to_tune("grid")
        space.to_tune("optuna")


def test_a_key_of_another_method_says_whose_it_is(tmp_path: Path) -> None:
    space = SearchSpace.empty(FakeMethod(), owners_elsewhere={"rounds": ("hiast", "t2sda")})
    with pytest.raises(ConfigError) as caught:
        space.apply_overrides(["rounds=2"])
    assert str(caught.value).startswith("--set rounds=2: 'rounds' is a hyperparameter of hiast, t2sda, not of fake "
                                        "(valid keys for fake: alpha, beta")


def test_checked_space_is_frozen_and_reads_back_from_its_saved_form(tmp_path: Path) -> None:
    from raysel.search_space import CheckedSpace

    space = load_text(tmp_path, EXAMPLE + "bits: [2, 4]\nnum_groups: {grid: [2, 3]}\n").apply_overrides(["k=5"])
    checked = space.checked()
    assert checked.path == str(tmp_path / "fake.yaml") and checked.overrides == ("k=5",)
    assert dict(checked.fixed_values())["bits"] == (2, 4) and hash(checked)
    assert (checked.num_grid_points(), checked.swept_names()) == (10, ("alpha", "gamma", "lambda_i", "lambda_c",
                                                                        "num_groups"))
    assert ("lambda_i", 0.1) in list(checked.candidate_values()) and ("num_groups", 3) in checked.candidate_values()
    assert CheckedSpace.from_dict(checked.to_dict(), checked.path, checked.overrides) == checked
    assert checked.to_tune("grid")["bits"] == [2, 4]  # Tune gets plain lists, as before


def test_an_entry_holds_its_values_and_its_range_bounds_inclusive() -> None:
    assert SearchEntry("alpha", "choice", (0.3, 0.7)).holds(0.7) and not SearchEntry("alpha", "grid", (0.3,)).holds(0.5)
    assert SearchEntry("lr", "loguniform", (1e-4, 1e-2)).holds(1e-2)
    assert not SearchEntry("lr", "uniform", (0, 1)).holds(2)
    assert SearchEntry("k", "randint", (10, 18)).holds(14) and not SearchEntry("k", "randint", (10, 18)).holds(14.5)
    assert not SearchEntry("k", "uniform", (0, 1)).holds(True) and SearchEntry("k", "fixed", (14,)).holds(14)
