"""IMTA Table 2 from a GE x ISC x OFA multirun: test top-1 per exit after phase II, one row per combination.

    python -m scan_lightning.train -m experiment=imta_ablation_fashion
    python experiments/imta_ablation_table.py logs/imta_ablation_fashion/multiruns/<date> \
        --out experiments/results/imta_ablation_fashion

Reads each job's ``config_resolved.yaml`` (the imta switches) and ``phase2/summary.json`` (test metrics,
checkpoint selected on the validation split); writes ``<out>.md`` and ``<out>.json``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from scan_lightning.models.outputs import exit_names


def exit_count(metrics: dict[str, float]) -> int:
    return max(int(m.group(1)) for k in metrics if (m := re.fullmatch(r"test/acc/exit(\d+)", k)))


def collect(sweep_dir: Path) -> list[dict]:
    """One row per finished job: switches, per-exit and ensemble test accuracy (%) of both phases."""
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if (p / "phase2" / "summary.json").is_file()):
        imta = OmegaConf.load(job / "config_resolved.yaml").imta
        row = {"job": job.name, "ge": bool(imta["ge"]), "isc": imta["isc"] or "off", "ofa": bool(imta["ofa"])}
        for phase in ("phase1", "phase2"):
            metrics = json.loads((job / phase / "summary.json").read_text())["metrics"]
            k = exit_count(metrics)
            row[phase] = [round(100 * metrics[f"test/acc/{name}"], 2) for name in exit_names(k, None)]
            row[f"{phase}_ensemble"] = round(100 * metrics["test/acc/ensemble"], 2)
        rows.append(row)
    # IMTA Table 2 order: baseline, then one technique, two, all three
    return sorted(rows, key=lambda r: (r["ge"] + (r["isc"] != "off") + r["ofa"], not r["ge"], r["isc"] == "off"))


def markdown(rows: list[dict], command: str, note: str = "") -> str:
    k = len(rows[0]["phase2"])
    mark = {True: "x", False: "", "off": ""}
    lines = [
        "# IMTA ablation (Table 2 layout) on Fashion-MNIST, CPU scale",
        "",
        f"Made by: `{command}`" + (f" ({note})" if note else ""),
        "",
        "Test top-1 (%) per exit after phase II (checkpoint selected on the 5,000-image validation split);",
        "`phase I` = the same run's network before phase II. Single seed: differences below ~0.5 points are noise.",
        "",
        "| GE | ISC | OFA | " + " | ".join(f"E-{i}" for i in range(1, k + 1)) + f" | ensemble | phase I E-1..E-{k} |",
        "|" + "---|" * (k + 5),
    ]
    for r in rows:
        isc = r["isc"] if r["isc"] != "off" else ""
        cells = [mark[r["ge"]], isc, mark[r["ofa"]], *[f"{a:.2f}" for a in r["phase2"]], f"{r['phase2_ensemble']:.2f}",
                 " / ".join(f"{a:.1f}" for a in r["phase1"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/imta_ablation_fashion"))
    parser.add_argument("--command", default="python -m scan_lightning.train -m experiment=imta_ablation_fashion")
    parser.add_argument("--note", default="", help="provenance to print after the command (commit, machine, time)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"sweep_dir {str(args.sweep_dir)!r} is not a directory", file=sys.stderr)
        return 2
    rows = collect(args.sweep_dir)
    if not rows:
        print(f"no finished jobs (phase2/summary.json) under {args.sweep_dir}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, args.command, args.note)
    args.out.with_suffix(".md").write_text(text)
    summary = {"command": args.command, "note": args.note, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
