"""Cost model, real early exit, threshold searches and their bad-input errors."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scan_lightning.inference import (
    EarlyExitPredictor,
    ExitCache,
    ExitPolicy,
    budget_proportions,
    budgeted_thresholds,
    check_thresholds,
    choose_exits,
    decode_genes,
    evaluate_thresholds,
    exit_confidence,
    genetic_search,
    measure_costs,
)
from scan_lightning.inference.analysis import exit_macs
from scan_lightning.models import MultiExitNetwork, build_backbone


def small_net(num_classes: int = 3) -> MultiExitNetwork:
    return MultiExitNetwork(build_backbone("resnet18", width=0.125), num_classes, bottleneck_width=8).eval()


def flops_macs(fn, *args) -> int:
    with FlopCounterMode(display=False) as c:
        fn(*args)
    return c.get_total_flops() // 2


# --- cost model -------------------------------------------------------------------------------------
def test_cost_table_is_honest_and_consistent():
    net = small_net()
    costs = measure_costs(net, (3, 32, 32))
    cum = [e.cumulative_macs for e in costs.exits]
    assert cum == sorted(cum) and len(set(cum)) == 4
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        backbone = flops_macs(net.backbone, x)
        everything = flops_macs(net, x)
    assert costs.backbone_macs == backbone
    # the deepest exit's own cost = backbone + its head; a sample reaching it really ran everything
    assert costs.exits[-1].own_head_macs == backbone + costs.exits[-1].head_macs
    assert costs.exits[-1].cumulative_macs == everything == costs.ensemble_macs
    # exit k paid for every earlier head and attention module too
    e1, e2 = costs.exits[0], costs.exits[1]
    assert e2.cumulative_macs == e1.cumulative_macs + e2.section_macs + e2.attention_macs + e2.head_macs
    assert e1.attention_macs > 0 and costs.exits[-1].attention_macs == 0
    assert costs.exits[-1].cumulative_params == sum(p.numel() for p in net.parameters())


def test_scan_resnet18_cifar100_reference_macs():
    """method-facts.md: backbone 555.5 M; heads 26.27 / 9.49 / 4.25 / 0.05 M; attention 26.21 M each."""
    net = MultiExitNetwork(build_backbone("resnet18", stem="cifar", width=1.0), 100)
    costs = measure_costs(net, (3, 32, 32))
    assert costs.backbone_macs / 1e6 == pytest.approx(555.5, abs=0.1)
    assert [round(e.head_macs / 1e6, 2) for e in costs.exits] == [26.27, 9.49, 4.25, 0.05]
    assert [round(e.attention_macs / 1e6, 2) for e in costs.exits[:3]] == [26.21] * 3
    own = [e.own_head_macs / costs.backbone_macs for e in costs.exits]
    assert [round(r, 3) for r in own] == [0.322, 0.534, 0.766, 1.0]
    honest = [e.cumulative_macs / costs.backbone_macs for e in costs.exits]
    assert [round(r, 2) for r in honest] == [0.37, 0.68, 0.97, 1.21]


# --- real early exit --------------------------------------------------------------------------------
def compute_all_then_choose(net, x, thresholds, fallback="ensemble"):
    """Reference: full forward, then Algorithm 1 sample by sample in plain Python."""
    with torch.no_grad():
        out = net(x)
    preds, exits = [], []
    for n in range(x.shape[0]):
        for i, lg in enumerate(out.logits):
            conf, cls = exit_confidence(lg[n:n + 1])
            if conf.item() > thresholds[i]:
                preds.append(cls.item()), exits.append(i)
                break
        else:
            last = out.ensemble if fallback == "ensemble" else out.logits[-1]
            preds.append(last[n].argmax().item()), exits.append(len(out.logits))
    return torch.tensor(preds), torch.tensor(exits)


def assert_predictor_matches_median_thresholds(net, x: torch.Tensor) -> None:
    """At each exit's median confidence, the real predictor takes the same exits and answers as
    computing every exit; at least two different exits are used."""
    with torch.no_grad():
        conf = torch.stack([exit_confidence(lg)[0] for lg in net(x).logits])
    thresholds = conf.median(1).values.tolist()
    result = EarlyExitPredictor(net, ExitPolicy.create(thresholds), measure_costs(net, tuple(x.shape[1:])))(x)
    pred, exits = compute_all_then_choose(net, x, thresholds)
    assert torch.equal(result.exit_index, exits) and torch.equal(result.prediction, pred)
    assert len(set(exits.tolist())) >= 2


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("seed,fallback", [(0, "ensemble"), (1, "ensemble"), (2, "deepest"), (3, "deepest")])
def test_predictor_equals_compute_all_then_choose(batch, seed, fallback):
    g = torch.Generator().manual_seed(seed)
    net = small_net()
    costs = measure_costs(net, (3, 32, 32))
    x = torch.randn(64, 3, 32, 32, generator=g) * 3
    with torch.no_grad():
        conf = torch.stack([exit_confidence(lg)[0] for lg in net(x).logits])
    # random thresholds inside each exit's confidence range, so every path (and the fallback) is taken
    lo, hi = conf.min(1).values, conf.max(1).values
    thresholds = (lo + (hi - lo) * torch.rand(4, generator=g)).tolist()
    predictor = EarlyExitPredictor(net, ExitPolicy.create(thresholds, fallback=fallback), costs)
    got = [predictor(xb) for xb in x.split(batch)]
    pred, exits = torch.cat([r.prediction for r in got]), torch.cat([r.exit_index for r in got])
    ref_pred, ref_exits = compute_all_then_choose(net, x, thresholds, fallback)
    assert torch.equal(exits, ref_exits) and torch.equal(pred, ref_pred)
    macs = torch.cat([r.macs for r in got])
    torch.testing.assert_close(macs, exit_macs(costs)[ref_exits])
    if batch == 64:
        assert len(set(exits.tolist())) >= 2


def test_predictor_agrees_with_cached_evaluation():
    net = small_net()
    costs = measure_costs(net, (3, 32, 32))
    x, y = torch.randn(48, 3, 32, 32) * 3, torch.randint(3, (48,))
    with torch.no_grad():
        cache = ExitCache(torch.stack(net(x).logits), y)
    thresholds = [0.5, 0.45, 0.6, 0.5]
    for fallback in ("ensemble", "deepest"):
        res = EarlyExitPredictor(net, ExitPolicy.create(thresholds, fallback=fallback), costs)(x)
        sim = evaluate_thresholds(cache, ExitPolicy.create(thresholds, fallback=fallback), exit_macs(costs))
        assert sim.accuracy == pytest.approx((res.prediction == y).float().mean().item())
        assert sim.mean_macs == pytest.approx(res.macs.double().mean().item())


@pytest.mark.parametrize("thresholds,needle", [
    ([0.9, 0.9, 1.2, 0.9], "outside (0, 1]"),
    ([0.9, 0.0, 0.9, 0.9], "outside (0, 1]"),
    ([0.9, 0.9, 0.9], "holds thresholds for 3 exits, but this network has 4"),
])
def test_bad_thresholds(thresholds, needle):
    net = small_net()
    with pytest.raises(ValueError) as err:
        EarlyExitPredictor(net, ExitPolicy.create(thresholds), measure_costs(net, (3, 32, 32)))
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


# --- threshold searches -----------------------------------------------------------------------------
def logits_with_confidence(conf: torch.Tensor, cls: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose softmax puts probability ``conf`` on ``cls`` (rest spread evenly)."""
    out = torch.zeros(conf.shape[0], num_classes)
    out[torch.arange(conf.shape[0]), cls] = torch.log(conf * (num_classes - 1) / (1 - conf))
    return out


def constructed_case(n: int = 600):
    """Exit 1 is right exactly when its confidence > 0.8, exit 2 when > 0.9; exit 3 (conf 0.99) and the
    ensemble are always right. Best thresholds: sigma = (0.8, 0.9, any < 0.99): lower ones let wrong
    answers out, higher ones cost MACs. A random population rarely holds both values at once."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(1, 4, (n,), generator=g)
    wrong = torch.zeros_like(y)  # class 0 is never the label
    logits = []
    for cut in (0.8, 0.9):
        conf = 0.7 + 0.29 * torch.rand(n, generator=g)
        logits.append(logits_with_confidence(conf, torch.where(conf > cut, y, wrong), 4))
    logits.append(logits_with_confidence(torch.full((n,), 0.99), y, 4))
    return ExitCache(torch.stack(logits), y)


def test_ga_finds_the_known_optimum_and_improves():
    cache = constructed_case()
    em = torch.tensor([1.0, 2.0, 3.0, 3.0], dtype=torch.float64)
    result = genetic_search(cache, em, reference_cost=3.0, beta=100.0, baseline="deepest", population=60,
                            generations=80, seed=1)
    assert result.best_per_generation[-1] > result.best_per_generation[0]
    assert all(b >= a - 1e-12 for a, b in zip(result.best_per_generation, result.best_per_generation[1:]))
    opt = evaluate_thresholds(cache, ExitPolicy.create([0.8, 0.9, 0.7]), em)
    opt_fitness = 3.0 / opt.mean_macs + 100.0 * (opt.accuracy - 1.0)
    assert opt.accuracy == 1.0
    assert result.accuracy == 1.0
    assert result.fitness == pytest.approx(opt_fitness, rel=0.01)
    assert result.thresholds[0] == pytest.approx(0.8, abs=0.011) and result.thresholds[1] == pytest.approx(0.9, abs=0.011)


def test_gene_decoding():
    genes = torch.zeros(2, 30, dtype=torch.bool)
    genes[1] = True
    assert decode_genes(genes).tolist() == pytest.approx([1.0, 0.7])


def test_ga_fitness_is_vectorised_over_the_population():
    cache = constructed_case(50)
    conf = cache.confidence()
    thr = torch.tensor([[0.8, 0.9, 0.7], [0.95, 0.7, 0.7], [0.7, 0.995, 1.0]])
    chosen = choose_exits(conf, thr)
    assert chosen.shape == (3, 50)
    k = conf.shape[0]
    for p in range(3):   # Algorithm 1 written out sample by sample: the first exit above its threshold, else k
        want = [next((i for i in range(k) if conf[i, s] > thr[p, i]), k) for s in range(conf.shape[1])]
        assert chosen[p].tolist() == want


@pytest.mark.parametrize("p", [0.05, 0.5, 1.0, 1.5, 2.0])
def test_budgeted_search_reproduces_the_proportions(p):
    g = torch.Generator().manual_seed(2)
    k, n = 4, 1000
    conf = torch.rand(k, n, generator=g)
    q = budget_proportions(p, k)
    thresholds = budgeted_thresholds(conf, q)
    counts = torch.bincount(choose_exits(conf, thresholds), minlength=k + 1)
    for i in range(k - 1):
        assert abs(counts[i].item() - math.floor(n * q[i].item())) <= 1
    assert counts[k].item() == 0 and counts.sum().item() == n  # the last exit takes the rest
    assert q.sum().item() == pytest.approx(1.0)


def test_check_thresholds_temperatures():
    with pytest.raises(ValueError, match="temperatures"):
        check_thresholds([0.9] * 4, 4, [1.0, 1.0, 0.0, 1.0])


def test_fold_batchnorm_keeps_outputs_and_structure():
    from scan_lightning.inference.deploy import fold_batchnorm

    net = small_net()
    folded = fold_batchnorm(net)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a, b = net(x), folded(x)
    for la, lb in zip(a.logits, b.logits):
        torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    bn = lambda m: sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert bn(folded) == 0 < bn(net)  # every BN folded, those after the attention deconvs included
    assert len(folded.sections) == 4 and folded.num_exits == 4


def test_auto_fallback_follows_the_validation_split():
    from scan_lightning.inference.analysis import resolve_fallback

    y = torch.zeros(4, dtype=torch.long)
    good, bad = torch.tensor([[5.0, 0.0]] * 4), torch.tensor([[0.0, 9.0]] * 4)
    deep_better = ExitCache(torch.stack([bad, good]), y)        # ensemble = mean -> class 1: wrong
    assert resolve_fallback(deep_better, "auto") == "deepest"
    ensemble_ok = ExitCache(torch.stack([good, good]), y)
    assert resolve_fallback(ensemble_ok, "auto") == "ensemble"
    assert resolve_fallback(deep_better, "ensemble") == "ensemble"
    with pytest.raises(ValueError, match="fallback='best'"):
        resolve_fallback(deep_better, "best")


def test_ga_baseline_read_from_a_baseline_run_is_its_selected_validation_accuracy(tmp_path):
    """SCAN's GA baseline is the plain network's accuracy: search.ga.baseline=<baseline run dir> reads the score its
    selected checkpoint was chosen by (validation), and the GA then equals one given that number."""
    import json

    run = tmp_path / "baseline_run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "epoch007.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "callbacks": {
        "ModelCheckpoint{'monitor': None}": {"monitor": None, "best_model_score": None},
        "ModelCheckpoint{'monitor': 'val/acc/ensemble'}": {"monitor": "val/acc/ensemble",
                                                             "best_model_score": torch.tensor(0.8125)}}}, ckpt)
    (run / "summary.json").write_text(json.dumps({"status": "finished", "checkpoint": str(ckpt),
                                                  "metrics": {"test/acc/exit1": 0.5}}))
    cache = constructed_case()
    em = torch.tensor([1.0, 2.0, 3.0, 3.0], dtype=torch.float64)
    kwargs = {"reference_cost": 3.0, "beta": 100.0, "population": 20, "generations": 5, "seed": 1}
    from_run = genetic_search(cache, em, baseline=str(run), **kwargs)
    given = genetic_search(cache, em, baseline=0.8125, **kwargs)
    assert from_run.fitness == pytest.approx(given.fitness) and from_run.thresholds == given.thresholds
    with pytest.raises(FileNotFoundError, match="no finished run there"):
        genetic_search(cache, em, baseline=str(tmp_path / "nowhere"), **kwargs)
