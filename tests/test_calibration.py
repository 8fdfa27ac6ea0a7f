"""Per-exit temperature scaling: recovery of known temperatures, ECE, argmax invariance, the held-out split."""
from __future__ import annotations

import math

import pytest
import torch

from scan_lightning.policy.cache import ExitCache
from scan_lightning.policy.calibration import (
    BOUNDS,
    calibrate,
    calibrated_probabilities,
    calibration_errors,
    fit_temperature,
    fit_temperatures,
    nll,
    split_cache,
)

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: a second thread only adds contention


def synthetic(scales: list[float], n: int = 4000, c: int = 10, seed: int = 0) -> ExitCache:
    """Labels drawn from softmax(z); exit e reports z * scales[e], so its true temperature is scales[e]."""
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, c, generator=g)
    labels = torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0]
    return ExitCache(torch.stack([z * s for s in scales]), labels)


def ece_by_hand(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    """Equal-width bins [j/M, (j+1)/M) of the max probability; sum over bins of |acc - conf| * share."""
    conf, pred = probs.double().max(-1)
    correct = (pred == labels).double()
    bins = (conf * n_bins).floor().long()
    total = 0.0
    for j in bins.unique().tolist():
        m = bins == j
        total += abs(correct[m].mean().item() - conf[m].mean().item()) * m.double().mean().item()
    return total


@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_recovers_the_true_temperature(scale):
    cache = synthetic([scale])
    t = fit_temperature(cache.logits[0], cache.labels)
    assert t == pytest.approx(scale, rel=0.1)
    # a minimum, not just near one: nudging T either way raises the NLL
    lg = cache.logits[0]
    assert nll(lg, cache.labels, t) < min(nll(lg, cache.labels, t * 1.02), nll(lg, cache.labels, t / 1.02))
    assert fit_temperature(lg, cache.labels) == t                  # deterministic


def test_fit_temperatures_one_per_exit():
    temps = fit_temperatures(synthetic([3.0, 1.0, 0.5]))
    assert len(temps) == 3
    for t, want in zip(temps, [3.0, 1.0, 0.5]):
        assert t == pytest.approx(want, rel=0.1)


def test_degenerate_fits_stay_in_bounds():
    labels = torch.arange(20) % 4
    assert fit_temperature(torch.zeros(20, 4), labels) == 1.0     # flat NLL: nothing to gain over T = 1
    separable = 5.0 * torch.nn.functional.one_hot(labels, 4).float()
    assert fit_temperature(separable, labels) == pytest.approx(BOUNDS[0], rel=1e-3)
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(separable, labels, bounds=(0.0, 2.0))
    with pytest.raises(ValueError, match="empty"):
        fit_temperature(torch.zeros(0, 4), labels[:0])


def test_ece_drops_on_held_out_data():
    search, cal = split_cache(synthetic([3.0, 1.0, 0.5], n=6000), fraction=0.5, seed=0)
    res = calibrate(cal, search)
    assert res.temperatures == fit_temperatures(cal) != fit_temperatures(search)   # fitted on the part given
    assert res.ece_after[0] < res.ece_before[0] / 3                # over-confident exit
    assert res.ece_after[2] < res.ece_before[2] / 3                # under-confident exit
    assert abs(res.ece_after[1] - res.ece_before[1]) < 0.01        # already calibrated: barely moves
    assert max(res.ece_after) < 0.03
    assert res.ece_before == calibration_errors(search)            # reported on the part given, at T = 1
    assert set(res.to_dict()) == {"temperatures", "ece_before", "ece_after", "n_bins"}


def test_calibration_errors_match_hand_binning():
    cache = synthetic([3.0, 1.0, 0.5], n=3000, seed=1)
    temps = [2.0, 1.3, 0.7]
    for n_bins in (10, 15):
        got = calibration_errors(cache, temps, n_bins=n_bins)
        want = [ece_by_hand(torch.softmax(lg.double() / t, -1), cache.labels, n_bins)
                for lg, t in zip(cache.logits, temps)]
        assert got == pytest.approx(want, abs=1e-6)


def test_calibration_errors_softmax_logits_that_look_like_probabilities():
    # every logit in [0, 1): torchmetrics would read them as probabilities unless we pass the softmax
    g = torch.Generator().manual_seed(2)
    logits = torch.rand(1, 500, 5, generator=g)
    labels = torch.randint(0, 5, (500,), generator=g)
    got = calibration_errors(ExitCache(logits, labels), n_bins=10)[0]
    assert got == pytest.approx(ece_by_hand(torch.softmax(logits[0].double(), -1), labels, 10), abs=1e-4)
    assert got != pytest.approx(ece_by_hand(logits[0], labels, 10), abs=1e-2)


def test_bad_temperatures_rejected():
    cache = synthetic([1.0, 1.0], n=50)
    for temps in ([1.0], [1.0, 0.0], [1.0, -2.0], [1.0, math.inf]):
        with pytest.raises(ValueError, match="temperatures"):
            calibration_errors(cache, temps)


def test_temperature_never_changes_the_argmax():
    cache = synthetic([3.0, 1.0, 0.5], n=2000, seed=3)
    acc = cache.accuracy()[:-1]
    for temps in (fit_temperatures(cache), [BOUNDS[0]] * 3, [BOUNDS[1]] * 3):
        for i, (lg, t) in enumerate(zip(cache.logits, temps)):
            pred = calibrated_probabilities(lg, t).argmax(-1)
            assert torch.equal(pred, lg.argmax(-1))
            assert (pred == cache.labels).double().mean().item() == pytest.approx(acc[i].item())
    # logits one float32 ulp apart: a float32 softmax at T = 20 rounds both to the same value
    near_tie = torch.tensor([[1.0, torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)).item()]])
    assert calibrated_probabilities(near_tie, BOUNDS[1]).argmax(-1).item() == 1


def test_split_cache_is_a_disjoint_seeded_partition():
    n = 101
    logits = torch.arange(n).float()[None, :, None].expand(2, n, 3).clone()   # sample i carries its index
    cache = ExitCache(logits, torch.arange(n) % 7)
    search, cal = split_cache(cache, fraction=0.3, seed=0)
    s_idx, c_idx = search.logits[0, :, 0].long(), cal.logits[0, :, 0].long()
    assert len(c_idx) == round(n * 0.3) and len(s_idx) == n - len(c_idx)
    assert not set(s_idx.tolist()) & set(c_idx.tolist())
    assert sorted(s_idx.tolist() + c_idx.tolist()) == list(range(n))
    assert torch.equal(search.labels, s_idx % 7) and torch.equal(cal.labels, c_idx % 7)   # rows stay paired
    assert torch.equal(s_idx, s_idx.sort().values)                                        # original order kept
    again = split_cache(cache, fraction=0.3, seed=0)[1].logits[0, :, 0].long()
    other = split_cache(cache, fraction=0.3, seed=1)[1].logits[0, :, 0].long()
    assert torch.equal(again, c_idx) and not torch.equal(other, c_idx)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5, 0.01, 0.99])
def test_split_cache_rejects_bad_fractions(fraction):
    cache = ExitCache(torch.zeros(1, 10, 3), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match=f"fraction={fraction}"):
        split_cache(cache, fraction, seed=0)


def test_calibrate_rejects_mismatched_caches():
    with pytest.raises(ValueError, match="exits"):
        calibrate(synthetic([1.0, 1.0], n=50), synthetic([1.0], n=50))
