"""Thresholds with a distribution-free guarantee (policy/guarantee.py): the p-values, the fixed-sequence choice on a
hand-built cache, the guarantee's empirical coverage on a synthetic network, too-small splits, and every rule."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from scan_lightning.policy.cache import ExitCache
from scan_lightning.policy.exit_policy import ExitPolicy
from scan_lightning.policy.guarantee import (
    binomial_cdf,
    candidate_thresholds,
    certify,
    coverage,
    fixed_sequence,
    minimum_samples,
    p_values,
)
from scan_lightning.policy.rules import RULE_NAMES, ExitRule, fit_rule
from scan_lightning.policy.scoring import evaluate_thresholds
from scan_lightning.policy.settings import GuaranteeSettings


def settings(drop: float = 0.02, delta: float = 0.1, p_value: str = "binomial", steps: int = 100
             ) -> GuaranteeSettings:
    return GuaranteeSettings(True, drop, delta, p_value, steps)


def synthetic(n: int = 6000, k: int = 3, c: int = 10, seed: int = 0, acc: tuple[float, ...] = (0.8, 0.88, 0.93)
              ) -> ExitCache:
    """Exit e is right with probability acc[e]; its logit on the predicted class is boosted more when it is right,
    so a confident exit is right more often."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(c, (n,), generator=g)
    logits = torch.randn(k, n, c, generator=g)
    for e in range(k):
        right = torch.rand(n, generator=g) < acc[e]
        pred = torch.where(right, labels, (labels + torch.randint(1, c, (n,), generator=g)) % c)
        boost = torch.where(right, 4.0 + 1.5 * torch.randn(n, generator=g), 1.5 + 1.5 * torch.randn(n, generator=g))
        logits[e, torch.arange(n), pred] += boost.clamp_min(0.5)
    return ExitCache(logits, labels)


# --- (a) p-values --------------------------------------------------------------------------------------------------
def test_binomial_p_value_is_the_exact_binomial_tail():
    assert p_values(torch.tensor([0]), 10, 0.1).item() == pytest.approx(0.9 ** 10, rel=1e-12)
    exact = sum(math.comb(10, i) * 0.1 ** i * 0.9 ** (10 - i) for i in range(3))
    assert p_values(torch.tensor([2]), 10, 0.1).item() == pytest.approx(exact, rel=1e-12)
    assert binomial_cdf(50, 0.3)[-1].item() == pytest.approx(1.0)


def test_hoeffding_bentkus_is_a_valid_p_value_above_the_binomial():
    counts = torch.arange(0, 201)
    for n, drop in ((200, 0.05), (200, 0.3)):
        binom = p_values(counts, n, drop, "binomial")
        hb = p_values(counts, n, drop, "hoeffding_bentkus")
        assert ((hb >= 0) & (hb <= 1)).all() and ((binom >= 0) & (binom <= 1)).all()
        assert (hb >= binom - 1e-12).all()
        assert (hb[1:] >= hb[:-1] - 1e-12).all()                 # more losses, less evidence
    # at zero losses both reduce to (1 - drop)^n
    assert p_values(torch.tensor([0]), 100, 0.05, "hoeffding_bentkus").item() == pytest.approx(0.95 ** 100)


def test_minimum_samples_is_the_smallest_n_zero_losses_certify():
    n = minimum_samples(0.01, 0.1)
    assert n == 230 and 0.99 ** n <= 0.1 < 0.99 ** (n - 1)
    assert minimum_samples(0.0, 0.1) is None


def test_candidates_run_from_never_exit_down_and_finer_near_one():
    taus = candidate_thresholds(100)
    assert taus.shape == (101,) and taus[0] == 1.0 and (taus[1:] < taus[:-1]).all()
    assert taus[1] == pytest.approx(1 - 1e-4) and 0 < taus[-1] <= 1e-6
    assert fixed_sequence(torch.tensor([1.0, 0.01, 0.02, 0.5, 0.01]), 0.1).item() == 2


# --- (b) the fixed sequence on a hand-built cache ----------------------------------------------------------------
def test_fixed_sequence_picks_the_last_candidate_that_passes():
    """Two exits, 2 classes, n = 1000, all labels 0. The deepest exit (and so the ensemble) is always right; exit 1
    is right except on samples 0..9, where it is confident (0.9) and wrong. The right samples have confidence 0.99
    (half of them) or 0.6. Thresholds above 0.99 exit nobody; in (0.9, 0.99) the right half exits (no loss); below
    0.9 the 10 wrong ones exit too: loss 10/1000 = 0.01, whose binomial p-value at drop 0.005 is 0.97 > delta."""
    n = 1000
    conf = torch.full((n,), 0.6)
    conf[n // 2:] = 0.99
    conf[:10] = 0.9
    p_first = conf.clone()
    first = torch.stack([torch.log(p_first), torch.log(1 - p_first)], -1)     # class 0 with probability conf
    first[:10] = first[:10].flip(-1)                                            # confident and wrong
    deep = torch.tensor([5.0, -5.0]).repeat(n, 1)
    cache = ExitCache(torch.stack([first, deep]), torch.zeros(n, dtype=torch.long))
    s = settings(drop=0.005, delta=0.1)
    result = certify(cache, s)
    taus = candidate_thresholds(s.steps)
    expected = taus[(taus > 0.9) & (taus < 0.99)].min().item()                 # the lowest loss-free candidate
    assert result.certified and result.tau == pytest.approx(expected)
    assert result.thresholds == [result.tau, 1.0]
    assert result.val_loss == 0.0 and result.val_early == pytest.approx(0.5)
    assert result.p_value_at == pytest.approx(0.995 ** n)
    # the validation figures are what the cached scoring of the policy gives
    policy = ExitPolicy.create(result.thresholds)
    scored = evaluate_thresholds(cache, policy, torch.tensor([1.0, 2.0, 2.0]))
    assert scored.accuracy == pytest.approx(cache.outcome()[-1].float().mean().item() - result.val_drop)
    assert result.to_dict()["tau"] == result.tau


# --- (c) coverage on a synthetic network --------------------------------------------------------------------------
@pytest.mark.parametrize("p_value", ["binomial", "hoeffding_bentkus"])
def test_the_guarantee_holds_empirically_and_is_not_vacuous(p_value: str):
    pool = synthetic()
    s = settings(drop=0.02, delta=0.1, p_value=p_value)
    cov = coverage(pool, 1000, s, trials=200, seed=1)
    bound = s.delta + 3 * math.sqrt(s.delta * (1 - s.delta) / 200)
    assert cov.violation_rate <= cov.loss_violation_rate <= bound
    assert cov.resplit_noise_violation_rate <= cov.resplit_violation_rate
    assert cov.certified_rate >= 0.9 and cov.mean_early > 0.3 and cov.mean_tau < 1.0
    assert cov.to_dict()["trials"] == 200


# --- (d) too small a split ------------------------------------------------------------------------------------------
def test_a_split_too_small_to_certify_never_exits_and_says_how_many_it_needs(caplog: pytest.LogCaptureFixture):
    cache = synthetic(n=20)
    with caplog.at_level(logging.WARNING, logger="scan_lightning.policy.guarantee"):
        result = certify(cache, settings(drop=0.01, delta=0.1))
    assert "230" in caplog.text
    assert not result.certified and result.thresholds == [1.0, 1.0, 1.0] and result.tested == 0
    assert "230" in result.message and result.min_samples == 230 and result.p_value_at is None


def test_drop_zero_never_exits():
    result = certify(synthetic(n=500), settings(drop=0.0))
    assert not result.certified and result.thresholds == [1.0] * 3 and "drop=0" in result.message


# --- (e) every rule ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RULE_NAMES)
def test_every_rule_certifies(name: str):
    cache = synthetic(n=3000)
    temps = [1.0] * cache.num_exits
    rule = fit_rule(ExitRule(name), cache.logits, cache.labels, temps)
    result = certify(cache, settings(drop=0.03), rule, temps, fallback="deepest")
    assert result.certified and result.rule == name and result.thresholds[-1] == 1.0 and 0 < result.tau < 1
    assert result.val_loss <= 0.03 + 0.02
    ExitPolicy.create(result.thresholds, temps, "deepest", 3, rule)             # a valid policy
