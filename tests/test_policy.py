"""policy/exit_policy.py: an ExitPolicy's thresholds, temperatures and fallback are checked, and a thresholds.json
written for another model is refused."""
from __future__ import annotations

import json

import pytest

from scan_lightning.cost import measure_costs
from scan_lightning.policy import ExitPolicy, check_thresholds
from scan_lightning.runtime import EarlyExitRunner
from tests.helpers.networks import small_net


@pytest.mark.parametrize("thresholds,needle", [
    ([0.9, 0.9, 1.2, 0.9], "outside (0, 1]"),
    ([0.9, 0.0, 0.9, 0.9], "outside (0, 1]"),
    ([0.9, 0.9, 0.9], "holds thresholds for 3 exits, but this network has 4"),
])
def test_bad_thresholds(thresholds, needle):
    net = small_net()
    with pytest.raises(ValueError) as err:
        EarlyExitRunner(net, ExitPolicy.create(thresholds), measure_costs(net, (3, 32, 32)))
    assert needle in str(err.value)


def test_thresholds_file_from_another_model(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"num_exits": 3, "thresholds": [0.9, 0.9, 0.9], "temperatures": [1, 1, 1]}))
    with pytest.raises(ValueError, match="thresholds for 3 exits, but this network has 4"):
        ExitPolicy.load(path, 4)
    path.write_text(json.dumps({"num_exits": 4, "thresholds": [0.9, 0.9, 0.9, 0.9], "temperatures": [1] * 4}))
    assert ExitPolicy.load(path, 4) == ExitPolicy((0.9,) * 4, (1.0,) * 4, "ensemble")
    path.write_text(json.dumps({"num_exits": 4, "thresholds": [0.9] * 4, "fallback": "median"}))
    with pytest.raises(ValueError, match="fallback='median'"):
        ExitPolicy.load(path, 4)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="thresholds.json is not valid JSON"):
        ExitPolicy.load(path, 4)


def test_check_thresholds_temperatures():
    with pytest.raises(ValueError, match="temperatures"):
        check_thresholds([0.9] * 4, 4, [1.0, 1.0, 0.0, 1.0])


def test_thresholds_saved_for_another_model_are_refused(tmp_path):
    saved = tmp_path / "thresholds.json"
    saved.write_text(json.dumps({"thresholds": [0.9, 0.9, 0.9, 0.9], "fallback": "ensemble",
                                 "model": {"input_shape": [1, 28, 28], "num_exits": 4, "num_classes": 10}}))
    same = {"input_shape": [1, 28, 28], "num_exits": 4, "num_classes": 10}
    assert ExitPolicy.load(saved, 4, same).thresholds == (0.9, 0.9, 0.9, 0.9)
    with pytest.raises(ValueError, match=r"was searched for another model \(input_shape \[1, 28, 28\]; this model: "
                                         r"\[3, 32, 32\]\)"):
        ExitPolicy.load(saved, 4, {**same, "input_shape": [3, 32, 32]})
    with pytest.raises(ValueError, match=r"num_classes 10; this model: 100"):
        ExitPolicy.load(saved, 4, {**same, "num_classes": 100})
    saved.write_text("{not json")
    with pytest.raises(ValueError, match=f"{saved} is not valid JSON"):
        ExitPolicy.load(saved, 4)
