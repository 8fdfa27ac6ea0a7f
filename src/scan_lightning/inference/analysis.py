"""After training: anytime points, budgeted curve and GA thresholds (searched on validation, applied to test)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from scan_lightning.inference.cache import ExitCache, evaluate_thresholds
from scan_lightning.inference.cost import CostTable
from scan_lightning.inference.predictor import check_fallback, check_thresholds
from scan_lightning.inference.search import budget_sweep, check_ga_settings, genetic_search


def exit_macs(costs: CostTable) -> torch.Tensor:
    """(K + 1,) honest MACs of leaving at each exit; the ensemble fallback ran everything."""
    cum = costs.cumulative_macs
    return torch.cat([cum, cum[-1:]])


def anytime(cache: ExitCache, costs: CostTable) -> list[dict]:
    """Each exit's own accuracy against its cumulative MACs (and the ensemble's)."""
    acc, macs = cache.accuracy().tolist(), exit_macs(costs).tolist()
    names = [f"exit{i + 1}" for i in range(cache.num_exits)] + ["ensemble"]
    return [{"exit": n, "macs": m, "accuracy": a} for n, m, a in zip(names, macs, acc)]


def budgeted_curve(val: ExitCache, test: ExitCache, costs: CostTable, steps: int = 40) -> list[dict]:
    """MSDNet budgeted batch classification: thresholds from validation proportions, scored on test."""
    em = exit_macs(costs)
    rows = []
    for p, thresholds in budget_sweep(val, steps=steps):
        res = evaluate_thresholds(test, thresholds.tolist(), em)
        rows.append({"p": p, "thresholds": thresholds.tolist(), **res.to_dict()})
    return rows


def check_search(search: Mapping[str, Any]) -> None:
    """Reject bad search settings up front (the callback calls this before training starts)."""
    check_ga_settings(**dict(search.get("ga", {})))
    fallback = search.get("fallback", "ensemble")
    if fallback != "auto":
        check_fallback(fallback)
    if int(search.get("budget_steps", 40)) < 1:
        raise ValueError(f"search.budget_steps={search.get('budget_steps')} must be >= 1")


def resolve_fallback(val: ExitCache, fallback: str) -> str:
    """``"auto"``: the ensemble (the paper) unless the deepest exit is more accurate on ``val``."""
    if fallback != "auto":
        return check_fallback(fallback)
    acc = val.accuracy()
    return "deepest" if acc[-2] > acc[-1] else "ensemble"


def score_thresholds(val: ExitCache, test: ExitCache, costs: CostTable, thresholds: Sequence[float],
                     temperatures: Sequence[float] | None = None, fallback: str = "ensemble",
                     budget_steps: int = 40) -> dict[str, Any]:
    """Accuracy, MACs, speed-ups and exit mix of ``thresholds`` on ``val`` and ``test``; anytime and
    budgeted curves alongside. The layout of ``thresholds.json``."""
    em = exit_macs(costs)
    temps = list(temperatures) if temperatures is not None else [1.0] * val.num_exits
    out: dict[str, Any] = {"num_exits": val.num_exits, "thresholds": list(thresholds), "temperatures": temps,
                           "fallback": fallback, "costs": costs.to_dict()}
    for stage, cache in (("val", val), ("test", test)):
        res = evaluate_thresholds(cache, thresholds, em, temps, fallback)
        acc = cache.accuracy()
        out[stage] = {**res.to_dict(), **speedups(res.mean_macs, costs),
                      "deepest_accuracy": acc[-2].item(), "ensemble_accuracy": acc[-1].item()}
    out["anytime"] = anytime(test, costs)
    out["budgeted"] = budgeted_curve(val, test, costs, steps=budget_steps)
    return out


def search_and_score(val: ExitCache, test: ExitCache, costs: CostTable, search: Mapping[str, Any]) -> dict:
    """GA thresholds searched on ``val`` (never on test), then scored by :func:`score_thresholds`."""
    ga_cfg = dict(search.get("ga", {}))
    fallback = resolve_fallback(val, search.get("fallback", "ensemble"))
    ga = genetic_search(val, exit_macs(costs), reference_macs=costs.plain_macs, fallback=fallback, **ga_cfg)
    out = score_thresholds(val, test, costs, ga.thresholds, fallback=fallback,
                           budget_steps=int(search.get("budget_steps", 40)))
    out["ga"] = {"fitness": ga.fitness, "best_per_generation": ga.best_per_generation, **ga_cfg}
    return out


def speedups(mean_macs: float, costs: CostTable) -> dict[str, float]:
    """MAC speed-up vs the plain baseline network and vs the deepest exit of this network."""
    return {"speedup_plain": costs.plain_macs / mean_macs, "speedup_deepest": costs.ensemble_macs / mean_macs}


def save_thresholds(result: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


def load_thresholds(path: str | Path, num_exits: int) -> tuple[list[float], list[float], str]:
    """Thresholds, temperatures and fallback from a ``thresholds.json``, checked against the network."""
    data = json.loads(Path(path).read_text())
    if data.get("num_exits") != num_exits or len(data.get("thresholds", [])) != num_exits:
        raise ValueError(f"{path} holds thresholds for {data.get('num_exits')} exits, but this network has "
                         f"{num_exits}: it belongs to another model")
    check_thresholds(data["thresholds"], num_exits, data.get("temperatures"))
    return (list(data["thresholds"]), list(data.get("temperatures") or [1.0] * num_exits),
            check_fallback(data.get("fallback", "ensemble")))

