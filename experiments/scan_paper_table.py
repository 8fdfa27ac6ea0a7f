"""SCAN Tables 1-2, Fig. 2 and Fig. 5 from the overlay runs, with the paper's numbers beside ours.

    python -m scan_lightning.train -m experiment=scan_cifar100_resnet18,scan_cifar100_resnet18_baseline,... \
        hydra.sweep.dir=logs/scan_table1
    python experiments/scan_paper_table.py logs/scan_table1 [more sweep or run dirs] --out experiments/results/scan_paper

Reads every finished run below the given directories (``summary.json`` with ``status: finished`` and
``config_resolved.yaml``): its ``task_name`` names the experiment (``scan_cifar100_<net>[_baseline]``,
``scan_imagenet_<net>[_baseline]``, ``scan_fig2_resnet50_<method>``); test top-1 per exit and ensemble from the
summary; the GA point (Fig. 5: accuracy, MAC speed-up against the plain network) from ``checkpoints/thresholds.json``.
Writes ``<out>.md`` and ``<out>.json``.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from omegaconf import OmegaConf

from scan_lightning.models.outputs import exit_names

# SCAN (NeurIPS 2019) Table 1 (CIFAR-100) and Table 2 (ImageNet): baseline, exits 1/4 .. 4/4, ensemble (None: not given)
PAPER = {
    ("cifar100", "vgg16_bn"): (72.46, [71.29, 74.92, 75.18, 75.29], 76.80),
    ("cifar100", "vgg19_bn"): (72.25, [71.52, 74.02, 74.15, 74.43], 75.43),
    ("cifar100", "resnet18"): (77.09, [71.84, 77.74, 78.62, 79.13], 80.46),
    ("cifar100", "resnet50"): (77.68, [73.69, 78.34, 80.39, 80.45], 81.78),
    ("cifar100", "resnet101"): (77.98, [72.26, 79.26, 80.95, 81.12], 82.06),
    ("cifar100", "resnet152"): (79.21, [73.14, 80.40, 81.73, 81.62], 82.94),
    ("cifar100", "wrn20_8"): (74.61, [74.52, 78.17, 79.25], 80.04),
    ("cifar100", "wrn44_8"): (76.22, [76.02, 78.74, 79.67], 80.35),
    ("imagenet", "resnet18"): (68.02, [48.25, 58.00, 65.32, 69.32], None),
    ("imagenet", "resnet50"): (74.47, [53.86, 66.54, 73.57, 75.88], None),
    ("imagenet", "resnet101"): (75.24, [52.32, 65.33, 74.51, 76.32], None),
}


def runs(dirs: list[Path]) -> list[dict]:
    """Every finished run below ``dirs``: task name, per-exit and ensemble test top-1 (%), GA point."""
    out = []
    for root in dirs:
        for summary_path in sorted(root.rglob("summary.json")):
            run = summary_path.parent
            summary = json.loads(summary_path.read_text())
            if summary.get("status", "finished") != "finished" or not (run / "config_resolved.yaml").is_file():
                continue
            m = summary["metrics"]
            k = max((int(g.group(1)) for key in m if (g := re.fullmatch(r"test/acc/exit(\d+)", key))), default=0)
            row = {"run": str(run), "task": str(OmegaConf.load(run / "config_resolved.yaml").task_name),
                   "exits": [100 * m[f"test/acc/{name}"] for name in exit_names(k, None)],
                   "ensemble": 100 * m["test/acc/ensemble"] if "test/acc/ensemble" in m else None}
            saved = run / "checkpoints" / "thresholds.json"
            if saved.is_file():
                test = json.loads(saved.read_text())["test"]
                row["ga"] = {"accuracy": 100 * test["accuracy"], "mac_speedup": test["speedup_plain"]}
            out.append(row)
    return out


def tables(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows of Tables 1/2 (one per network: our baseline, SCAN exits, ensemble, GA point; the paper's beside) and
    Fig. 2 (one per method on ResNet50)."""
    by_task = {r["task"]: r for r in rows}
    result: dict[str, list[dict]] = {"cifar100": [], "imagenet": [], "fig2": []}
    for (data, net), (p_base, p_exits, p_ens) in PAPER.items():
        scan, base = by_task.get(f"scan_{data}_{net}"), by_task.get(f"scan_{data}_{net}_baseline")
        if scan is None and base is None:
            continue
        result[data].append({
            "network": net, "baseline": base["exits"][-1] if base else None,
            "exits": scan["exits"] if scan else None, "ensemble": scan["ensemble"] if scan else None,
            "ga": scan.get("ga") if scan else None,
            "paper": {"baseline": p_base, "exits": p_exits, "ensemble": p_ens}})
    for method, task in (("DSN", "scan_fig2_resnet50_dsn"), ("self-distillation", "scan_fig2_resnet50_self_distillation"),
                         ("SCAN", "scan_cifar100_resnet50")):
        if task in by_task:
            result["fig2"].append({"method": method, "exits": by_task[task]["exits"],
                                   "ensemble": by_task[task]["ensemble"]})
    return result


def _cells(values: list[float] | None, paper: list[float]) -> str:
    if values is None:
        return " / ".join(f"({p:.2f})" for p in paper)
    return " / ".join(f"{v:.2f} ({p:.2f})" for v, p in zip(values, paper))


def markdown(t: dict[str, list[dict]]) -> str:
    lines = ["# SCAN: our runs (paper in brackets)", "",
             "Test top-1 (%); checkpoints selected on the held-out validation split. Baseline = the plain network "
             "trained alone (`_baseline` overlays). GA point (Fig. 5): thresholds searched on the validation split, "
             "scored on the test set, MAC speed-up against the plain network.", ""]
    for data, title in (("cifar100", "Table 1, CIFAR-100"), ("imagenet", "Table 2, ImageNet")):
        if not t[data]:
            continue
        lines += [f"## {title}", "", "| network | baseline | exits 1/4 .. 4/4 | ensemble | GA top-1 / MACs |",
                  "|---|---|---|---|---|"]
        for r in t[data]:
            p = r["paper"]
            base = f"{r['baseline']:.2f} ({p['baseline']:.2f})" if r["baseline"] is not None else f"({p['baseline']:.2f})"
            ens = "-" if r["ensemble"] is None else f"{r['ensemble']:.2f}" + (f" ({p['ensemble']:.2f})" if p["ensemble"] else "")
            ga = f"{r['ga']['accuracy']:.2f} / {r['ga']['mac_speedup']:.2f}x fewer" if r["ga"] else "-"
            lines.append(f"| {r['network']} | {base} | {_cells(r['exits'], p['exits'])} | {ens} | {ga} |")
        lines.append("")
    if t["fig2"]:
        lines += ["## Fig. 2, ResNet50 on CIFAR-100", "", "| method | exits | ensemble |", "|---|---|---|"]
        lines += [f"| {r['method']} | {' / '.join(f'{v:.2f}' for v in r['exits'])} | {r['ensemble']:.2f} |"
                  for r in t["fig2"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/scan_paper"))
    args = parser.parse_args()
    t = tables(runs(args.dirs))
    if not any(t.values()):
        raise SystemExit(f"no finished scan_* runs below {', '.join(map(str, args.dirs))}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(t, indent=2))
    args.out.with_suffix(".md").write_text(markdown(t))
    print(markdown(t))


if __name__ == "__main__":
    main()
