"""Exit thresholds with a distribution-free guarantee, for any exit rule.

The risk-control setting of RC-EENN (Jazbec, Timans, Hadi Veljković, Sakmann, Zhang, Naesseth, Nalisnick, "Fast yet
Safe: Early-Exiting with Risk Control", NeurIPS 2024): one threshold ``tau`` shared by the exits 1..K-1 (the deepest
exit keeps threshold 1, so the fallback answers what no exit claims), chosen so that, with probability at least
``1 - delta`` over the draw of the validation split, the accuracy drop against the fallback (never exiting early) is
at most ``drop`` on new data from the same distribution. The choice is Learn-then-Test (Angelopoulos, Bates, Candès,
Jordan, Lei, "Learn then Test: Calibrating Predictive Algorithms to Achieve Risk Control", 2021) with fixed-sequence
testing:

- Candidates: a data-independent sequence ``tau_0 = 1 > tau_1 > ... > tau_steps`` (:func:`candidate_thresholds`),
  finer near 1. ``tau_0`` never exits early and has risk 0.
- Loss per sample: ``L = 1[fallback right and policy wrong]`` (the policy answers with the rule's prediction at the
  exit it chooses, or with the fallback's). The accuracy drop is ``P(fallback right, policy wrong) - P(fallback
  wrong, policy right) <= E[L]``, so controlling ``E[L]`` controls the drop.
- Per candidate a p-value of ``H0: E[L] > drop`` (:func:`p_values`): ``binomial``, exact, ``P(Bin(n, drop) <= sum
  L)``; or ``hoeffding_bentkus`` (Bates, Angelopoulos, Lei, Malik, Jordan, "Distribution-Free, Risk-Controlling
  Prediction Sets", JACM 2021), ``min(exp(-n h1(min(Rhat, drop), drop)), e P(Bin(n, drop) <= ceil(n Rhat)))``. For a
  0/1 loss the binomial p-value is exact and never larger than Hoeffding-Bentkus.
- Fixed sequence: test ``tau_1, tau_2, ...`` in order while ``p <= delta`` and keep the last accepted candidate (the
  lowest threshold: the most early exit). Family-wise error at most ``delta`` with no multiplicity correction,
  because the order is fixed before the data are seen.

:func:`certify` does this on an :class:`~scan_lightning.policy.cache.ExitCache`; :func:`coverage` checks the
guarantee empirically by resampling a pool of cached outputs.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scan_lightning.policy.cache import ExitCache
from scan_lightning.policy.exit_policy import check_fallback, choose_exits
from scan_lightning.policy.rules import ExitRule
from scan_lightning.policy.settings import GuaranteeSettings

# the standard library logger, not scan_lightning.utils.logs.get_logger: that one imports pytorch_lightning, which
# the policy layer must not reach (tests/test_layering.py); records still go to the "scan_lightning" handlers
log = logging.getLogger(__name__)

SMALLEST_GAP = 1e-4   # 1 - tau_1: the first candidate below "never exit"
LOWEST_TAU = 1e-6     # thresholds must stay in (0, 1]; the last candidate (1 - 1 = 0) is raised to this


def candidate_thresholds(steps: int) -> torch.Tensor:
    """The fixed, data-independent sequence of shared thresholds, ``(steps + 1,)`` float64: ``tau_0 = 1`` (never
    exit early), then ``1 - g`` for ``steps`` gaps ``g`` log-spaced from 1e-4 to 1 (finer near 1; the last, 0, is
    raised to 1e-6 so every threshold lies in (0, 1])."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    gaps = torch.logspace(math.log10(SMALLEST_GAP), 0.0, steps, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), (1.0 - gaps).clamp_min(LOWEST_TAU)])


def minimum_samples(drop: float, delta: float) -> int | None:
    """The smallest validation size ``n`` for which zero observed losses certify a candidate: ``(1 - drop)^n <=
    delta`` (the same for both p-values: at zero losses Hoeffding-Bentkus's first term is ``(1 - drop)^n`` too).
    ``None`` for ``drop = 0``: no sample size certifies a nonzero step then."""
    if not 0.0 <= drop < 1.0 or not 0.0 < delta < 1.0:
        raise ValueError(f"drop={drop} must lie in [0, 1) and delta={delta} in (0, 1)")
    if drop == 0.0:
        return None
    n = max(1, math.ceil(math.log(delta) / math.log1p(-drop)))
    while math.exp(n * math.log1p(-drop)) > delta:     # guard the rounding of the closed form, both ways
        n += 1
    while n > 1 and math.exp((n - 1) * math.log1p(-drop)) <= delta:
        n -= 1
    return n


def binomial_cdf(n: int, p: float) -> torch.Tensor:
    """``P(Bin(n, p) <= k)`` for ``k = 0..n``, ``(n + 1,)`` float64 (log-space: ``lgamma`` and ``logcumsumexp``)."""
    k = torch.arange(n + 1, dtype=torch.float64)
    prob = torch.tensor(p, dtype=torch.float64)
    log_pmf = (math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
               + torch.xlogy(k, prob) + torch.xlogy(n - k, 1.0 - prob))
    return torch.logcumsumexp(log_pmf, 0).exp().clamp(0.0, 1.0)


def p_values(losses: torch.Tensor, n: int, drop: float, method: str = "binomial") -> torch.Tensor:
    """p-values of ``H0: E[L] > drop`` from summed 0/1 losses ``losses`` (any shape, integer counts in 0..n) over
    ``n`` samples; float64 in [0, 1], the shape of ``losses``. ``method``: ``binomial`` or ``hoeffding_bentkus``."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    if not 0.0 < drop < 1.0:
        raise ValueError(f"drop={drop} must lie in (0, 1) for a p-value")
    counts = losses.round().long().clamp(0, n)
    binom = binomial_cdf(n, drop)[counts]
    if method == "binomial":
        return binom
    if method != "hoeffding_bentkus":
        raise ValueError(f"p_value={method!r} is not allowed; choose binomial or hoeffding_bentkus")
    a = (counts.double() / n).clamp_max(drop)
    b = torch.tensor(drop, dtype=torch.float64)
    h1 = torch.xlogy(a, a / b) + torch.xlogy(1.0 - a, (1.0 - a) / (1.0 - b))
    hoeffding = torch.exp(-n * h1)
    bentkus = math.e * binom          # ceil(n Rhat) = sum L for a 0/1 loss
    return torch.minimum(hoeffding, bentkus).clamp(0.0, 1.0)


def fixed_sequence(p: torch.Tensor, delta: float) -> torch.Tensor:
    """The index of the last candidate accepted by fixed-sequence testing: ``p`` is ``(..., steps + 1)`` with
    candidate 0 (never exit) first and untested; candidates 1, 2, ... are accepted while ``p <= delta``. ``(...)``
    long; 0 when none is."""
    ok = (p[..., 1:] <= delta).long()
    return ok.cumprod(-1).sum(-1)


@dataclass(frozen=True)
class CandidateOutcomes:
    """Every candidate's per-sample outcome on a cache, computed once: ``loss`` (fallback right, policy wrong) and
    ``right`` (policy right), ``(steps + 1, N)`` booleans; ``early``: the sample leaves before the fallback;
    ``fallback_right``: ``(N,)``; ``taus``: the candidates."""

    taus: torch.Tensor
    loss: torch.Tensor
    right: torch.Tensor
    early: torch.Tensor
    fallback_right: torch.Tensor


def candidate_outcomes(cache: ExitCache, steps: int, rule: ExitRule | None = None,
                       temperatures: Sequence[float] | None = None, fallback: str = "ensemble") -> CandidateOutcomes:
    """What each candidate shared threshold does on every sample of ``cache`` (exits 1..K-1 at ``tau``, the deepest
    exit at 1); thresholds compared in float32, as the cached scoring does."""
    check_fallback(fallback)
    scores, outcome = cache.decisions(rule, temperatures, fallback)
    taus = candidate_thresholds(steps)
    k = cache.num_exits
    thresholds = taus[:, None].repeat(1, k)
    thresholds[:, -1] = 1.0
    chosen = choose_exits(scores, thresholds.float())                        # (steps + 1, N)
    right = outcome.gather(0, chosen)
    fallback_right = outcome[-1]
    return CandidateOutcomes(taus, fallback_right[None] & ~right, right, chosen < k, fallback_right)


@dataclass(frozen=True)
class Certified:
    """The outcome of :func:`certify`: per-exit ``thresholds`` (K values: ``tau`` at exits 1..K-1, 1 at the deepest;
    all 1 when nothing was certified), whether some early exit was ``certified``, the guarantee asked for (``drop``,
    ``delta``, ``p_value``), the validation size ``n``, the p-value of the accepted candidate (``p_value_at``;
    ``None`` when none), the mean loss ``val_loss`` and accuracy drop ``val_drop`` on the validation cache at the
    chosen candidate, the fraction of validation samples that leave early (``val_early``), the candidates tested
    (``tested``, of ``steps``), the minimum validation size (``min_samples``; ``None`` for drop 0), the rule, the
    fallback and a human ``message``."""

    thresholds: list[float]
    tau: float
    certified: bool
    drop: float
    delta: float
    p_value: str
    n: int
    p_value_at: float | None
    val_loss: float
    val_drop: float
    val_early: float
    tested: int
    steps: int
    min_samples: int | None
    rule: str
    fallback: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON)."""
        return dataclasses.asdict(self)


def _never_exit(cache: ExitCache, settings: GuaranteeSettings, rule: ExitRule | None, fallback: str,
                message: str, tested: int = 0, min_samples: int | None = None) -> Certified:
    """The "never exit early" policy (risk 0), with the reason."""
    log.warning(message)
    return Certified([1.0] * cache.num_exits, 1.0, False, settings.drop, settings.delta, settings.p_value,
                     int(cache.labels.numel()), None, 0.0, 0.0, 0.0, tested, settings.steps, min_samples,
                     (rule or ExitRule()).name, fallback, message)


def certify(cache: ExitCache, settings: GuaranteeSettings, rule: ExitRule | None = None,
            temperatures: Sequence[float] | None = None, fallback: str = "ensemble") -> Certified:
    """Learn-then-Test thresholds (Angelopoulos et al. 2021, fixed-sequence testing) in RC-EENN's risk control
    (Jazbec et al. 2024; one threshold shared by exits 1..K-1): with probability >= 1 - ``settings.delta`` over the
    draw of ``cache`` (i.i.d. validation outputs), the accuracy drop of the returned policy against ``fallback`` is at
    most ``settings.drop`` on new data. ``rule`` (fitted, if it is a fitted rule) and ``temperatures`` as in
    :meth:`ExitCache.decisions`. The guarantee treats the rule, its fitted parameters and the temperatures as fixed
    before ``cache`` was drawn: fitted on the same samples (a fitted rule, temperature scaling) it is only
    approximate; fit them on a separate part of the validation split to keep it exact.

    Never exits early (all thresholds 1, ``certified`` False, a warning logged and said in ``message``) when the
    network has one exit, when ``drop`` is 0, when the split is smaller than :func:`minimum_samples` (then nothing
    is tested), or when no candidate passes."""
    check_fallback(fallback)
    n = int(cache.labels.numel())
    need = minimum_samples(settings.drop, settings.delta)
    if cache.num_exits < 2:
        return _never_exit(cache, settings, rule, fallback, "the network has one exit: there is no early exit to "
                           "certify; it always answers with the fallback", min_samples=need)
    if need is None:
        return _never_exit(cache, settings, rule, fallback, "search.guarantee.drop=0 allows no accuracy drop at "
                           "all, which no finite validation split can certify for any early exit; never exiting "
                           "early (give drop > 0, e.g. 0.01 for one point)")
    if n < need:
        return _never_exit(cache, settings, rule, fallback,
                           f"the validation split has {n} samples, fewer than the {need} needed to certify any early "
                           f"exit at drop={settings.drop}, delta={settings.delta} (even with no loss observed, "
                           f"(1 - drop)^n <= delta needs n >= {need}); never exiting early", min_samples=need)
    out = candidate_outcomes(cache, settings.steps, rule, temperatures, fallback)
    losses = out.loss.sum(1)
    p = p_values(losses, n, settings.drop, settings.p_value)
    j = int(fixed_sequence(p, settings.delta))
    tested = min(j + 1, settings.steps)
    if j == 0:
        return _never_exit(cache, settings, rule, fallback,
                           f"no early exit certified: the first candidate tau={out.taus[1].item():.6g} has p-value "
                           f"{p[1].item():.3g} > delta={settings.delta} on {n} validation samples (the rule is too "
                           f"risky for drop={settings.drop} at this split size); never exiting early",
                           tested=tested, min_samples=need)
    tau = float(out.taus[j])
    thresholds = [tau] * (cache.num_exits - 1) + [1.0]
    val_loss = float(out.loss[j].double().mean())
    val_drop = float(out.fallback_right.double().mean() - out.right[j].double().mean())
    early = float(out.early[j].double().mean())
    message = (f"certified tau={tau:.6g} ({j} of {settings.steps} candidates passed, {settings.p_value} p-value "
               f"{p[j].item():.3g} <= delta={settings.delta}): with probability >= {1 - settings.delta:g} the "
               f"accuracy drop against the {fallback} fallback is <= {settings.drop:g}; on the {n} validation "
               f"samples: {early:.1%} leave early, drop {val_drop:+.4f}, loss {val_loss:.4f}")
    log.info(message)
    return Certified(thresholds, tau, True, settings.drop, settings.delta, settings.p_value, n, float(p[j]),
                     val_loss, val_drop, early, tested, settings.steps, need, (rule or ExitRule()).name, fallback,
                     message)


@dataclass(frozen=True)
class Coverage:
    """The outcome of :func:`coverage`: ``trials`` certifications on ``n_cal`` samples of a pool of ``n_pool``.

    ``violation_rate`` (population check: the certified policy's exact drop on the pool is above ``drop``) must be
    at most ``delta`` up to Monte-Carlo error, ``mc_error`` = sqrt(delta (1 - delta) / trials).
    ``loss_violation_rate``: the certified policy's mean loss on the pool is above ``drop`` (what the test controls
    directly; the drop is at most the loss, so ``violation_rate <= loss_violation_rate``).
    ``resplit_violation_rate``: the drop realised on the held-out rest of a random split is above ``drop``;
    ``resplit_noise_violation_rate``: above ``drop + z * se`` (``se`` the held-out estimate's standard error).
    ``certified_rate``: trials that certified some early exit; ``mean_tau``; ``mean_early``: the mean fraction of
    pool samples that leave early under the certified policy; ``mean_pool_drop``: its mean drop on the pool;
    ``mean_pool_loss``: its mean loss on the pool; ``mean_heldout_drop``: the mean held-out drop of the re-split
    check."""

    n_cal: int
    n_pool: int
    trials: int
    drop: float
    delta: float
    p_value: str
    violation_rate: float
    loss_violation_rate: float
    mc_error: float
    resplit_violation_rate: float
    resplit_noise_violation_rate: float
    z: float
    certified_rate: float
    mean_tau: float
    mean_early: float
    mean_pool_drop: float
    mean_pool_loss: float
    mean_heldout_drop: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON)."""
        return dataclasses.asdict(self)


def coverage(pool: ExitCache, n_cal: int, settings: GuaranteeSettings, rule: ExitRule | None = None,
             temperatures: Sequence[float] | None = None, fallback: str = "ensemble", trials: int = 200,
             seed: int = 0, z: float = 1.645) -> Coverage:
    """An empirical check of :func:`certify`'s guarantee on a pool of cached outputs (e.g. a real network's
    validation and test outputs together), two ways, each over ``trials`` certifications on ``n_cal`` samples:

    1. Population check: the pool is the population. Each trial draws ``n_cal`` samples i.i.d. with replacement,
       certifies on them and computes the chosen policy's drop exactly on the whole pool; a violation is a pool
       drop above ``settings.drop``. There is no held-out sampling noise, so this rate must be at most ``delta``
       up to Monte-Carlo error (``Coverage.mc_error``); it is the check of the guarantee itself.
    2. Re-split check: each trial splits the pool at random into ``n_cal`` samples to certify on and the held-out
       rest, and measures the drop realised on the rest; a violation is a held-out drop above ``drop``. This rate
       is inflated by the held-out part's own sampling noise: the fixed sequence pushes the certified policy to
       the cheapest candidate that passes, so its true drop often sits just below ``drop``, and a held-out estimate
       with standard error ``se = sqrt(var(d) / n_held)`` (``d``: fallback right minus policy right per sample)
       lands above ``drop`` in up to about half of those trials even when the guarantee holds; the two parts of
       one finite pool are also negatively correlated (a certification part with few losses leaves more in the
       rest). So the rate with a noise allowance, held-out drop above ``drop + z * se`` (``z = 1.645``: one-sided
       5%), is reported too; the first can exceed ``delta`` without the guarantee failing.

    Per-candidate per-sample outcomes are computed once; each trial is then a weighted sum (multiplicities times
    outcomes), so all trials are a few matrix products."""
    n_pool = int(pool.labels.numel())
    if not 1 <= n_cal < n_pool:
        raise ValueError(f"n_cal={n_cal} must lie in 1..{n_pool - 1} (the pool holds {n_pool} samples)")
    if trials < 1:
        raise ValueError(f"trials={trials} must be >= 1")
    need = minimum_samples(settings.drop, settings.delta)
    out = candidate_outcomes(pool, settings.steps, rule, temperatures, fallback)
    loss, diff = out.loss.double(), out.fallback_right[None].double() - out.right.double()   # (S + 1, N)
    pool_drop, pool_loss = diff.mean(1), loss.mean(1)
    generator = torch.Generator().manual_seed(seed)

    def choose(weights: torch.Tensor) -> torch.Tensor:
        """The certified candidate per trial from ``(trials, N)`` sample weights summing to ``n_cal``."""
        if pool.num_exits < 2 or need is None or n_cal < need:
            return torch.zeros(trials, dtype=torch.long)
        p = p_values(weights @ loss.T, n_cal, settings.drop, settings.p_value)
        return fixed_sequence(p, settings.delta)

    draws = torch.randint(n_pool, (trials, n_cal), generator=generator)
    multiplicity = torch.zeros(trials, n_pool, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(trials, n_cal, dtype=torch.float64))
    chosen = choose(multiplicity)
    drops, pool_losses = pool_drop[chosen], pool_loss[chosen]

    order = torch.rand(trials, n_pool, generator=generator).argsort(1)
    in_cal = torch.zeros(trials, n_pool, dtype=torch.float64).scatter_(1, order[:, :n_cal], 1.0)
    split_chosen = choose(in_cal)
    held = 1.0 - in_cal
    n_held = n_pool - n_cal
    d = held * diff[split_chosen]                                             # (trials, N)
    held_drop = d.sum(1) / n_held
    held_var = ((held * diff[split_chosen] ** 2).sum(1) / n_held - held_drop ** 2).clamp_min(0.0)
    se = (held_var / n_held).sqrt()

    early = out.early.double().mean(1)
    return Coverage(n_cal, n_pool, trials, settings.drop, settings.delta, settings.p_value,
                    float((drops > settings.drop).double().mean()),
                    float((pool_losses > settings.drop).double().mean()),
                    math.sqrt(settings.delta * (1 - settings.delta) / trials),
                    float((held_drop > settings.drop).double().mean()),
                    float((held_drop > settings.drop + z * se).double().mean()), z,
                    float((chosen > 0).double().mean()), float(out.taus[chosen].mean()),
                    float(early[chosen].mean()), float(drops.mean()), float(pool_losses.mean()),
                    float(held_drop.mean()))
