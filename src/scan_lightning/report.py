"""The per-exit summary printed after a run: exit, cumulative MACs and params, top-1."""
from __future__ import annotations

from typing import Mapping

from rich.console import Console
from rich.table import Table

from scan_lightning.inference.cost import CostTable


def exit_rows(costs: CostTable, accuracy: Mapping[str, float]) -> list[dict]:
    """One row per exit plus the ensemble; ``accuracy`` maps ``exit1..exitK``/``ensemble`` to top-1 in [0, 1]."""
    rows = [
        {"exit": f"exit{e.index + 1}", "macs": e.cumulative_macs, "params": e.cumulative_params,
         "own_head_macs": e.own_head_macs, "top1": accuracy.get(f"exit{e.index + 1}")}
        for e in costs.exits
    ]
    last = costs.exits[-1]
    rows.append({"exit": "ensemble", "macs": costs.ensemble_macs, "params": last.cumulative_params,
                 "own_head_macs": costs.own_head_ensemble_macs, "top1": accuracy.get("ensemble")})
    return rows


def print_exit_table(rows: list[dict], title: str, plain_macs: int, console: Console | None = None) -> None:
    """Print the rows with MACs in millions and relative to the plain baseline network."""
    table = Table(title=title)
    for col in ("exit", "cum. MACs (M)", "x plain", "own-head MACs (M) [public code]", "cum. params (M)", "top-1 %"):
        table.add_column(col, justify="right")
    for r in rows:
        top1 = "-" if r["top1"] is None else f"{100 * r['top1']:.2f}"
        table.add_row(r["exit"], f"{r['macs'] / 1e6:.2f}", f"{r['macs'] / plain_macs:.3f}",
                      f"{r['own_head_macs'] / 1e6:.2f}", f"{r['params'] / 1e6:.3f}", top1)
    (console or Console(width=120)).print(table)


def print_dynamic_summary(result: dict, timings: list, console: Console | None = None) -> None:
    """GA thresholds on test: accuracy, honest MAC speed-ups, exit mix, budgeted curve, wall-clock."""
    console = console or Console(width=120)
    t = result["test"]
    fractions = ", ".join(f"{n} {100 * f:.1f}%" for n, f in zip(
        [f"exit{i + 1}" for i in range(result["num_exits"])] + [f"fallback ({result['fallback']})"],
        t["exit_fractions"]))
    console.print(
        f"[bold]Dynamic inference[/bold] (thresholds {[round(x, 4) for x in result['thresholds']]}, searched on "
        f"the validation split): test top-1 {100 * t['accuracy']:.2f}% (deepest exit "
        f"{100 * t['deepest_accuracy']:.2f}%, ensemble {100 * t['ensemble_accuracy']:.2f}%), mean "
        f"{t['mean_macs'] / 1e6:.2f} M MACs = {t['speedup_plain']:.2f}x fewer than the plain network, "
        f"{t['speedup_deepest']:.2f}x fewer than running every exit; exits: {fractions}"
    )
    budget = Table(title="Budgeted batch classification (test; thresholds from validation)")
    for col in ("p", "mean MACs (M)", "top-1 %"):
        budget.add_column(col, justify="right")
    for r in result["budgeted"][:: max(1, len(result["budgeted"]) // 8)]:
        budget.add_row(f"{r['p']:.2f}", f"{r['mean_macs'] / 1e6:.2f}", f"{100 * r['accuracy']:.2f}")
    console.print(budget)
    if timings:
        wall = Table(title="Wall clock: real early exit vs the full (plain) network, same images")
        for col in ("batch", "images", "full ms/img", "early-exit ms/img", "wall speed-up", "MAC speed-up",
                    "wall / MAC"):
            wall.add_column(col, justify="right")
        for r in timings:
            wall.add_row(str(r.batch_size), str(r.images), f"{r.full_ms_per_image:.3f}",
                         f"{r.early_exit_ms_per_image:.3f}", f"{r.wall_speedup:.2f}x", f"{r.mac_speedup:.2f}x",
                         f"{r.efficiency:.2f}")
        console.print(wall)
