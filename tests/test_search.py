"""Threshold searches. policy/search.py: SCAN's genetic algorithm (the known optimum of a constructed case,
gene decoding, fitness vectorised over the population, the baseline accuracy read from a baseline run) and the
budgeted search (MSDNet's protocol). evaluation/analysis.py: the fallback choice, search_and_score with the latency
cost and with calibration, picking a budget, and the scorer's speed-ups. Bad search settings stop a run before
training."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from scan_lightning.cli.train import ConfigError, train
from scan_lightning.cost.latency import LatencyTable
from scan_lightning.cost.macs import CostTable, ExitCost, exit_cost_vector
from scan_lightning.evaluation.analysis import pick_budget, resolve_fallback, search_and_score
from scan_lightning.evaluation.result import BudgetedPoint
from scan_lightning.policy import (
    ExitCache,
    ExitPolicy,
    budget_proportions,
    budgeted_thresholds,
    choose_exits,
    decode_genes,
    evaluate_thresholds,
    genetic_search,
)
from scan_lightning.policy.scoring import Score, Scorer
from scan_lightning.policy.settings import SearchSettings
from scan_lightning.training.checkpoints import resolve_baseline


# --- SCAN's genetic algorithm -------------------------------------------------------------------------------
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


def test_ga_baseline_read_from_a_baseline_run_is_its_selected_validation_accuracy(tmp_path):
    """SCAN's GA baseline is the plain network's accuracy: search.ga.baseline=<baseline run dir> reads the score its
    selected checkpoint was chosen by (validation), and the GA then equals one given that number."""

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
    ga = {"beta": 100.0, "population": 20, "generations": 5, "seed": 1}
    settings = SearchSettings.from_config({"ga": {**ga, "baseline": str(run)}})
    assert settings.ga.baseline_run == str(run)
    with pytest.raises(ValueError, match="read the baseline run's accuracy first"):   # the search opens no file
        genetic_search(cache, em, reference_cost=3.0, ga=settings.ga)
    resolved = resolve_baseline(settings)
    assert resolved.ga.baseline == pytest.approx(0.8125)
    from_run = genetic_search(cache, em, reference_cost=3.0, ga=resolved.ga)
    given = genetic_search(cache, em, reference_cost=3.0, baseline=0.8125, **ga)
    assert from_run.fitness == pytest.approx(given.fitness) and from_run.thresholds == given.thresholds
    with pytest.raises(FileNotFoundError, match="no finished run there"):
        resolve_baseline(SearchSettings.from_config({"ga": {"baseline": str(tmp_path / "nowhere")}}))


@pytest.mark.parametrize("override,needle", [
    ("search.fallback=best", "fallback='best'"),
    ("search.ga.population=1", "search.ga.population=1 is out of range"),
    ("search.ga.baseline=fastest", "search.ga.baseline='fastest'"),
    ("search.ga.baseline=./no_such_run", "no finished run there"),
])
def test_bad_search_settings_stop_before_training(make_cfg, override, needle):
    cfg = make_cfg("data=synthetic", override)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "config_resolved.yaml").exists()  # nothing ran or was written


# --- the budgeted search -----------------------------------------------------------------------------------
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


# --- analysis: fallback, search_and_score, budgets, scoring -------------------------------------------------
def test_auto_fallback_follows_the_validation_split():

    y = torch.zeros(4, dtype=torch.long)
    good, bad = torch.tensor([[5.0, 0.0]] * 4), torch.tensor([[0.0, 9.0]] * 4)
    deep_better = ExitCache(torch.stack([bad, good]), y)        # ensemble = mean -> class 1: wrong
    assert resolve_fallback(deep_better, "auto") == "deepest"
    ensemble_ok = ExitCache(torch.stack([good, good]), y)
    assert resolve_fallback(ensemble_ok, "auto") == "ensemble"
    assert resolve_fallback(deep_better, "ensemble") == "ensemble"
    with pytest.raises(ValueError, match="fallback='best'"):
        resolve_fallback(deep_better, "best")


def toy_cache(n: int = 400, k: int = 3, classes: int = 4, seed: int = 0, signal: tuple = (1.0, 3.0)) -> ExitCache:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    logits = torch.randn(k, n, classes, generator=g)
    logits[torch.arange(k)[:, None], torch.arange(n)[None], y[None]] += torch.linspace(*signal, k)[:, None]
    noisy = torch.rand(n, generator=g) < 0.2                          # a fifth of the labels are wrong
    y = torch.where(noisy, torch.randint(classes, (n,), generator=g), y)
    return ExitCache(logits * 3, y)   # over-confident, so calibration has work to do


class FakeCosts:
    """A cost table stand-in: MACs 1, 2, 3 per exit (sections only, free exit branches), plain network 2.5."""

    cumulative_macs = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    plain_macs, ensemble_macs, chained = 2.5, 3.0, False

    def exit_macs(self, skipped=None):
        return exit_cost_vector(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), skipped)

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
    by_macs = search_and_score(val, test, costs, SearchSettings.from_config({**search, "cost": "macs"}), slow_first)
    by_time = search_and_score(val, test, costs, SearchSettings.from_config({**search, "cost": "latency"}), slow_first)
    assert by_time.search.cost == "latency" and by_macs.search.cost == "macs"
    assert by_time.val.exit_fractions[0] < by_macs.val.exit_fractions[0]
    for res in (by_macs, by_time):   # both costs reported for every searched point
        assert res.test.mean_ms is not None and res.test.latency_speedup_plain is not None
        assert all(r.test.mean_ms is not None and r.val_mean_ms is not None for r in res.budgeted)
    with pytest.raises(ValueError, match="needs a latency table"):
        search_and_score(val, test, costs, SearchSettings.from_config({**search, "cost": "latency"}), None)


def test_calibrated_search_fits_temperatures_on_data_the_ga_never_sees():
    val, test = toy_cache(seed=0), toy_cache(seed=1)
    search = {"ga": {"population": 20, "generations": 5}, "budget_steps": 3,
              "calibration": {"enabled": True, "fraction": 0.25, "n_bins": 10}}
    res = search_and_score(val, test, FakeCosts(), SearchSettings.from_config(search))
    cal = res.calibration
    assert cal.fitted_on == 100 and cal.reported_on == 300
    assert all(t > 1.2 for t in res.policy.temperatures)               # over-confident logits: T > 1
    assert sum(cal.ece_test_after) < sum(cal.ece_test_before)
    # the policy carries the temperatures, and scoring used them: the same thresholds at T = 1 exit otherwise
    assert Scorer(FakeCosts())(test, res.policy).exit_fractions == res.test.exit_fractions
    uncalibrated = res.policy.with_temperatures([1.0] * 3)
    assert Scorer(FakeCosts())(test, uncalibrated).exit_fractions != res.test.exit_fractions
    with pytest.raises(ValueError, match="fraction=1.5"):
        SearchSettings.from_config({**search, "calibration": {"enabled": True, "fraction": 1.5}})


def test_budget_is_picked_on_validation_costs():
    score = Score(0.5, 1.0, [0.5, 0.5, 0.0], 1.0, 1.0)
    result = SimpleNamespace(policy=ExitPolicy.create([1.0, 1.0]), budgeted=[
        BudgetedPoint(0.1, [0.9, 0.5], score, val_accuracy=0.8, val_mean_macs=10.0),
        BudgetedPoint(0.2, [0.99, 0.5], score, val_accuracy=0.9, val_mean_macs=20.0),
        BudgetedPoint(0.3, [0.999, 0.5], score, val_accuracy=0.95, val_mean_macs=30.0)])
    assert pick_budget(result, macs=25).thresholds == (0.99, 0.5)
    assert pick_budget(result, macs=1e9).thresholds == (0.999, 0.5)
    with pytest.raises(ValueError, match="below the cheapest budgeted point"):
        pick_budget(result, macs=5)
    with pytest.raises(ValueError, match="no budgeted curve in ms"):
        pick_budget(result, ms=3.0)


def test_scorer_speedups():
    cache = toy_cache()
    scorer = Scorer(FakeCosts(), LatencyTable(1, "cpu", [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], 0.1))
    res = scorer(cache, ExitPolicy.create([1.0, 1.0, 1e-6]))    # everyone leaves at the last exit
    assert res.mean_macs == 3.0 and res.speedup_plain == pytest.approx(2.5 / 3.0)
    assert res.mean_ms == pytest.approx(4.5) and res.latency_speedup_plain == pytest.approx(3.1 / 4.5)


def test_the_ga_can_switch_an_exit_off_when_its_branch_costs_more_than_it_saves():
    """An exit that claims nobody the deeper exits do not also get right, with an expensive branch: the GA (few
    bits, so threshold 1 is reachable) switches it off under the deepest fallback and is charged less for it."""
    g = torch.Generator().manual_seed(0)
    n, c = 400, 4
    labels = torch.randint(c, (n,), generator=g)
    right = torch.nn.functional.one_hot(labels, c).float()
    logits = torch.stack([torch.randn(n, c, generator=g),          # exit 1: noise
                          torch.randn(n, c, generator=g) + 6 * right])   # exit 2: confident and right
    cache = ExitCache(logits, labels)
    rows = [ExitCost(0, 10, 0, 50, 60, 60, 0, 0, 0, 0), ExitCost(1, 10, 0, 1, 71, 21, 0, 0, 0, 0)]
    costs = CostTable(rows, (1, 1, 1))
    exit_costs, plain = Scorer(costs).cost_model("macs", "deepest")
    ga = genetic_search(cache, exit_costs, plain, beta=10.0, bits=2, population=20, generations=20,
                        fallback="deepest", seed=0)
    assert ga.thresholds[0] == 1.0 and ga.mean_cost == pytest.approx(21.0)
    res = Scorer(costs)(cache, ExitPolicy.create(ga.thresholds, fallback="deepest"))
    assert res.mean_macs == pytest.approx(21.0)
