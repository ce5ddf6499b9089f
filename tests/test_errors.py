"""Unknown names suggest near misses: the helper itself, and each registry that uses it (method, selector, model,
dataset family)."""

from __future__ import annotations

import pytest

from raysel.data import get_family
from raysel.errors import ConfigError, unknown_name_error
from raysel.models import build_model
from raysel.registry import get_method
from raysel.selection.selectors import get_selector


def test_unknown_name_error_suggests_near_misses_and_lists_every_choice() -> None:
    error = unknown_name_error("method", "hiats", ["gsda", "hiast", "sfda"], "registered methods")
    assert str(error) == "unknown method 'hiats'; did you mean 'hiast'? (registered methods: gsda, hiast, sfda)"
    assert "did you mean 'hiast'" in str(unknown_name_error("method", "HIAST", ["gsda", "hiast"]))  # case only
    far = unknown_name_error("dataset", "kitti", ["digits", "office31"])
    assert str(far) == "unknown dataset 'kitti'; valid choices: digits, office31"  # nothing close: no guess
    assert "did you mean" not in str(unknown_name_error("method", 3, ["hiast"]))  # not a string: listed only


@pytest.mark.parametrize("lookup, fragment", [
    (lambda: get_method("hiats"), r"unknown method 'hiats'; did you mean 'hiast'\? \(registered methods: .*sfda"),
    (lambda: get_selector("fmiuo"), r"unknown selector 'fmiuo'; did you mean 'fmiou'.*\(valid selectors: .*fmiou"),
    (lambda: build_model("small_segnt", "segmentation", 19),
     r"unknown segmentation model 'small_segnt'; did you mean 'small_segnet'\? \(valid models: "),
    (lambda: get_family("street_scene"), r"unknown dataset 'street_scene'; did you mean 'street_scenes'\? "),
])
def test_every_registry_suggests_the_near_miss(lookup, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        lookup()
