"""The tables a run reports (per-exit costs and top-1; the dynamic-inference summary), rendered as text for
the run's logger (:mod:`scan_lightning.utils.logs`)."""
from __future__ import annotations

from collections.abc import Mapping

from rich.table import Table

from scan_lightning.cost.macs import CostTable
from scan_lightning.evaluation.result import PostFitResult
from scan_lightning.models.outputs import exit_name, exit_names
from scan_lightning.runtime.timing import mac_phrase, speed_phrase
from scan_lightning.utils.logs import render


def exit_rows(costs: CostTable, accuracy: Mapping[str, float]) -> list[dict]:
    """One row per exit plus the ensemble; ``accuracy`` maps ``exit1..exitK``/``ensemble`` to top-1 in [0, 1]."""
    rows = [
        {"exit": exit_name(e.index), "macs": e.cumulative_macs, "params": e.cumulative_params,
         "own_head_macs": e.own_head_macs, "top1": accuracy.get(exit_name(e.index))}
        for e in costs.exits
    ]
    last = costs.exits[-1]
    rows.append({"exit": "ensemble", "macs": costs.ensemble_macs, "params": last.cumulative_params,
                 "own_head_macs": costs.own_head_ensemble_macs, "top1": accuracy.get("ensemble")})
    return rows


def render_exit_table(rows: list[dict], title: str, plain_macs: int) -> str:
    """The rows with MACs in millions and relative to the plain baseline network."""
    table = Table(title=title)
    for col in ("exit", "cum. MACs (M)", "x plain", "own-head MACs (M) [public code]", "cum. params (M)", "top-1 %"):
        table.add_column(col, justify="right")
    for r in rows:
        top1 = "-" if r["top1"] is None else f"{100 * r['top1']:.2f}"
        table.add_row(r["exit"], f"{r['macs'] / 1e6:.2f}", f"{r['macs'] / plain_macs:.3f}",
                      f"{r['own_head_macs'] / 1e6:.2f}", f"{r['params'] / 1e6:.3f}", top1)
    return render(table)


def render_dynamic_summary(result: PostFitResult) -> str:
    """Policy on test: accuracy, honest MAC (and latency) speed-ups, exit mix, calibration, budgeted curve,
    wall clock of the deployment form."""
    parts: list = []
    t, policy = result.test, result.policy
    fractions = ", ".join(f"{n} {100 * f:.1f}%" for n, f in zip(
        exit_names(result.num_exits, f"fallback ({policy.fallback})"), t.exit_fractions))
    latency = (f"; predicted {t.mean_ms:.3f} ms/img from the latency table = "
               f"{speed_phrase(t.latency_speedup_plain)} than the plain network"
               if t.mean_ms is not None and t.latency_speedup_plain is not None else "")
    searched = (f"searched on the validation split, cost: {result.search.cost}" if result.search else
                "certified on the validation split" if result.guarantee else "given")
    parts.append(
        f"Dynamic inference (rule {policy.rule.name}, thresholds {[round(x, 4) for x in policy.thresholds]}, {searched}; "
        f"temperatures {[round(x, 3) for x in policy.temperatures]}): test top-1 {100 * t.accuracy:.2f}% "
        f"(deepest exit {100 * t.deepest_accuracy:.2f}%, ensemble {100 * t.ensemble_accuracy:.2f}%), mean "
        f"{t.mean_macs / 1e6:.2f} M MACs = {mac_phrase(t.speedup_plain)} than the plain network, "
        f"{mac_phrase(t.speedup_deepest)} than running every exit{latency}; exits: {fractions}"
    )
    g = result.guarantee
    if g is not None:
        parts.append(f"Guarantee ({g.p_value}, drop <= {100 * g.drop:g} points with probability >= {1 - g.delta:g}): "
                     f"{g.message}")
    cal = result.calibration
    if cal:
        parts.append(f"Calibration (per-exit temperature, fitted on {cal.fitted_on} validation images): ECE on test "
                     "before -> after: " + ", ".join(f"{exit_name(i)} {b:.3f} -> {a:.3f}" for i, (b, a) in
                                                     enumerate(zip(cal.ece_test_before, cal.ece_test_after))))
    budget = Table(title="Budgeted batch classification (test; thresholds from validation)")
    has_ms = any(r.test.mean_ms is not None for r in result.budgeted)
    for col in ("p", "mean MACs (M)", *(["mean ms/img (table)"] if has_ms else []), "top-1 %"):
        budget.add_column(col, justify="right")
    for r in result.budgeted[:: max(1, len(result.budgeted) // 8)]:
        budget.add_row(f"{r.p:.2f}", f"{r.test.mean_macs / 1e6:.2f}",
                       *([f"{r.test.mean_ms:.3f}"] if has_ms and r.test.mean_ms is not None else []),
                       f"{100 * r.test.accuracy:.2f}")
    parts.append(budget)
    if result.wall_clock:
        form = ", ".join(k for k, v in (result.deploy.to_dict() if result.deploy else {}).items() if v) or "eager"
        wall = Table(title=f"Wall clock: real early exit vs the plain network, same images, deployment form: {form}")
        for col in ("batch", "images", "plain ms/img", "early-exit ms/img", "early-exit img/s", "batch p50 / p95 ms",
                    "wall clock", "MACs", "wall / MAC"):
            wall.add_column(col, justify="right")
        for w in result.wall_clock:
            e = w.early_exit
            wall.add_row(str(w.batch_size), str(w.images), f"{w.plain.ms_per_image:.3f}", f"{e.ms_per_image:.3f}",
                         f"{e.images_per_s:.0f}", f"{e.call_p50_ms:.2f} / {e.call_p95_ms:.2f}",
                         speed_phrase(w.wall_speedup), mac_phrase(w.mac_speedup), f"{w.efficiency:.2f}")
        parts.append(wall)
    return render(*parts)
