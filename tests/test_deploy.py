"""The deployment form (BN folding, patch GEMMs, channels-last), the predictor on it, latency tables,
latency-aware and calibrated threshold search, budget picking and the timing report's wording."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from scan_lightning.inference import ExitCache, ExitPolicy, measure_costs
from scan_lightning.inference.analysis import Scorer, pick_budget, search_and_score
from scan_lightning.inference.deploy import DeployedNetwork, DeployOptions, PatchMatmul, deploy
from scan_lightning.inference.latency import LatencyTable, measure_latency
from scan_lightning.inference.predictor import EarlyExitPredictor
from scan_lightning.inference.timing import SideTiming, measure_wall_clock, speed_phrase
from scan_lightning.models import MultiExitNetwork, build_backbone


def scan_net(isc: str | None = None) -> MultiExitNetwork:
    net = MultiExitNetwork(build_backbone("resnet18", width=0.125), 5, bottleneck_width=8, isc=isc)
    for m in net.modules():  # non-trivial BatchNorm statistics, so folding has something to fold
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def msdnet() -> MultiExitNetwork:
    backbone = build_backbone("msdnet", num_blocks=3, base=1, step=1, channels=4, growth=2)
    return MultiExitNetwork(backbone, 5, head="msdnet", deep_head="msdnet", attention=False, bottleneck_width=8).eval()


NETS = {"scan": scan_net, "scan_isc_linear": lambda: scan_net("linear"), "scan_isc_identity": lambda: scan_net("identity")}


@pytest.mark.parametrize("name", list(NETS))
def test_deployment_form_keeps_every_exit_and_removes_batchnorm(name):
    net = NETS[name]()
    x = torch.randn(6, 3, 32, 32) * 2
    ref = DeployedNetwork(net).all_exits(x)
    dep = deploy(net)
    for a, b in zip(ref, dep.all_exits(x)):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(dep.plain(x), DeployedNetwork(net).plain(x), atol=2e-4, rtol=2e-4)
    if net.isc != "identity":   # identity ISC adds the previous logits, which the plain network has not got
        torch.testing.assert_close(dep.plain(x), ref[-1], atol=2e-4, rtol=2e-4)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in dep.modules())
    assert sum(isinstance(m, PatchMatmul) for m in dep.modules()) == 3   # exits 1-3: 8x8/8, 4x4/4, 2x2/2 convs
    conv = next(m for m in dep.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # the network it came from is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_patch_matmul_equals_the_strided_conv_on_odd_sizes():
    conv = nn.Conv2d(6, 7, kernel_size=4, stride=4)
    x = torch.randn(3, 6, 13, 10)   # 13 and 10 do not divide by 4: the conv drops the border, so must the GEMM
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.testing.assert_close(PatchMatmul(conv)(x.contiguous(memory_format=fmt)), conv(x), atol=1e-5, rtol=1e-5)


def test_msdnet_deployment_form_keeps_outputs():
    net = msdnet()
    x = torch.randn(4, 3, 32, 32)
    for a, b in zip(DeployedNetwork(net).all_exits(x), deploy(net).all_exits(x)):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name", ["scan", "scan_isc_linear"])
def test_predictor_on_the_deployment_form_equals_compute_all_then_choose(batch, name):
    g = torch.Generator().manual_seed(batch)
    net = NETS[name]()
    dep = deploy(net)
    x = torch.randn(64, 3, 32, 32, generator=g) * 3
    logits = dep.all_exits(x)
    conf = torch.stack([torch.softmax(lg, -1).max(-1).values for lg in logits])
    lo, hi = conf.min(1).values, conf.max(1).values
    thresholds = (lo + (hi - lo) * torch.rand(4, generator=g)).tolist()
    predictor = EarlyExitPredictor(dep, ExitPolicy.create(thresholds, fallback="ensemble"), measure_costs(net, (3, 32, 32)))
    got = [predictor(xb) for xb in x.split(batch)]
    exits = torch.cat([r.exit_index for r in got])
    fired = conf > torch.tensor(thresholds)[:, None]
    ref_exits = torch.where(fired.any(0), fired.float().argmax(0), torch.tensor(4))
    assert torch.equal(exits, ref_exits)
    stacked = torch.stack(logits)
    ref_pred = torch.where(ref_exits < 4, stacked.argmax(-1).gather(0, ref_exits.clamp(max=3)[None])[0],
                           stacked.mean(0).argmax(-1))
    assert torch.equal(torch.cat([r.prediction for r in got]), ref_pred)
    if batch == 64:
        assert len(set(exits.tolist())) >= 3


def test_latency_table_adds_up():
    net = deploy(scan_net())
    table = measure_latency(net, torch.randn(8, 3, 32, 32), batch_size=4, repeats=3)
    cum = table.cumulative_ms
    assert cum.shape == (4,) and bool((cum[1:] > cum[:-1]).all())
    assert table.exit_ms[-1] == table.exit_ms[-2] == cum[-1]              # the fallback ran everything
    assert table.plain_ms == pytest.approx(sum(table.section_ms) + table.deep_head_ms)
    assert LatencyTable.from_dict(table.to_dict()) == table


def toy_cache(n: int = 400, k: int = 3, classes: int = 4, seed: int = 0, signal: tuple = (1.0, 3.0)) -> ExitCache:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    logits = torch.randn(k, n, classes, generator=g)
    logits[torch.arange(k)[:, None], torch.arange(n)[None], y[None]] += torch.linspace(*signal, k)[:, None]
    noisy = torch.rand(n, generator=g) < 0.2                          # a fifth of the labels are wrong
    y = torch.where(noisy, torch.randint(classes, (n,), generator=g), y)
    return ExitCache(logits * 3, y)   # over-confident, so calibration has work to do


class FakeCosts:
    """A cost table stand-in: MACs 1, 2, 3 per exit, plain network 2.5."""

    cumulative_macs = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    plain_macs, ensemble_macs = 2.5, 3.0

    def to_dict(self) -> dict:
        return {"plain_macs": self.plain_macs}


def test_latency_cost_changes_what_the_ga_optimises():
    val, test = toy_cache(seed=0, signal=(2.0, 3.0)), toy_cache(seed=1, signal=(2.0, 3.0))
    costs = FakeCosts()
    # in MACs exit 2 costs twice exit 1; in time it costs the same (section 2 is nearly free): a latency search
    # lets samples go on to the more accurate exit 2, a MAC search stops some at exit 1
    slow_first = LatencyTable(1, "cpu", [1.0, 0.01, 1.0], [0.01, 0.01, 0.01], 0.01)
    search = {"ga": {"population": 40, "generations": 30, "beta": 50.0, "seed": 1}, "fallback": "deepest",
              "budget_steps": 5}
    by_macs = search_and_score(val, test, costs, {**search, "cost": "macs"}, slow_first)
    by_time = search_and_score(val, test, costs, {**search, "cost": "latency"}, slow_first)
    assert by_time["cost"] == "latency" and by_macs["cost"] == "macs"
    assert by_time["val"]["exit_fractions"][0] < by_macs["val"]["exit_fractions"][0]
    for res in (by_macs, by_time):   # both costs reported for every searched point
        assert {"mean_macs", "mean_ms", "speedup_plain", "latency_speedup_plain"} <= set(res["test"])
        assert all("mean_ms" in r and "val_mean_ms" in r for r in res["budgeted"])
    with pytest.raises(ValueError, match="needs a latency table"):
        search_and_score(val, test, costs, {**search, "cost": "latency"}, None)


def test_calibrated_search_fits_temperatures_on_data_the_ga_never_sees():
    val, test = toy_cache(seed=0), toy_cache(seed=1)
    search = {"ga": {"population": 20, "generations": 5}, "budget_steps": 3,
              "calibration": {"enabled": True, "fraction": 0.25, "n_bins": 10}}
    res = search_and_score(val, test, FakeCosts(), search)
    cal = res["calibration"]
    assert cal["fitted_on"] == 100 and cal["reported_on"] == 300
    assert all(t > 1.2 for t in res["temperatures"])                   # over-confident logits: T > 1
    assert sum(cal["ece_test_after"]) < sum(cal["ece_test_before"])
    # the policy carries the temperatures, and scoring used them
    policy = ExitPolicy.from_dict(res, 3)
    assert policy.temperatures == tuple(res["temperatures"])
    with pytest.raises(ValueError, match="fraction=1.5"):
        search_and_score(val, test, FakeCosts(), {**search, "calibration": {"enabled": True, "fraction": 1.5}})


def test_budget_is_picked_on_validation_costs():
    result = {"temperatures": [1.0, 1.0], "fallback": "ensemble", "budgeted": [
        {"thresholds": [0.9, 0.5], "val_mean_macs": 10.0, "val_accuracy": 0.8, "mean_macs": 1.0},
        {"thresholds": [0.99, 0.5], "val_mean_macs": 20.0, "val_accuracy": 0.9, "mean_macs": 1.0},
        {"thresholds": [0.999, 0.5], "val_mean_macs": 30.0, "val_accuracy": 0.95, "mean_macs": 1.0}]}
    assert pick_budget(result, macs=25).thresholds == (0.99, 0.5)
    assert pick_budget(result, macs=1e9).thresholds == (0.999, 0.5)
    with pytest.raises(ValueError, match="below the cheapest budgeted point"):
        pick_budget(result, macs=5)
    with pytest.raises(ValueError, match="no budgeted curve with val_mean_ms"):
        pick_budget(result, ms=3.0)


def test_wall_clock_reports_both_sides_and_percentiles():
    net = scan_net()
    costs = measure_costs(net, (3, 32, 32))
    dep = deploy(net)
    images, policy = torch.randn(8, 3, 32, 32) * 3, ExitPolicy.create([0.5] * 4)
    res = measure_wall_clock(dep, costs, policy, images, (1, 4), repeats=2)
    assert [r.batch_size for r in res] == [1, 4]
    paid = EarlyExitPredictor(dep, policy, costs)(images).macs.double().mean().item()
    for r in res:
        d = r.to_dict()
        assert r.images == 8 and d["early_exit"]["call_p50_ms"] <= d["early_exit"]["call_p95_ms"]
        assert r.wall_speedup == pytest.approx(r.full.ms_per_image / r.early_exit.ms_per_image)
        assert r.mac_speedup == pytest.approx(costs.plain_macs / paid)   # the MACs the timed predictor paid


def test_side_timing_median_and_quartiles():
    t = SideTiming.from_calls([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [10.0, 10.0]], images=2)
    assert t.ms_per_image == pytest.approx(2.5) and t.ms_per_image_q1 <= 2.5 <= t.ms_per_image_q3
    assert t.call_p50_ms in (2.0, 3.0) and t.call_p95_ms == 10.0


def test_speed_phrases_never_say_fewer():
    assert speed_phrase(1.3) == "1.30x faster"
    assert speed_phrase(0.8) == "0.80x the speed"


def test_scorer_speedups():
    cache = toy_cache()
    scorer = Scorer(FakeCosts(), LatencyTable(1, "cpu", [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], 0.1))
    res = scorer(cache, ExitPolicy.create([1.0, 1.0, 1e-6]))    # everyone leaves at the last exit
    assert res["mean_macs"] == 3.0 and res["speedup_plain"] == pytest.approx(2.5 / 3.0)
    assert res["mean_ms"] == pytest.approx(4.5) and res["latency_speedup_plain"] == pytest.approx(3.1 / 4.5)


def test_bad_deploy_and_timing_settings_are_one_clear_error():
    from scan_lightning.inference.pipeline import check_timing

    with pytest.raises(ValueError, match=r"timing.deploy has unknown keys \['fuse'\]"):
        check_timing({"deploy": {"fuse": True}})
    with pytest.raises(ValueError, match="timing.batch_sizes"):
        check_timing({"batch_sizes": [0]})
    assert DeployOptions(**{"compile": False}).to_dict()["channels_last"] is True
