"""The methods leaderboard: every training method x seeds at one budget, mean +- sd, each against DSN with a paired test.

    python -m scan_lightning.train -m experiment=leaderboard_fashion       # 8 methods x 3 seeds
    python experiments/bench/train_methods.py                               # training time per epoch (optional)
    python experiments/leaderboard.py logs/leaderboard_fashion

Reads each finished job's ``.hydra/*/overrides.yaml`` (method, seed), ``summary.json`` (test top-1 per exit of the
checkpoint selected on validation) and ``checkpoints/thresholds.json`` (the post-fit result: the GA point and MSDNet's
budgeted sweep, every point chosen on the validation split and scored on test, with its MACs and the latency-table
ms of the deployment form). An operating point at a budget is the budgeted-sweep or GA point with the best
validation accuracy whose validation mean cost fits the budget; its test accuracy is reported. Budgets are fractions
of the plain network's MACs (every section + the deep head) and of its measured ms per image. Differences against DSN
are paired by seed (same data order, same split) and tested with a two-sided paired t-test.

Writes ``<out>.md``, ``<out>.json`` and ``<out>.png`` (test accuracy against MACs, mean over seeds, one curve per
method).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
METHOD_ORDER = ["plain", "dsn", "scan", "sdn", "pbee", "ztw", "l2w", "boost"]
LABELS = {"plain": "plain (deep exit only)", "dsn": "DSN", "scan": "SCAN", "sdn": "SDN", "pbee": "PABEE training",
          "ztw": "ZTW (cascade)", "l2w": "L2W", "boost": "BoostNet"}
MAC_BUDGETS = (0.25, 0.5, 0.75, 1.0)
MS_BUDGETS = (0.5, 0.75, 1.0)
TIMING = ROOT / "experiments" / "bench" / "results" / "train_methods.json"


def repo_relative(path: str | Path) -> str:
    """A path as the results record it: relative to the repository when it lies inside it (no machine's path)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def overrides(job: Path) -> dict[str, str]:
    """The job's command-line overrides (the newest of its ``.hydra/<time>/overrides.yaml``)."""
    files = sorted(job.glob(".hydra/*/overrides.yaml"))
    if not files:
        return {}
    items = [str(item) for item in OmegaConf.load(files[-1]) or []]   # type: ignore[union-attr]
    return dict(item.split("=", 1) for item in items if "=" in item)


def candidates(t: dict[str, Any]) -> list[dict[str, float]]:
    """Every operating point of a post-fit result with its validation and test accuracy, MACs and ms: the budgeted
    sweep, "never exit" and the GA point."""
    points = [{"val_acc": p["val_accuracy"], "val_macs": p["val_mean_macs"], "val_ms": p.get("val_mean_ms"),
               "test_acc": p["accuracy"], "test_macs": p["mean_macs"], "test_ms": p.get("mean_ms")}
              for p in t.get("budgeted", [])]
    val, test = t["val"], t["test"]
    # never exit: the deepest exit alone, at the plain network's cost (every exit's when the exits are chained)
    chained, latency = t["costs"]["chained"], t.get("latency") or {}
    never_macs = t["costs"]["exits"][-1]["cumulative_macs"] if chained else t["costs"]["plain_macs"]
    never_ms = (latency.get("cumulative_ms") or [None])[-1] if chained else latency.get("plain_ms")
    points.append({"val_acc": val["deepest_accuracy"], "val_macs": never_macs, "val_ms": never_ms,
                   "test_acc": test["deepest_accuracy"], "test_macs": never_macs, "test_ms": never_ms})
    points.append({"val_acc": val["accuracy"], "val_macs": val["mean_macs"], "val_ms": val.get("mean_ms"),
                   "test_acc": test["accuracy"], "test_macs": test["mean_macs"], "test_ms": test.get("mean_ms")})
    return points


def at_budget(points: list[dict[str, float]], unit: str, budget: float) -> float | None:
    """Test top-1 (%) of the point with the best validation accuracy whose validation cost fits ``budget``."""
    fitting = [p for p in points if p[f"val_{unit}"] is not None and p[f"val_{unit}"] <= budget * (1 + 1e-9)]
    if not fitting:
        return None
    return 100 * max(fitting, key=lambda p: (p["val_acc"], -p[f"val_{unit}"]))["test_acc"]


def cheapest(points: list[dict[str, float]], plain_macs: float) -> dict[str, float]:
    """The candidate with the lowest validation MACs (the floor under every budget): its test top-1 (%) and MACs as a
    fraction of the plain network's."""
    p = min(points, key=lambda p: (p["val_macs"], -p["val_acc"]))
    return {"accuracy": 100 * p["test_acc"], "mac_fraction": p["test_macs"] / plain_macs}


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per finished job: method, seed, per-exit test top-1, budgets, GA point, wall clock."""
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if (p / "summary.json").is_file()), key=lambda p: p.name):
        summary = json.loads((job / "summary.json").read_text())
        saved = job / "checkpoints" / "thresholds.json"
        o = overrides(job)
        if summary.get("status", "finished") != "finished" or not saved.is_file() or "method" not in o:
            continue
        t = json.loads(saved.read_text())
        m = summary["metrics"]
        plain_macs = t["costs"]["plain_macs"]
        plain_ms = (t.get("latency") or {}).get("plain_ms")
        points = candidates(t)
        walls = {w["batch_size"]: w["wall_speedup"] for w in t.get("wall_clock", [])}
        rows.append({
            "job": job.name, "method": o["method"], "seed": int(o.get("seed", 0)),
            "exits": [100 * m[k] for k in sorted(m) if k.startswith("test/acc/exit")],
            "deepest": 100 * t["test"]["deepest_accuracy"], "plain_macs": plain_macs, "plain_ms": plain_ms,
            "macs": {str(b): at_budget(points, "macs", b * plain_macs) for b in MAC_BUDGETS},
            "cheapest": cheapest(points, plain_macs),
            "curve": [[p["mean_macs"] / plain_macs, 100 * p["accuracy"]] for p in t.get("budgeted", [])],
            "ms": {str(b): at_budget(points, "ms", b * plain_ms) if plain_ms else None for b in MS_BUDGETS},
            "ga": {"accuracy": 100 * t["test"]["accuracy"], "mac_fraction": t["test"]["mean_macs"] / plain_macs,
                   "wall_speedup_1": walls.get(1), "wall_speedup_256": walls.get(256)},
        })
    return rows


def t_sf_two_sided(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom (Simpson's rule on the density)."""
    if df < 1 or math.isnan(t):
        return float("nan")
    t = abs(t)
    if math.isinf(t):
        return 0.0
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def density(x: float) -> float:
        return c * (1 + x * x / df) ** (-(df + 1) / 2)

    n = 2000
    h = t / n
    area = density(0) + density(t) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
    return max(0.0, 1 - 2 * area * h / 3)


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean and sd of the differences a - b (paired by seed) and the two-sided paired t-test's p-value."""
    d = [x - y for x, y in zip(a, b)]
    mean = statistics.mean(d)
    sd = statistics.stdev(d) if len(d) > 1 else float("nan")
    if len(d) < 2:
        p = float("nan")
    elif sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = t_sf_two_sided(mean / (sd / math.sqrt(len(d))), len(d) - 1)
    return {"mean": mean, "sd": sd, "p": p, "n": len(d)}


def mean_sd(values: Sequence[float | None]) -> tuple[float, float, int] | None:
    """Mean, sd and count of the values that exist; ``None`` when none does."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, len(xs)


def metric(row: dict[str, Any], key: str) -> float | None:
    """A row's value for ``key``: ``macs:0.5``, ``ms:0.75``, ``ga``, ``deepest``."""
    kind, _, budget = key.partition(":")
    if kind == "ga":
        return row["ga"]["accuracy"]
    if kind == "deepest":
        return row["deepest"]
    return row[kind][budget]


KEYS = [*(f"macs:{b}" for b in MAC_BUDGETS), *(f"ms:{b}" for b in MS_BUDGETS), "ga", "deepest"]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: mean/sd over seeds of every key, the GA point's cost and speed-ups, and the paired test against
    DSN on the seeds both have."""
    methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in rows)]
    methods += sorted({r["method"] for r in rows} - set(methods))
    by = {m: {r["seed"]: r for r in rows if r["method"] == m} for m in methods}
    out: dict[str, Any] = {}
    for m in methods:
        runs = list(by[m].values())
        s: dict[str, Any] = {"seeds": sorted(by[m]), "values": {k: mean_sd([metric(r, k) for r in runs]) for k in KEYS},
                             "ga_mac_fraction": mean_sd([r["ga"]["mac_fraction"] for r in runs]),
                             "cheapest": mean_sd([r["cheapest"]["accuracy"] for r in runs]),
                             "cheapest_mac_fraction": mean_sd([r["cheapest"]["mac_fraction"] for r in runs]),
                             "ga_wall_speedup_1": mean_sd([r["ga"]["wall_speedup_1"] for r in runs]),
                             "ga_wall_speedup_256": mean_sd([r["ga"]["wall_speedup_256"] for r in runs])}
        if m != "dsn" and "dsn" in by:
            s["vs_dsn"] = {}
            for k in KEYS:
                seeds = [sd for sd in by[m] if sd in by["dsn"] and metric(by[m][sd], k) is not None
                         and metric(by["dsn"][sd], k) is not None]
                if seeds:
                    s["vs_dsn"][k] = paired([metric(by[m][sd], k) for sd in seeds],    # type: ignore[misc]
                                            [metric(by["dsn"][sd], k) for sd in seeds])  # type: ignore[misc]
        out[m] = s
    return out


def _cell(v: tuple[float, float, int] | None, seeds: int, digits: int = 2) -> str:
    if v is None:
        return "none fits"
    some = f" ({v[2]} of {seeds} seeds fit)" if v[2] < seeds else ""
    return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}{some}"


def _diff(d: dict[str, float] | None) -> str:
    if d is None:
        return "-"
    if d["n"] < 2:
        return f"{d['mean']:+.2f} (1 seed, no test)"
    star = " **" if d["p"] < 0.05 else ""
    return f"{d['mean']:+.2f} (p {d['p']:.2f}){star}"


def code_commit() -> str:
    """The commit the results were made at (``+dirty`` when the tree had uncommitted changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(s: dict[str, Any], rows: list[dict[str, Any]], command: str, timing: dict[str, Any] | None) -> str:
    """The leaderboard as Markdown: accuracy at MAC and time budgets, the GA point, differences against DSN."""
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "# Methods leaderboard on Fashion-MNIST", "",
        f"Made by: `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC at commit `{code_commit()}`, "
        f"from {len(rows)} finished runs (seeds {seeds}).", "",
        "Every method trains the same 1/4-width quickstart ResNet18 (7.6 M MACs to the deep exit) for the same 6 "
        "epochs of 100 batches, with the same data order per seed and the same held-out validation split; the exit "
        "rule is max softmax for all, thresholds searched on validation (SCAN's GA, MSDNet's budgeted sweep), "
        "accuracy reported on the 10,000 test images. Cells: test top-1 (%), mean ± sd over seeds; a budget's "
        "operating point is the candidate with the best validation accuracy whose validation cost fits.", "",
        "## Test top-1 at a budget of the plain network's MACs", "",
        "'none fits': even the cheapest candidate (last column: its test top-1 and MACs, the floor of every budget) "
        "costs more on validation.", "",
        "| method | seeds | 25 % | 50 % | 75 % | 100 % | deep exit alone | cheapest candidate |",
        "|---|---|---|---|---|---|---|---|"]
    for m, v in s.items():
        vals, floor, floor_macs, n = v["values"], v["cheapest"], v["cheapest_mac_fraction"], len(v["seeds"])
        lines.append(f"| {LABELS.get(m, m)} | {len(v['seeds'])} | " + " | ".join(
            _cell(vals[f"macs:{b}"], n) for b in MAC_BUDGETS) + f" | {_cell(vals['deepest'], n)} | "
            f"{_cell(floor, n)} ({100 * floor_macs[0]:.0f} %) |")
    lines += ["", "## Test top-1 at a budget of the plain network's measured time per image", "",
              "Time: the latency table of the deployment form (per-section and per-exit ms per image at batch 64, "
              "measured on this machine after training), as the latency search uses it.", "",
              "| method | 50 % | 75 % | 100 % |", "|---|---|---|---|"]
    for m, v in s.items():
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(_cell(v["values"][f"ms:{b}"], len(v["seeds"])) for b in MS_BUDGETS) + " |")
    lines += ["", "## SCAN's GA point (MAC fitness, beta 200) and its real early exit", "",
              "| method | test top-1 | MACs (% plain) | wall speed-up batch 1 | wall speed-up batch 256 |",
              "|---|---|---|---|---|"]
    for m, v in s.items():
        frac = v["ga_mac_fraction"]
        lines.append(f"| {LABELS.get(m, m)} | {_cell(v['values']['ga'], len(v['seeds']))} | "
                     f"{'-' if frac is None else f'{100 * frac[0]:.0f} ± {100 * frac[1]:.0f}'} | "
                     f"{_cell(v['ga_wall_speedup_1'], len(v['seeds']))}x | {_cell(v['ga_wall_speedup_256'], len(v['seeds']))}x |")
    lines += ["", "## Against DSN, paired by seed", "",
              "Mean difference in points (method - DSN) over the seeds both have, two-sided paired t-test p-value; "
              "** marks p < 0.05 (with 3 seeds a t-test has 2 degrees of freedom: only large, consistent "
              "differences pass).", "",
              "| method | 25 % MACs | 50 % MACs | 75 % MACs | 100 % MACs | 50 % ms | GA point | deep exit |",
              "|---|---|---|---|---|---|---|---|"]
    for m, v in s.items():
        if "vs_dsn" not in v:
            continue
        d = v["vs_dsn"]
        keys = [*(f"macs:{b}" for b in MAC_BUDGETS), "ms:0.5", "ga", "deepest"]
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(_diff(d.get(k)) for k in keys) + " |")
    if timing:
        lines += ["", "## Training time per epoch against the plain network", "",
                  f"From `{timing['command']}` ({timing['note']}).", "",
                  "| method | ms per step (median) | s per epoch of 100 steps | x plain |", "|---|---|---|---|"]
        plain = timing["methods"].get("plain", {}).get("ms_per_step")
        for m in s:
            t = timing["methods"].get(m)
            if t:
                ratio = f"{t['ms_per_step'] / plain:.2f}" if plain else "-"
                lines.append(f"| {LABELS.get(m, m)} | {t['ms_per_step']:.1f} | {t['ms_per_step'] / 10:.1f} | {ratio} |")
    lines += ["", "## Runs", "", "| job | method | seed | exits (test top-1) | GA top-1 |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else 99,
                                        r["seed"])):
        lines.append(f"| {r['job']} | {r['method']} | {r['seed']} | "
                     f"{' / '.join(f'{e:.2f}' for e in r['exits'])} | {r['ga']['accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], s: dict[str, Any], path: Path) -> None:
    """Test top-1 against MACs: each method's budgeted sweep (thresholds from validation proportions p, averaged
    over seeds point by point) and its GA point with error bars (sd over seeds). The plain network is left out: its
    untrained shallow exits would stretch the axis to 10 %."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for m, v in s.items():
        curves = [r["curve"] for r in rows if r["method"] == m and r["curve"]]
        if m == "plain" or not curves:
            continue
        n = min(len(c) for c in curves)
        xs = [100 * statistics.mean(c[i][0] for c in curves) for i in range(n)]
        ys = [statistics.mean(c[i][1] for c in curves) for i in range(n)]
        (line,) = ax.plot(xs, ys, label=LABELS.get(m, m), lw=1.5)
        ga, frac = v["values"]["ga"], v["ga_mac_fraction"]
        if ga is not None and frac is not None:
            ax.errorbar([100 * frac[0]], [ga[0]], xerr=[100 * frac[1]], yerr=[ga[1]], marker="x", ms=8,
                        color=line.get_color(), capsize=3)
    ax.set_xlabel("test MACs per image (% of the plain network's)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Methods on Fashion-MNIST (3 seeds): budgeted sweep, GA point x", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Collect the sweep, write the leaderboard files, print the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", default="experiments/results/leaderboard")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"{args.sweep_dir} is not a folder; give the leaderboard's sweep dir (hydra.sweep.dir)", file=sys.stderr)
        return 2
    rows = collect(args.sweep_dir)
    if not rows:
        print(f"{args.sweep_dir} holds no finished leaderboard job (summary.json + checkpoints/thresholds.json)",
              file=sys.stderr)
        return 2
    s = summarise(rows)
    timing = json.loads(TIMING.read_text()) if TIMING.is_file() else None
    command = f"python experiments/leaderboard.py {repo_relative(args.sweep_dir)}"
    text = markdown(s, rows, command, timing)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "sweep_dir": repo_relative(args.sweep_dir),
                                                    "runs": rows, "summary": s}, indent=2))
    plot(rows, s, out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
