"""After training: anytime points, budgeted curve, calibration and GA thresholds (searched on validation,
applied to test), in MACs and, with a latency table, in measured milliseconds; one :class:`PostFitResult`."""
from __future__ import annotations

import dataclasses

from scan_lightning.cost.latency import LatencyTable
from scan_lightning.cost.macs import CostTable
from scan_lightning.evaluation.result import (
    AnytimePoint,
    BudgetedPoint,
    CalibrationRecord,
    PostFitResult,
    SearchRecord,
    StageScore,
)
from scan_lightning.models.outputs import exit_names
from scan_lightning.policy.cache import ExitCache
from scan_lightning.policy.calibration import calibrate, calibration_errors, split_cache
from scan_lightning.policy.exit_policy import ExitPolicy, check_fallback
from scan_lightning.policy.guarantee import certify
from scan_lightning.policy.rules import ExitRule, fit_rule
from scan_lightning.policy.scoring import Scorer
from scan_lightning.policy.search import budget_sweep, genetic_search
from scan_lightning.policy.settings import CalibrationSettings, SearchSettings


def anytime(cache: ExitCache, costs: CostTable, latency: LatencyTable | None = None) -> list[AnytimePoint]:
    """Each exit's own accuracy against its cumulative MACs (and ms), and the ensemble's."""
    acc, macs = cache.accuracy().tolist(), costs.exit_macs().tolist()
    ms = latency.exit_ms.tolist() if latency is not None else [None] * len(macs)
    return [AnytimePoint(n, m, a, t) for n, m, a, t in zip(exit_names(cache.num_exits), macs, acc, ms)]


def budget_policies(val: ExitCache, steps: int, template: ExitPolicy) -> list[tuple[float, ExitPolicy]]:
    """MSDNet's budgeted sweep as exit policies of ``template``'s rule, temperatures and fallback (an exit nobody
    takes gets threshold 1, the last takes all)."""
    return [(p, template.with_thresholds(thr.clamp(min=1e-6, max=1.0).tolist()))
            for p, thr in budget_sweep(val, steps=steps, temperatures=list(template.temperatures),
                                       rule=template.rule)]


def budgeted_curve(val: ExitCache, test: ExitCache, scorer: Scorer, steps: int,
                   template: ExitPolicy | None = None) -> list[BudgetedPoint]:
    """MSDNet budgeted batch classification (Huang et al., ICLR 2018): thresholds from validation proportions of the
    ``template`` policy's rule scores (max softmax at T = 1, ensemble fallback by default), scored on both (the
    validation figures choose an operating point without the test set)."""
    template = template or ExitPolicy.create([1.0] * val.num_exits)
    rows = []
    for p, policy in budget_policies(val, steps, template):
        v = scorer(val, policy)
        rows.append(BudgetedPoint(p, list(policy.thresholds), scorer(test, policy), v.accuracy, v.mean_macs, v.mean_ms))
    return rows


def resolve_fallback(val: ExitCache, fallback: str) -> str:
    """``"auto"``: the ensemble (the paper) unless the deepest exit is more accurate on ``val``."""
    if fallback != "auto":
        return check_fallback(fallback)
    acc = val.accuracy()
    return "deepest" if acc[-2] > acc[-1] else "ensemble"


def stage_score(scorer: Scorer, cache: ExitCache, policy: ExitPolicy) -> StageScore:
    """``policy`` on one split, with the deepest exit's and the ensemble's own accuracy."""
    acc = cache.accuracy()
    return StageScore(**scorer(cache, policy).to_fields(), deepest_accuracy=acc[-2].item(),
                      ensemble_accuracy=acc[-1].item())


def score_policy(val: ExitCache, test: ExitCache, costs: CostTable, policy: ExitPolicy, *, budget_steps: int,
                 latency: LatencyTable | None = None) -> PostFitResult:
    """Accuracy, costs, speed-ups and exit mix of ``policy`` on ``val`` and ``test``; anytime and budgeted
    curves alongside."""
    scorer = Scorer(costs, latency)
    return PostFitResult(policy=policy, costs=costs, latency=latency, val=stage_score(scorer, val, policy),
                         test=stage_score(scorer, test, policy), anytime=anytime(test, costs, latency),
                         budgeted=budgeted_curve(val, test, scorer, budget_steps, policy), model={})


def calibrated_split(val: ExitCache, test: ExitCache, settings: CalibrationSettings, seed: int,
                     rule: ExitRule | None = None) -> tuple[ExitCache, list[float] | None, CalibrationRecord | None,
                                                           ExitRule]:
    """The validation part the search sees, the temperatures, the calibration record and the rule, fitted.

    With calibration on, or a rule that fits parameters (running_ensemble, learned), the validation outputs are split
    (seeded, ``settings.fraction`` fits): temperatures (with calibration on; ECE before and after on the search part
    and on test) and the rule's parameters are fitted on one part, the search sees only the other. Otherwise ``val``
    as it is."""
    rule = rule or ExitRule()
    if not settings.enabled and not rule.needs_fit:
        return val, None, None, rule
    search_val, cal_val = split_cache(val, settings.fraction, seed)
    if not settings.enabled:
        return search_val, None, None, fit_rule(rule, cal_val.logits, cal_val.labels, [1.0] * val.num_exits)
    fit = calibrate(cal_val, search_val, n_bins=settings.n_bins)
    record = CalibrationRecord(fit.temperatures, fit.ece_before, fit.ece_after, fit.n_bins, settings.fraction,
                               len(cal_val.labels), len(search_val.labels),
                               calibration_errors(test, None, settings.n_bins),
                               calibration_errors(test, fit.temperatures, settings.n_bins))
    return search_val, fit.temperatures, record, fit_rule(rule, cal_val.logits, cal_val.labels, fit.temperatures)


def search_and_score(val: ExitCache, test: ExitCache, costs: CostTable, settings: SearchSettings,
                     latency: LatencyTable | None = None, rule: ExitRule | None = None) -> PostFitResult:
    """Calibrate, fit the rule, search and score, never on test.

    With ``settings.calibration.enabled`` or a rule with parameters to fit, the validation outputs are split (seeded):
    per-exit temperatures and the rule's parameters are fitted on one part, the thresholds are searched on the other
    (:func:`calibrated_split`). The GA optimises ``settings.cost``: honest MACs (the paper) or the latency table's
    milliseconds. With ``settings.guarantee.enabled`` the thresholds are certified on the search part instead
    (:func:`~scan_lightning.policy.guarantee.certify`: Learn-then-Test), the rule and temperatures having been fitted
    on the other part, as the guarantee requires.
    """
    search_val, temperatures, calibration, rule = calibrated_split(val, test, settings.calibration,
                                                                   settings.ga.seed, rule)
    fallback = resolve_fallback(search_val, settings.fallback)
    if settings.guarantee.enabled:
        certified = certify(search_val, settings.guarantee, rule, temperatures, fallback)
        policy = ExitPolicy.create(certified.thresholds, temperatures, fallback, rule=rule)
        result = score_policy(search_val, test, costs, policy, budget_steps=settings.budget_steps, latency=latency)
        return dataclasses.replace(result, guarantee=certified, calibration=calibration)
    exit_costs, reference = Scorer(costs, latency).cost_model(settings.cost, fallback, rule)
    ga = genetic_search(search_val, exit_costs, reference_cost=reference, ga=settings.ga, fallback=fallback,
                        temperatures=temperatures, rule=rule)
    policy = ExitPolicy.create(ga.thresholds, temperatures, fallback, rule=rule)
    result = score_policy(search_val, test, costs, policy, budget_steps=settings.budget_steps, latency=latency)
    record = SearchRecord(settings.cost, ga.fitness, ga.best_per_generation, settings.ga.to_dict())
    return dataclasses.replace(result, search=record, calibration=calibration)


def pick_budget(result: PostFitResult, macs: float | None = None, ms: float | None = None) -> ExitPolicy:
    """The budgeted-curve policy with the most compute whose *validation* mean cost fits the budget (mean MACs
    or ms per image); one clear error when even the cheapest point does not fit."""
    if (macs is None) == (ms is None):
        raise ValueError("give exactly one budget: mean MACs or ms per image")
    unit, budget = ("macs", float(macs)) if macs is not None else ("ms", float(ms or 0.0))
    rows = [(cost, r) for r in result.budgeted if (cost := r.val_cost(unit)) is not None]
    if not rows:
        raise ValueError(f"the saved search holds no budgeted curve in {unit} (rerun the search"
                         f"{' with search.cost=latency' if ms is not None else ''})")
    fitting = [(cost, r) for cost, r in rows if cost <= budget]
    if not fitting:
        cheapest = min(cost for cost, _ in rows)
        raise ValueError(f"budget {budget:g} is below the cheapest budgeted point ({cheapest:g} {unit} per image)")
    _, best = max(fitting, key=lambda pair: (pair[0], pair[1].val_accuracy))
    return result.policy.with_thresholds(best.thresholds)
