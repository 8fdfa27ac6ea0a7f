"""Every exit rule through the policy layer and the commands: saved and loaded with its name and parameters, old
files read as max softmax, searched by the GA and the budgeted sweep, fitted on the validation part the search never
sees, chosen with ``policy.rule`` in train and evaluate; bad input is one clear error before any work."""
from __future__ import annotations

import json

import pytest
import torch

from scan_lightning.cli.evaluate import evaluate
from scan_lightning.cost.macs import CostTable, ExitCost
from scan_lightning.evaluation.analysis import calibrated_split, search_and_score
from scan_lightning.policy import ExitCache, ExitPolicy
from scan_lightning.policy.exit_policy import check_policy_spec, resolve_policy
from scan_lightning.policy.rules import RULE_NAMES, RULES, ExitRule, fit_rule
from scan_lightning.policy.scoring import Scorer
from scan_lightning.policy.search import budget_sweep, genetic_search
from scan_lightning.policy.settings import CalibrationSettings, SearchSettings
from scan_lightning.training.callbacks.threshold_search import train_rule
from tests.helpers.compose import compose_cfg, compose_evaluate

K, C = 4, 10


def synthetic_cache(n: int = 600, seed: int = 0) -> ExitCache:
    """Exits that get better with depth: the label's logit is boosted more at deeper exits."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)
    logits = torch.randn(K, n, C, generator=g)
    for k in range(K):
        logits[k, torch.arange(n), labels] += 1.0 + 0.8 * k
    return ExitCache(logits, labels)


def costs() -> CostTable:
    """Four exits of 100 section + 10 attention + 5 head MACs each."""
    rows = [ExitCost(i, 100, 10, 5, 115 * (i + 1), 15, 0, 0, 0, 0) for i in range(K)]
    return CostTable(rows, (1, 8, 8))


def fitted(name: str, cache: ExitCache) -> ExitRule:
    return fit_rule(ExitRule(name), cache.logits, cache.labels, [1.0] * K)


@pytest.mark.parametrize("name", RULE_NAMES)
def test_a_policy_of_every_rule_round_trips_through_thresholds_json(name, tmp_path):
    rule = fitted(name, synthetic_cache())
    policy = ExitPolicy.create([0.9, 0.8, 0.7, 0.6], [1.0, 1.1, 1.2, 1.3], "deepest", rule=rule)
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(policy.to_dict()))
    loaded = ExitPolicy.load(path, K)
    assert loaded == policy and loaded.to_dict()["rule"] == name
    assert loaded.rule.params.keys() == ({RULES[name].fitted} if RULES[name].fitted else set())
    assert resolve_policy(K, tmp_path / "model.ckpt", {"rule": name}) == policy     # asked for by name: the same
    # rules that read earlier exits skip no branch; the others skip an exit at threshold 1
    off = policy.with_thresholds([1.0, 0.8, 0.7, 0.6]).skipped_heads(chained=False)
    assert off == [not RULES[name].reads_history, False, False, False]


def test_a_file_without_a_rule_is_max_softmax_and_a_file_of_another_rule_is_refused(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"thresholds": [0.9] * K, "temperatures": [1.0] * K, "fallback": "ensemble"}))
    assert ExitPolicy.load(old, K).rule == ExitRule("max_softmax")
    patience = tmp_path / "patience.json"
    patience.write_text(json.dumps({"thresholds": [0.4] * K, "rule": "patience"}))
    with pytest.raises(ValueError, match="rule patience, but policy.rule=entropy"):
        resolve_policy(K, tmp_path / "x.ckpt", {"rule": "entropy", "thresholds_path": str(patience)})
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"thresholds": [0.4] * K, "rule": "patience",
                                 "rule_params": {"weights": [[1.0]] * K}}))
    with pytest.raises(ValueError, match=r"rule patience takes parameters none; got \['weights'\] \(weights belong "
                                         r"to rule running_ensemble\)"):
        ExitPolicy.load(mixed, K)
    unfitted = tmp_path / "unfitted.json"
    unfitted.write_text(json.dumps({"thresholds": [0.4] * K, "rule": "learned"}))
    with pytest.raises(ValueError, match="rule learned needs its fitted scheduler"):
        ExitPolicy.load(unfitted, K)


@pytest.mark.parametrize("spec,needle", [
    ({"rule": "softmax"}, r"rule='softmax' is not allowed; choose one of \['max_softmax'"),
    ({"rule": "entropy", "params": {"patience": 2}}, "policy.params.patience is the patience rule's"),
    ({"rule": "patience", "params": {"patience": 2}, "thresholds": [0.5] * K}, "not both"),
    ({"rule": "running_ensemble", "params": {"weights": [[1.0], [0.5, -0.1]]}}, r"row 1 = \[0.5, -0.1\]"),
    ({"rule": "learned", "params": {"scheduler": [[1.0, 2.0]]}}, "must hold 5 numbers"),
    ({"rule": "entropy", "params": [1, 2]}, "policy.params=.* must be a mapping"),
])
def test_a_bad_rule_spec_is_one_clear_error(spec, needle):
    with pytest.raises(ValueError, match=needle):
        check_policy_spec(spec)


@pytest.mark.parametrize("patience,ok", [(0, False), (1, True), (K, True), (K + 1, False)])
def test_patience_is_checked_against_the_number_of_exits(patience, ok, tmp_path):
    spec = {"rule": "patience", "params": {"patience": patience}}
    if ok:
        policy = resolve_policy(K, tmp_path / "x.ckpt", spec)
        assert policy.thresholds == ((patience - 0.5) / K,) * K and policy.rule.name == "patience"
    else:
        with pytest.raises(ValueError, match=f"patience={patience} must be an integer in 1..{K}"):
            resolve_policy(K, tmp_path / "x.ckpt", spec)


@pytest.mark.parametrize("name", RULE_NAMES)
def test_the_ga_and_the_budgeted_sweep_search_every_rule(name):
    cache = synthetic_cache()
    rule = fitted(name, cache)
    exit_costs, reference = Scorer(costs()).cost_model("macs", "ensemble", rule)
    ga = genetic_search(cache, exit_costs, reference, population=16, generations=4, rule=rule)
    low = RULES[name].search_low
    assert len(ga.thresholds) == K and all(low - 1e-6 <= t <= 1.0 for t in ga.thresholds)
    policy = ExitPolicy.create(ga.thresholds, rule=rule)
    score = Scorer(costs())(cache, policy)
    assert score.accuracy == pytest.approx(ga.accuracy) and score.mean_macs == pytest.approx(ga.mean_cost)
    # the budgeted sweep on the rule's own scores: q_k ~ p^k, so samples go deeper (cost more) as p grows
    sweep = budget_sweep(cache, steps=6, rule=rule)
    spent = [Scorer(costs())(cache, ExitPolicy.create(t.clamp(1e-6, 1.0).tolist(), rule=rule)).mean_macs
             for _, t in sweep]
    if name == "patience":   # K + 1 score levels: every tie leaves together, the proportions cannot split them
        assert spent[0] <= spent[-1]
    else:
        assert spent[0] < spent[-1]


def test_a_fitted_rule_is_fitted_on_the_part_the_search_never_sees():
    val, test = synthetic_cache(800, 1), synthetic_cache(400, 2)
    settings = CalibrationSettings(enabled=False, fraction=0.5, n_bins=15)
    search_val, temperatures, record, rule = calibrated_split(val, test, settings, seed=3, rule=ExitRule("learned"))
    assert temperatures is None and record is None and len(search_val.labels) == 400
    assert not rule.needs_fit
    # max softmax fits nothing: the search sees every validation sample
    assert len(calibrated_split(val, test, settings, seed=3)[0].labels) == 800
    result = search_and_score(val, test, costs(), SearchSettings.from_config(
        {"ga": {"population": 8, "generations": 2}, "fallback": "ensemble"}), rule=ExitRule("running_ensemble"))
    assert result.policy.rule.name == "running_ensemble" and "weights" in result.policy.rule.params
    assert result.to_json()["rule"] == "running_ensemble"


def test_train_takes_a_rule_and_refuses_what_only_evaluate_takes(tmp_path):
    cfg = compose_cfg(["policy.rule=margin"], tmp_path)
    assert cfg.callbacks.threshold_search.policy.rule == "margin"
    assert train_rule(dict(cfg.policy)) == ExitRule("margin")
    with pytest.raises(ValueError, match="policy.thresholds is for evaluate / export"):
        train_rule({"rule": "margin", "thresholds": [0.9] * K})
    with pytest.raises(ValueError, match="policy.params.patience is for evaluate / export"):
        train_rule({"rule": "patience", "params": {"patience": 2}})


def test_evaluate_searches_a_fitted_rule_and_saves_it(short_run, tmp_path):
    out = tmp_path / "result.json"
    result = evaluate(compose_evaluate(f"ckpt_path={short_run.ckpt}", "policy.thresholds=search",
                                       "policy.rule=learned", "search.ga.generations=3", "search.ga.population=8",
                                       "timing.enabled=false", f"output={out}"))
    saved = json.loads(out.read_text())
    assert result.policy.rule.name == saved["rule"] == "learned"
    assert len(saved["rule_params"]["scheduler"]) == result.num_exits
    # the saved file is a learned policy: evaluate reads it back as one, and refuses it as another rule
    again = evaluate(compose_evaluate(f"ckpt_path={short_run.ckpt}", f"policy.thresholds_path={out}",
                                      "timing.enabled=false"))
    assert again.policy == result.policy and again.test.accuracy == pytest.approx(result.test.accuracy)
    with pytest.raises(ValueError, match="rule learned, but policy.rule=entropy"):
        evaluate(compose_evaluate(f"ckpt_path={short_run.ckpt}", f"policy.thresholds_path={out}",
                                  "policy.rule=entropy", "timing.enabled=false"))


def test_evaluate_refuses_an_unknown_rule_before_reading_the_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="rule='pabee' is not allowed"):
        evaluate(compose_evaluate(f"ckpt_path={tmp_path / 'never_read.ckpt'}", "policy.rule=pabee"))


def test_the_docs_rules_table_lists_every_rule_with_its_paper():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "exit-rules.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines() if line.startswith("| `")}
    assert set(rows) == set(RULE_NAMES)
    for name, info in RULES.items():
        assert info.paper.split(",")[0] in rows[name] and info.paper.split(",")[-1].split("(")[0].strip() in rows[name], name


def test_the_post_fit_search_certifies_thresholds_when_a_guarantee_is_asked(tmp_path):
    from scan_lightning.evaluation.result import PostFitResult
    from scan_lightning.reporting.tables import render_dynamic_summary

    val, test = synthetic_cache(3000, 4), synthetic_cache(1000, 5)
    settings = SearchSettings.from_config({"fallback": "ensemble",
                                           "guarantee": {"enabled": True, "drop": 0.02, "delta": 0.1}})
    result = search_and_score(val, test, costs(), settings, rule=ExitRule("entropy"))
    g = result.guarantee
    assert result.search is None and g is not None and g.certified and g.rule == "entropy"
    assert list(result.policy.thresholds) == g.thresholds and g.thresholds[-1] == 1.0
    assert result.test.exit_fractions[-1] < 1.0                        # it really exits early
    assert g.val_drop <= 0.02 and "certified" in render_dynamic_summary(result)
    assert PostFitResult.from_json(result.to_json()) == result
    # too few validation samples to certify anything: never exit, said so
    small = search_and_score(synthetic_cache(50, 6), test, costs(), settings)
    assert small.guarantee is not None and not small.guarantee.certified
    assert small.policy.thresholds == (1.0,) * K and "fewer than the 114 needed" in small.guarantee.message


@pytest.mark.parametrize("node,needle", [
    ({"drop": 1.0}, r"search.guarantee.drop=1.0 must lie in \[0, 1\)"),
    ({"drop": -0.01}, r"search.guarantee.drop=-0.01 must lie in \[0, 1\)"),
    ({"delta": 0}, r"search.guarantee.delta=0.0 must lie in \(0, 1\)"),
    ({"delta": 1}, r"search.guarantee.delta=1.0 must lie in \(0, 1\)"),
    ({"p_value": "chernoff"}, "p_value='chernoff' is not allowed"),
    ({"steps": 0}, "steps=0 must be an integer >= 1"),
    ({"alpha": 0.1}, r"search.guarantee has unknown keys \['alpha'\]"),
])
def test_a_bad_guarantee_is_one_clear_error(node, needle):
    with pytest.raises(ValueError, match=needle):
        SearchSettings.from_config({"guarantee": node})
