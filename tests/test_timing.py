"""Timing the deployment form: the per-section latency table (cost/latency.py), the wall clock of real early
exit against the plain network on the same images, its median and quartiles and its wording
(runtime/timing.py), and the timing settings' checks."""
from __future__ import annotations

import pytest
import torch

from scan_lightning.cost import measure_costs
from scan_lightning.cost.latency import LatencyTable
from scan_lightning.export import deploy
from scan_lightning.policy import ExitPolicy
from scan_lightning.runtime.early_exit import EarlyExitRunner
from scan_lightning.runtime.forms import DeployOptions
from scan_lightning.runtime.settings import TimingSettings
from scan_lightning.runtime.timing import SideTiming, TimingResult, measure_latency, measure_wall_clock, speed_phrase
from tests.helpers.networks import scan_net


def test_latency_table_adds_up():
    net = deploy(scan_net())
    table = measure_latency(net, torch.randn(8, 3, 32, 32), batch_size=4, repeats=3)
    cum = table.cumulative_ms
    assert cum.shape == (4,) and bool((cum[1:] > cum[:-1]).all())
    assert table.exit_ms[-1] == table.exit_ms[-2] == cum[-1]              # the fallback ran everything
    assert table.plain_ms == pytest.approx(sum(table.section_ms) + table.deep_head_ms)
    assert LatencyTable.from_dict(table.to_dict()) == table


def test_wall_clock_reports_both_sides_and_percentiles():
    net = scan_net()
    costs = measure_costs(net, (3, 32, 32))
    dep = deploy(net)
    images, policy = torch.randn(8, 3, 32, 32) * 3, ExitPolicy.create([0.5] * 4)
    res = measure_wall_clock(dep, costs, policy, images, (1, 4), repeats=2)
    assert [r.batch_size for r in res] == [1, 4]
    paid = EarlyExitRunner(dep, policy, costs)(images).macs.double().mean().item()
    for r in res:
        d = r.to_dict()
        assert r.images == 8 and d["early_exit"]["call_p50_ms"] <= d["early_exit"]["call_p95_ms"]
        assert TimingResult.from_dict(d) == r          # thresholds.json keeps every measured figure
        assert r.mac_speedup == pytest.approx(costs.plain_macs / paid)   # the MACs the timed predictor paid


def test_side_timing_median_and_quartiles():
    t = SideTiming.from_calls([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [10.0, 10.0]], images=2)
    assert t.ms_per_image == pytest.approx(2.5) and t.ms_per_image_q1 <= 2.5 <= t.ms_per_image_q3
    assert t.call_p50_ms in (2.0, 3.0) and t.call_p95_ms == 10.0


def test_speed_phrases_never_say_fewer():
    assert speed_phrase(1.3) == "1.30x faster"
    assert speed_phrase(0.8) == "0.80x the speed"


def test_bad_deploy_and_timing_settings_are_one_clear_error():
    with pytest.raises(ValueError, match=r"timing.deploy has unknown keys \['fuse'\]"):
        TimingSettings.from_config({"deploy": {"fuse": True}})
    with pytest.raises(ValueError, match=r"must be true or false; got \{'retain_memory': 'no'\}"):
        TimingSettings.from_config({"deploy": {"retain_memory": "no"}})     # bool("no") would have been True
    with pytest.raises(ValueError, match="timing.batch_sizes"):
        TimingSettings.from_config({"batch_sizes": [0]})
    with pytest.raises(ValueError, match=r"timing has unknown keys \['image'\]"):
        TimingSettings.from_config({"image": 5})
    with pytest.raises(ValueError, match="compile and onnxruntime exclude each other"):
        DeployOptions(compile=True, onnxruntime=True)


def test_settings_defaults_come_from_the_yaml():
    """The YAML is the one home of the defaults: a partial node is filled from it, so the two cannot disagree."""
    from omegaconf import OmegaConf

    from scan_lightning.policy.settings import SearchSettings
    from scan_lightning.utils.defaults import config_dir

    timing_yaml = OmegaConf.load(config_dir() / "timing" / "default.yaml")
    timing = TimingSettings.from_config({"images": 7})
    assert timing.images == 7 and timing.repeats == timing_yaml.repeats
    assert timing.batch_sizes == tuple(timing_yaml.batch_sizes) and timing.deploy.to_dict() == dict(timing_yaml.deploy)
    search_yaml = OmegaConf.load(config_dir() / "search" / "default.yaml")
    search = SearchSettings.from_config({"ga": {"population": 12}})
    assert search.ga.population == 12 and search.ga.generations == search_yaml.ga.generations
    assert search.fallback == search_yaml.fallback and search.budget_steps == search_yaml.budget_steps
