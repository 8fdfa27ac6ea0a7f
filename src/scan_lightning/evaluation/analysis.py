"""After training: anytime points, budgeted curve, calibration and GA thresholds (searched on validation,
applied to test), in MACs and, with a latency table, in measured milliseconds."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scan_lightning.cost.latency import LatencyTable
from scan_lightning.cost.macs import CostTable
from scan_lightning.models.outputs import exit_names
from scan_lightning.policy.cache import ExitCache
from scan_lightning.policy.calibration import calibrate, calibration_errors, split_cache
from scan_lightning.policy.exit_policy import ExitPolicy, check_fallback
from scan_lightning.policy.scoring import Scorer
from scan_lightning.policy.search import budget_sweep, check_ga_settings, genetic_search

COSTS = ("macs", "latency")


def anytime(cache: ExitCache, costs: CostTable, latency: LatencyTable | None = None) -> list[dict]:
    """Each exit's own accuracy against its cumulative MACs (and ms), and the ensemble's."""
    acc, macs = cache.accuracy().tolist(), costs.exit_macs().tolist()
    ms = latency.exit_ms.tolist() if latency is not None else [None] * len(macs)
    return [{"exit": n, "macs": m, "accuracy": a, **({"ms": t} if t is not None else {})}
            for n, m, a, t in zip(exit_names(cache.num_exits), macs, acc, ms)]


def budget_policies(val: ExitCache, steps: int, temperatures: list[float] | None, fallback: str
                    ) -> list[tuple[float, ExitPolicy]]:
    """MSDNet's budgeted sweep as exit policies (an exit nobody takes gets threshold 1, the last takes all)."""
    return [(p, ExitPolicy.create(thr.clamp(min=1e-6, max=1.0).tolist(), temperatures, fallback))
            for p, thr in budget_sweep(val, steps=steps, temperatures=temperatures)]


def budgeted_curve(val: ExitCache, test: ExitCache, scorer: Scorer, steps: int = 40,
                   temperatures: list[float] | None = None, fallback: str = "ensemble") -> list[dict]:
    """MSDNet budgeted batch classification: thresholds from validation proportions, scored on both
    (``val_*`` keys: to choose an operating point without the test set)."""
    rows = []
    for p, policy in budget_policies(val, steps, temperatures, fallback):
        v = scorer(val, policy)
        rows.append({"p": p, "thresholds": list(policy.thresholds), **scorer(test, policy),
                     "val_accuracy": v["accuracy"], "val_mean_macs": v["mean_macs"],
                     **({"val_mean_ms": v["mean_ms"]} if "mean_ms" in v else {})})
    return rows


def check_search(search: Mapping[str, Any]) -> None:
    """Reject bad search settings up front (the callback calls this before training starts)."""
    check_ga_settings(**dict(search.get("ga", {})))
    fallback = search.get("fallback", "ensemble")
    if fallback != "auto":
        check_fallback(fallback)
    if int(search.get("budget_steps", 40)) < 1:
        raise ValueError(f"search.budget_steps={search.get('budget_steps')} must be >= 1")
    cost = search.get("cost", "macs")
    if cost not in COSTS:
        raise ValueError(f"search.cost={cost!r} is not allowed; choose one of {COSTS}")
    cal = dict(search.get("calibration") or {})
    if cal.get("enabled", False):
        fraction = float(cal.get("fraction", 0.5))
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"search.calibration.fraction={fraction} must lie strictly between 0 and 1")
        if int(cal.get("n_bins", 15)) < 1:
            raise ValueError(f"search.calibration.n_bins={cal.get('n_bins')} must be >= 1")


def resolve_fallback(val: ExitCache, fallback: str) -> str:
    """``"auto"``: the ensemble (the paper) unless the deepest exit is more accurate on ``val``."""
    if fallback != "auto":
        return check_fallback(fallback)
    acc = val.accuracy()
    return "deepest" if acc[-2] > acc[-1] else "ensemble"


def score_policy(val: ExitCache, test: ExitCache, costs: CostTable, policy: ExitPolicy,
                 latency: LatencyTable | None = None, budget_steps: int = 40) -> dict[str, Any]:
    """Accuracy, costs, speed-ups and exit mix of ``policy`` on ``val`` and ``test``; anytime and budgeted
    curves alongside. The layout of ``thresholds.json``."""
    scorer = Scorer(costs, latency)
    out: dict[str, Any] = {"num_exits": val.num_exits, **policy.to_dict(), "costs": costs.to_dict(),
                           "latency": latency.to_dict() if latency is not None else None}
    for stage, cache in (("val", val), ("test", test)):
        acc = cache.accuracy()
        out[stage] = {**scorer(cache, policy), "deepest_accuracy": acc[-2].item(), "ensemble_accuracy": acc[-1].item()}
    out["anytime"] = anytime(test, costs, latency)
    out["budgeted"] = budgeted_curve(val, test, scorer, budget_steps, list(policy.temperatures), policy.fallback)
    return out


def search_and_score(val: ExitCache, test: ExitCache, costs: CostTable, search: Mapping[str, Any],
                     latency: LatencyTable | None = None) -> dict[str, Any]:
    """Calibrate, search and score, never on test.

    With ``search.calibration.enabled``, the validation outputs are split (seeded): per-exit temperatures are
    fitted on one part, the GA searches thresholds on the other part's calibrated confidences. The GA
    optimises ``search.cost``: honest MACs (the paper) or the latency table's milliseconds.
    """
    check_search(search)
    ga_cfg = dict(search.get("ga", {}))
    cal_cfg = dict(search.get("calibration") or {})
    search_val, temperatures, calibration = val, None, None
    if cal_cfg.get("enabled", False):
        search_val, cal_val = split_cache(val, float(cal_cfg.get("fraction", 0.5)), int(ga_cfg.get("seed", 0)))
        n_bins = int(cal_cfg.get("n_bins", 15))
        fit = calibrate(cal_val, search_val, n_bins=n_bins)
        temperatures = fit.temperatures
        calibration = {**fit.to_dict(), "fraction": float(cal_cfg.get("fraction", 0.5)),
                       "fitted_on": len(cal_val.labels), "reported_on": len(search_val.labels),
                       "ece_test_before": calibration_errors(test, None, n_bins),
                       "ece_test_after": calibration_errors(test, temperatures, n_bins)}
    fallback = resolve_fallback(search_val, search.get("fallback", "ensemble"))
    cost = search.get("cost", "macs")
    exit_costs, reference = Scorer(costs, latency).cost_model(cost, fallback)
    ga = genetic_search(search_val, exit_costs, reference_cost=reference, fallback=fallback,
                        temperatures=temperatures, **ga_cfg)
    policy = ExitPolicy.create(ga.thresholds, temperatures, fallback)
    out = score_policy(search_val, test, costs, policy, latency, int(search.get("budget_steps", 40)))
    out["cost"] = cost
    out["ga"] = {"fitness": ga.fitness, "best_per_generation": ga.best_per_generation, **ga_cfg}
    out["calibration"] = calibration
    return out


def pick_budget(result: Mapping[str, Any], macs: float | None = None, ms: float | None = None) -> ExitPolicy:
    """The budgeted-curve policy with the most compute whose *validation* mean cost fits the budget (mean MACs
    or ms per image); one clear error when even the cheapest point does not fit."""
    if (macs is None) == (ms is None):
        raise ValueError("give exactly one budget: mean MACs or ms per image")
    key, budget = ("val_mean_macs", macs) if macs is not None else ("val_mean_ms", ms)
    rows = [r for r in result.get("budgeted", []) if key in r]
    if not rows:
        raise ValueError(f"the saved search holds no budgeted curve with {key} (rerun the search"
                         f"{' with search.cost=latency' if ms is not None else ''})")
    fitting = [r for r in rows if r[key] <= budget]
    if not fitting:
        cheapest = min(r[key] for r in rows)
        raise ValueError(f"budget {budget:g} is below the cheapest budgeted point ({cheapest:g} {key[9:]} per image)")
    best = max(fitting, key=lambda r: (r[key], r["val_accuracy"]))
    return ExitPolicy.create(best["thresholds"], result.get("temperatures"), result.get("fallback", "ensemble"))


def save_thresholds(result: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
