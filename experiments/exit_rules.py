"""Every exit rule on one trained run: test accuracy against honest MACs and measured ms per image, chosen on
validation.

    python experiments/exit_rules.py logs/rules_demo --out experiments/results/exit_rules [--images 512]

Loads the run's selected checkpoint (``summary.json``; a phased run: its last phase) and its saved data config,
collects every exit's outputs once on the validation and test splits, measures honest MACs and, in the deployment
form (default ``DeployOptions``), latency tables at batch 1 and batch 256 on the first test images. Per rule in
``RULE_NAMES`` the validation outputs are split once (``split_cache(val, 0.5, seed)``, the same split for every rule):
the fit part fits the rule's parameters (running_ensemble, learned) and, when the run calibrates, the temperatures;
the search part chooses. Candidate policies - MSDNet's budgeted sweep and a dense sweep of shared thresholds - are
scored on the search part (to choose) and on test (to report), in MACs and in ms at both batch sizes. Per rule:
operating points at 25 / 50 / 75 % of the plain network's MACs and ms, SCAN's GA, and the distribution-free
guaranteed points (``scan_lightning.policy.guarantee``, when present) with their coverage check. Nothing is chosen
on test. Writes ``<out>.md``, ``<out>.json`` and ``<out>.png``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from scan_lightning.cost.latency import LatencyTable
from scan_lightning.cost.macs import CostTable, measure_costs
from scan_lightning.data.base import input_shape
from scan_lightning.evaluation.analysis import resolve_fallback
from scan_lightning.export.backends import deploy
from scan_lightning.policy.cache import ExitCache, collect_outputs
from scan_lightning.policy.calibration import fit_temperatures, split_cache
from scan_lightning.policy.exit_policy import ExitPolicy
from scan_lightning.policy.guarantee import certify, coverage
from scan_lightning.policy.rules import RULE_NAMES, RULES, ExitRule, fit_rule
from scan_lightning.policy.scoring import Scorer
from scan_lightning.policy.search import budget_sweep, genetic_search
from scan_lightning.policy.settings import GuaranteeSettings, SearchSettings
from scan_lightning.runtime.forms import DeployOptions
from scan_lightning.runtime.memory import retained_memory
from scan_lightning.runtime.timing import first_images, measure_latency
from scan_lightning.training.checkpoints import recorded_checkpoint
from scan_lightning.training.module import load_module
from scan_lightning.utils.config import build
from scan_lightning.utils.modes import eval_mode

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.25, 0.5, 0.75)          # budgets, as fractions of the plain network's cost
DROPS = (0.005, 0.01)                  # the guaranteed points' accuracy drops (fractions), at DELTA
DELTA = 0.1
UNITS = ("macs", "ms_b1", "ms_large")  # the three cost units every point is scored in
SPLIT_SEED = 0


# --- provenance -------------------------------------------------------------------------------------------------
def repo_relative(path: str | Path) -> str:
    """A path as the results record it: relative to the repository checkout it lies in (this one or another
    checkout of the project, e.g. a run under another worktree's ``logs/``), never this machine's absolute path."""
    p = Path(path).resolve()
    if p.is_relative_to(ROOT):
        return str(p.relative_to(ROOT))
    for parent in p.parents:
        if (parent / "pyproject.toml").is_file() and (parent / ".git").exists():
            return str(p.relative_to(parent))
    return p.name


def code_commit() -> str:
    """The short commit of this checkout, with ``+dirty`` when tracked files other than the committed results differ
    from it ("unknown" outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)experiments/results"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# --- the run ----------------------------------------------------------------------------------------------------
def run_stage(run_dir: Path) -> Path:
    """The directory whose ``summary.json`` names the run's selected checkpoint: the run itself or, for a phased
    run (``phase1/``, ``phase2/``, ...), its last finished phase."""
    if (run_dir / "summary.json").is_file():
        return run_dir
    phases = sorted((p for p in run_dir.iterdir() if p.is_dir() and (p / "summary.json").is_file()),
                    key=lambda p: (len(p.name), p.name))
    if not phases:
        raise FileNotFoundError(f"{run_dir} holds no summary.json (nor any phase with one): not a finished run")
    return phases[-1]


def selected_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the run selected on validation (``summary.json``; found again under ``checkpoints/`` when the
    run was moved), or its only non-``last`` checkpoint."""
    stage = run_stage(run_dir)
    recorded = recorded_checkpoint(stage)
    if recorded:
        path = Path(recorded)
        if path.is_file():
            return path
        moved = stage / "checkpoints" / path.name
        if moved.is_file():
            return moved
    candidates = sorted(p for p in (stage / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    if len(candidates) != 1:
        raise FileNotFoundError(f"{stage}: no recorded selected checkpoint and {len(candidates)} candidates")
    return candidates[0]


@dataclass
class Measured:
    """What every rule is scored on: both splits' outputs, the honest MACs and the two latency tables."""

    val: ExitCache
    test: ExitCache
    costs: CostTable
    latency_b1: LatencyTable
    latency_large: LatencyTable
    run_config: dict[str, Any]


def measure(run_dir: Path, images: int, data_dir: str | None = None, progress: bool = True) -> Measured:
    """Load the run's selected checkpoint and data (the saved config; ``data_dir`` overrides where the files go),
    collect all exits' outputs on val and test once, and measure MACs and, in the deployment form, latency tables
    at batch 1 and at ``min(256, images)`` on the first ``images`` test images."""
    module = load_module(selected_checkpoint(run_dir))
    net = module.net.eval()
    run_cfg = dict(module.hparams.run_config)
    data_cfg = OmegaConf.create(run_cfg["data"])
    if data_dir is not None:
        data_cfg.data_dir = data_dir
    shape = input_shape(data_cfg)
    dm = build(data_cfg)
    dm.prepare_data()
    dm.setup("test")
    with eval_mode(net), retained_memory():
        val = collect_outputs(net, dm.eval_dataloader("val"), progress="validation outputs" if progress else None)
        test = collect_outputs(net, dm.eval_dataloader("test"), progress="test outputs" if progress else None)
        costs = measure_costs(net, shape)
        deployed = deploy(net, DeployOptions(), costs)
        x = first_images(dm.eval_dataloader("test"), images)
        latency_b1 = measure_latency(deployed, x, 1)
        latency_large = measure_latency(deployed, x, min(256, x.shape[0]))
    return Measured(val, test, costs, latency_b1, latency_large, run_cfg)


# --- scoring ----------------------------------------------------------------------------------------------------
def plain_costs(m: Measured) -> dict[str, float]:
    """The plain network's cost in each unit (the reference of every budget)."""
    return {"macs": float(m.costs.plain_macs), "ms_b1": m.latency_b1.plain_ms, "ms_large": m.latency_large.plain_ms}


def score(m: Measured, cache: ExitCache, policy: ExitPolicy) -> dict[str, Any]:
    """``policy`` on ``cache`` in all three units (:class:`Scorer` with each latency table; skipped exit branches
    not charged)."""
    b1 = Scorer(m.costs, m.latency_b1)(cache, policy)
    large = Scorer(m.costs, m.latency_large)(cache, policy)
    return {"accuracy": b1.accuracy, "macs": b1.mean_macs, "ms_b1": b1.mean_ms, "ms_large": large.mean_ms,
            "exit_fractions": b1.exit_fractions}


def shared_levels(scores: torch.Tensor, steps: int) -> list[float]:
    """Shared thresholds for a dense sweep: ``steps`` quantiles of the rule's scores (every exit pooled) plus 1
    (never exit early), deduplicated, inside (0, 1]."""
    q = torch.quantile(scores.flatten().double(), torch.linspace(0.0, 0.995, steps, dtype=torch.float64))
    levels = {min(max(float(v), 1e-6), 1.0) for v in q} | {1.0}
    return sorted(levels)


def candidates(search: ExitCache, rule: ExitRule, temperatures: list[float], fallback: str, budget_steps: int,
               shared_steps: int) -> list[tuple[str, float, ExitPolicy]]:
    """The curve's policies, all from the search part: MSDNet's budgeted sweep under ``rule`` (``("budget", p,
    policy)``) and shared thresholds at quantiles of the rule's scores (``("shared", t, policy)``)."""
    out = []
    for p, thr in budget_sweep(search, steps=budget_steps, temperatures=temperatures, rule=rule):
        out.append(("budget", p, ExitPolicy.create(thr.clamp(min=1e-6, max=1.0).tolist(), temperatures, fallback,
                                                   rule=rule)))
    scores = search.decisions(rule, temperatures, fallback)[0]
    for t in shared_levels(scores, shared_steps):
        out.append(("shared", t, ExitPolicy.create([t] * search.num_exits, temperatures, fallback, rule=rule)))
    return out


def val_pareto(points: list[dict], unit: str) -> list[int]:
    """Indices of the points no other point beats on the search part in ``unit`` (cheaper and at least as
    accurate), in increasing validation cost: the curve as validation would draw it."""
    order = sorted(range(len(points)), key=lambda i: (points[i]["val"][unit], -points[i]["val"]["accuracy"]))
    front, best = [], -math.inf
    for i in order:
        if points[i]["val"]["accuracy"] > best:
            front.append(i)
            best = points[i]["val"]["accuracy"]
    return front


def operating_point(points: list[dict], unit: str, budget: float) -> dict[str, Any] | None:
    """The point with the highest validation (search part) accuracy whose validation mean cost in ``unit`` is
    within ``budget`` (ties: the cheaper); ``None`` when none fits. Its test figures are what is reported."""
    fitting = [p for p in points if p["val"][unit] <= budget]
    if not fitting:
        return None
    best = max(fitting, key=lambda p: (p["val"]["accuracy"], -p["val"][unit]))
    return {"source": best["source"], "param": best["param"], "thresholds": best["thresholds"],
            "val_accuracy": best["val"]["accuracy"], "val_cost": best["val"][unit],
            "test_accuracy": best["test"]["accuracy"], "test_cost": best["test"][unit]}


def cheapest_point(points: list[dict], unit: str) -> dict[str, Any]:
    """The candidate with the lowest validation (search part) cost in ``unit`` (the floor of every budget; ties: the
    more accurate on validation), with its test figures."""
    best = min(points, key=lambda p: (p["val"][unit], -p["val"]["accuracy"]))
    return {"source": best["source"], "param": best["param"], "thresholds": best["thresholds"],
            "val_accuracy": best["val"]["accuracy"], "val_cost": best["val"][unit],
            "test_accuracy": best["test"]["accuracy"], "test_cost": best["test"][unit]}


# --- the guarantee -----------------------------------------------------------------------------------------------
def guarantee_settings(drop: float) -> GuaranteeSettings:
    """The settings of a guaranteed point: drop ``drop`` at ``DELTA``, binomial p-values, 100 shared thresholds."""
    return GuaranteeSettings(enabled=True, drop=drop, delta=DELTA, p_value="binomial", steps=100)


def _plain(obj: Any) -> Any:
    """A result object as plain data (its ``to_dict()``, else a dataclass's fields, else itself)."""
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def guaranteed_points(m: Measured, search: ExitCache, rule: ExitRule, temperatures: list[float],
                      fallback: str) -> dict[str, Any]:
    """Per drop in :data:`DROPS`: ``certify`` on the search part, the certified thresholds scored on the search part
    and on test, and the test drop against never exiting early."""
    never = m.test.outcome(fallback)[-1].float().mean().item()
    out: dict[str, Any] = {"never_exit_test_accuracy": never, "points": []}
    for drop in DROPS:
        certified = certify(search, guarantee_settings(drop), rule=rule, temperatures=temperatures,
                              fallback=fallback)
        policy = ExitPolicy.create(list(certified.thresholds), temperatures, fallback, rule=rule)
        test = score(m, m.test, policy)
        out["points"].append({"drop": drop, "delta": DELTA, "certify": _plain(certified),
                              "val": score(m, search, policy), "test": test,
                              "test_drop": never - test["accuracy"]})
    return out


def coverage_check(m: Measured, fit: ExitCache, search: ExitCache, rule: ExitRule,
                   temperatures: list[float], fallback: str, trials: int) -> dict[str, Any]:
    """The guarantee's coverage per drop in :data:`DROPS`, for the procedure the guaranteed points ran: calibration
    draws of the search part's size (what ``certify`` saw) from the pooled val + test outputs (without the fit part
    for a rule fitted on it)."""
    parts = [search, m.test] if RULES[rule.name].fitted or temperatures != [1.0] * m.val.num_exits else [m.val, m.test]
    pool = ExitCache(torch.cat([p.logits for p in parts], 1), torch.cat([p.labels for p in parts]))
    n_cal = len(search.labels)
    out: dict[str, Any] = {"pool": "search part + test" if parts[0] is search else "val + test",
                           "pool_size": len(pool.labels), "n_cal": n_cal, "trials": trials, "rates": []}
    start = time.perf_counter()
    for drop in DROPS:
        cov = coverage(pool, n_cal, guarantee_settings(drop), rule=rule, temperatures=temperatures,
                         fallback=fallback, trials=trials, seed=SPLIT_SEED)
        out["rates"].append({"drop": drop, "delta": DELTA, **_plain(cov)})
    out["seconds"] = time.perf_counter() - start
    return out


# --- all rules --------------------------------------------------------------------------------------------------
def evaluate_rules(m: Measured, budget_steps: int = 40, shared_steps: int = 40, coverage_trials: int = 200,
                   coverage_seconds: float = 300.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every rule in ``RULE_NAMES`` on ``m``: curve, operating points, GA, guaranteed points and (max_softmax, then
    the other rules while the coverage checks so far took under ``coverage_seconds``) the coverage check."""
    fit, search = split_cache(m.val, 0.5, SPLIT_SEED)
    calibrate = bool(((m.run_config.get("search") or {}).get("calibration") or {}).get("enabled", False))
    temperatures = fit_temperatures(fit) if calibrate else [1.0] * m.val.num_exits
    fallback = resolve_fallback(search, str((m.run_config.get("search") or {}).get("fallback", "auto")))
    plain = plain_costs(m)
    ga_settings = SearchSettings.from_config(None).ga
    rules: dict[str, Any] = {}
    coverage_spent = 0.0
    for name in RULE_NAMES:
        start = time.perf_counter()
        rule = fit_rule(ExitRule(name), fit.logits, fit.labels, temperatures)
        points = []
        for source, param, policy in candidates(search, rule, temperatures, fallback, budget_steps, shared_steps):
            points.append({"source": source, "param": param, "thresholds": list(policy.thresholds),
                           "val": score(m, search, policy), "test": score(m, m.test, policy)})
        fronts = {unit: val_pareto(points, unit) for unit in UNITS}
        ops = {unit: {str(f): operating_point(points, unit, f * plain[unit]) for f in FRACTIONS} for unit in UNITS}
        cheapest = {unit: cheapest_point(points, unit) for unit in UNITS}
        exit_costs, reference = Scorer(m.costs).cost_model("macs", fallback, rule)
        ga = genetic_search(search, exit_costs, reference, ga=ga_settings, fallback=fallback,
                            temperatures=temperatures, rule=rule)
        ga_policy = ExitPolicy.create(ga.thresholds, temperatures, fallback, rule=rule)
        entry = {"info": dataclasses.asdict(RULES[name]), **rule.to_dict(), "curve": points, "val_pareto": fronts,
                 "operating_points": ops, "cheapest": cheapest,
                 "ga": {"thresholds": ga.thresholds, "fitness": ga.fitness, "val": score(m, search, ga_policy),
                        "test": score(m, m.test, ga_policy)},
                 "guarantee": guaranteed_points(m, search, rule, temperatures, fallback)}
        if name == RULE_NAMES[0] or coverage_spent < coverage_seconds:
            entry["coverage"] = coverage_check(m, fit, search, rule, temperatures, fallback, coverage_trials)
            coverage_spent += entry["coverage"].get("seconds", 0.0)
        else:
            entry["coverage"] = {"skipped": f"the coverage checks before it took {coverage_spent:.0f} s"}
        entry["seconds"] = time.perf_counter() - start
        rules[name] = entry
        log(f"{name}: {len(points)} points, GA test {100 * entry['ga']['test']['accuracy']:.2f} % "
            f"({entry['seconds']:.1f} s)")
    acc = m.test.accuracy().tolist()
    return {"split": {"seed": SPLIT_SEED, "fraction": 0.5, "val": len(m.val.labels), "fit": len(fit.labels),
                      "search": len(search.labels), "test": len(m.test.labels)},
            "temperatures": temperatures, "calibrated": calibrate, "fallback": fallback, "plain": plain,
            "plain_test_accuracy": acc[-2], "ensemble_test_accuracy": acc[-1], "exit_test_accuracy": acc[:-1],
            "costs": m.costs.to_dict(), "latency": {"b1": m.latency_b1.to_dict(), "large": m.latency_large.to_dict()},
            "rules": rules}


# --- outputs ----------------------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _op(op: dict | None, plain: float) -> str:
    """One operating point's cell: test accuracy (%) and its test cost as a percentage of the plain network's."""
    return "none fits" if op is None else f"{100 * op['test_accuracy']:.2f} ({100 * op['test_cost'] / plain:.0f} %)"


def markdown(result: dict[str, Any]) -> str:
    """The results page: provenance, the operating-point tables, GA and guaranteed points, coverage, and where the
    reading is."""
    plain, rules, split = result["plain"], result["rules"], result["split"]
    large = result["latency"]["large"]["batch_size"]
    unit_names = {"macs": "MACs", "ms_b1": "ms per image at batch 1", "ms_large": f"ms per image at batch {large}"}
    lines = [
        f"# Exit rules on {result['run_dir']}", "",
        f"Made by: `{result['command']}` on {result['date']} at commit `{result['commit']}` "
        f"({result['seconds'] / 60:.1f} min on {result['threads']} CPU threads).", "",
        f"Checkpoint `{result['checkpoint']}` (selected on validation). Validation {split['val']} images, split once "
        f"(seed {split['seed']}) into a fit part ({split['fit']}: the fitted rules' parameters"
        f"{', temperatures' if result['calibrated'] else ''}) and a search part ({split['search']}: every choice "
        f"below); test {split['test']} images, reported only. Fallback: {result['fallback']}. Plain network: "
        f"{plain['macs'] / 1e6:.2f} MMACs, {plain['ms_b1']:.3f} ms per image at batch 1, {plain['ms_large']:.3f} ms "
        f"at batch {large} (latency tables of the deployment form, default DeployOptions, on {result['images']} "
        f"test images; a shared 2-core machine, so the ms are noisy); test top-1 {_pct(result['plain_test_accuracy'])} "
        f"% (deepest exit), ensemble {_pct(result['ensemble_test_accuracy'])} %.", "",
        "Each rule's candidates: MSDNet's budgeted sweep under the rule and a dense sweep of shared thresholds at "
        "quantiles of its scores, scored on the search part and on test. An operating point at a budget is the "
        "candidate with the best search-part accuracy whose search-part mean cost fits; the cells give its test "
        "top-1 (%) and, in brackets, its test cost as a percentage of the plain network's; 'none fits': even the "
        "cheapest candidate (last column: the floor of every budget) costs more on the search part.", ""]
    for unit in UNITS:
        lines += [f"## Test top-1 at a budget in {unit_names[unit]}", "",
                  "| rule | " + " | ".join(f"{int(100 * f)} %" for f in FRACTIONS) + " | cheapest candidate |",
                  "|---|" + "---|" * (len(FRACTIONS) + 1)]
        for name, r in rules.items():
            cells = [_op(r["operating_points"][unit][str(f)], plain[unit]) for f in FRACTIONS]
            cells.append(_op(r["cheapest"][unit], plain[unit]))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## SCAN's GA per rule (default search settings, MAC fitness, on the search part)", "",
              "| rule | test top-1 | MACs (% plain) | ms b1 (% plain) | ms b" + str(large) + " (% plain) | val top-1 |",
              "|---|---|---|---|---|---|"]
    for name, r in rules.items():
        t = r["ga"]["test"]
        lines.append(f"| {name} | {_pct(t['accuracy'])} | {100 * t['macs'] / plain['macs']:.0f} | "
                     f"{100 * t['ms_b1'] / plain['ms_b1']:.0f} | {100 * t['ms_large'] / plain['ms_large']:.0f} | "
                     f"{_pct(r['ga']['val']['accuracy'])} |")
    lines += ["", f"## Guaranteed points (drop at most 0.5 / 1 point against never exiting, delta {DELTA})", ""]
    lines += ["| rule | drop | certified | test top-1 | test drop | MACs (% plain) | ms b1 (% plain) | ms b"
              + str(large) + " (% plain) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rules.items():
        for p in r["guarantee"]["points"]:
            t = p["test"]
            lines.append(f"| {name} | {100 * p['drop']:.1f} | {p['certify'].get('certified', '-')} | "
                         f"{_pct(t['accuracy'])} | {100 * p['test_drop']:.2f} | "
                         f"{100 * t['macs'] / plain['macs']:.0f} | {100 * t['ms_b1'] / plain['ms_b1']:.0f} | "
                         f"{100 * t['ms_large'] / plain['ms_large']:.0f} |")
    lines += ["", "### Coverage of the guarantee (200 draws of n_cal calibration samples from the pooled outputs)",
              "", "Population check: n_cal samples drawn with replacement from the pool, certified, and the chosen "
              "policy's drop computed exactly on the whole pool (no held-out noise); a violation is pool drop > "
              "drop. The loss (fallback right, early exit wrong), which the test controls directly and which "
              "bounds the drop from above, is shown beside it. Re-split check: certified on n_cal samples, drop "
              "measured on the disjoint rest, whose own sampling noise adds violations; 'with noise allowance' "
              "counts only held-out drops above drop + 1.645 standard errors.", "",
              "| rule | pool | n_cal | drop (points) | violations: pool drop | pool loss | re-split | re-split with "
              "noise allowance | certified | mean early exit | mean pool drop (points) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rules.items():
        c = r["coverage"]
        if "skipped" in c:
            lines.append(f"| {name} | skipped: {c['skipped']} | | | | | | | | | |")
            continue
        for rate in c["rates"]:
            lines.append(f"| {name} | {c['pool']} ({c['pool_size']}) | {c['n_cal']} | {100 * rate['drop']:.1f} | "
                         f"{rate['violation_rate']:.3f} | {rate['loss_violation_rate']:.3f} | "
                         f"{rate['resplit_violation_rate']:.3f} | {rate['resplit_noise_violation_rate']:.3f} | "
                         f"{rate['certified_rate']:.2f} | {100 * rate['mean_early']:.1f} % | "
                         f"{100 * rate['mean_pool_drop']:.2f} |")
    lines += ["", f"delta = {DELTA}; Monte-Carlo error of a rate over 200 trials at delta: "
              f"{(DELTA * (1 - DELTA) / 200) ** 0.5:.3f}.", ""]
    lines += ["Which rule wins where: the reading is in `docs/results/exit-rules.md`.", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Three panels - test top-1 against mean MACs, ms per image at batch 1 and at the large batch - one curve per
    rule (its search-part Pareto points at their test coordinates), GA points as crosses, guaranteed points as
    stars, the plain network as a black dot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain, large = result["plain"], result["latency"]["large"]["batch_size"]
    scale = {"macs": 1e-6, "ms_b1": 1.0, "ms_large": 1.0}
    labels = {"macs": "mean MMACs per image", "ms_b1": "ms per image, batch 1", "ms_large": f"ms per image, batch {large}"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colours = plt.get_cmap("tab10")
    for ax, unit in zip(axes, UNITS):
        for c, (name, r) in enumerate(result["rules"].items()):
            front = [r["curve"][i] for i in r["val_pareto"][unit]]
            front.sort(key=lambda p: p["test"][unit])
            ax.plot([scale[unit] * p["test"][unit] for p in front], [100 * p["test"]["accuracy"] for p in front],
                    "-", marker=".", ms=3, lw=1.2, color=colours(c), label=name)
            ga = r["ga"]["test"]
            ax.plot(scale[unit] * ga[unit], 100 * ga["accuracy"], "x", ms=8, color=colours(c))
            for p in r["guarantee"].get("points", []):
                ax.plot(scale[unit] * p["test"][unit], 100 * p["test"]["accuracy"], "*", ms=11, color=colours(c),
                        markeredgecolor="black", markeredgewidth=0.5)
        ax.plot(scale[unit] * plain[unit], 100 * result["plain_test_accuracy"], "o", color="black", label="plain")
        ax.set_xlabel(labels[unit])
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        shown = [100 * p["test"]["accuracy"] for r in result["rules"].values()
                 for p in (r["curve"][i] for i in r["val_pareto"][unit])]
        top = 100 * max(result["ensemble_test_accuracy"], result["plain_test_accuracy"], *[s / 100 for s in shown])
        ax.set_ylim(max(min(shown) - 0.5, top - 15), top + 0.5)
    axes[0].legend(fontsize=8, loc="lower right")
    guaranteed = "stars: guaranteed (drop 0.5 / 1 pt)"
    fig.suptitle(f"Exit rules on {result['run_dir']} (curves: search-part Pareto points on test; x: GA; {guaranteed})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, score every rule on the run and write ``<out>.md``, ``<out>.json`` and ``<out>.png``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/exit_rules"))
    parser.add_argument("--images", type=int, default=512, help="first test images the latency tables time on")
    parser.add_argument("--budget-steps", type=int, default=40, help="points of the budgeted sweep per rule")
    parser.add_argument("--shared-steps", type=int, default=40, help="quantile levels of the shared sweep per rule")
    parser.add_argument("--coverage-trials", type=int, default=200)
    parser.add_argument("--coverage-seconds", type=float, default=300.0,
                        help="after max_softmax, run the other rules' coverage checks while those so far took less")
    parser.add_argument("--data-dir", default=None, help="where the data files go (default: the saved config's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 on a busy shared machine, where a second "
                             "OpenMP thread waiting at every barrier inflated batch-1 ms over 300x")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not args.run_dir.is_dir():
        print(f"run_dir {str(args.run_dir)!r} is not a directory", file=sys.stderr)
        return 2
    start = time.perf_counter()
    m = measure(args.run_dir, args.images, args.data_dir)
    result = evaluate_rules(m, args.budget_steps, args.shared_steps, args.coverage_trials, args.coverage_seconds)
    run = repo_relative(args.run_dir)
    options = [f"--out {repo_relative(args.out)}", f"--images {args.images}"]
    options += [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                if k in ("budget_steps", "shared_steps", "coverage_trials", "coverage_seconds", "threads")
                and v != parser.get_default(k)]
    header = {"command": " ".join(["python experiments/exit_rules.py", run, *options]), "run_dir": run,
              "checkpoint": repo_relative(selected_checkpoint(args.run_dir)),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": code_commit(), "images": args.images, "threads": torch.get_num_threads()}
    result = {**header, **result, "seconds": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    plot(result, args.out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
