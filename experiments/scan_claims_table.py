"""SCAN's claims at CPU scale on Fashion-MNIST: table, plots and the attention-map figure from a multirun.

    python -m scan_lightning.train -m experiment=fashion_claims_baseline,fashion_claims_dsn,\
        fashion_claims_self_distillation,fashion_claims_scan seed=0,1,2 hydra.sweep.dir=logs/fashion_claims
    python experiments/scan_claims_table.py logs/fashion_claims --out experiments/results/fashion_claims

Reads each finished job's ``config_resolved.yaml`` (variant, seed), ``summary.json`` (test top-1 per exit, selected
on the validation split) and ``checkpoints/thresholds.json`` (the GA point searched on validation, scored on test:
accuracy, MAC and wall-clock speed-up against the plain network). Writes ``<out>.md``, ``<out>.json``,
``<out>.png`` (per-exit accuracy by variant) and ``<out>_attention.png`` (SCAN's attention masks, paper Fig. 7).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from scan_lightning.models.outputs import exit_names

VARIANTS = {"fashion_claims_baseline": "(a) baseline", "fashion_claims_dsn": "(b) DSN",
            "fashion_claims_self_distillation": "(c) self-distillation", "fashion_claims_scan": "(d) SCAN"}
EXITS = 4


ROOT = Path(__file__).resolve().parents[1]


def repo_relative(path: str) -> str:
    """A path as the results record it: relative to the repository when it lies inside it (no machine's path)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else path


def collect(sweep_dir: Path) -> list[dict]:
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if (p / "summary.json").is_file()):
        summary = json.loads((job / "summary.json").read_text())
        if summary.get("status", "finished") != "finished":
            continue
        cfg = OmegaConf.load(job / "config_resolved.yaml")
        m = summary["metrics"]
        row = {"job": job.name, "variant": cfg.task_name, "seed": int(cfg.seed), "checkpoint": repo_relative(summary["checkpoint"]),
               "exits": [100 * m[f"test/acc/{name}"] for name in exit_names(EXITS, None)],
               "ensemble": 100 * m["test/acc/ensemble"]}
        saved = job / "checkpoints" / "thresholds.json"
        if saved.is_file():
            t = json.loads(saved.read_text())
            test = t["test"]
            row["ga"] = {"accuracy": 100 * test["accuracy"], "mac_speedup": test["speedup_plain"],
                         "wall_speedup_256": next((w["wall_speedup"] for w in t.get("wall_clock", [])
                                                   if w["batch_size"] == 256), None),
                         "thresholds": t["thresholds"]}
        rows.append(row)
    return rows


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for variant in VARIANTS:
        runs = [r for r in rows if r["variant"] == variant]
        if not runs:
            continue
        s = {"seeds": sorted(r["seed"] for r in runs),
             "exits": [mean_sd([r["exits"][i] for r in runs]) for i in range(EXITS)],
             "ensemble": mean_sd([r["ensemble"] for r in runs])}
        ga = [r["ga"] for r in runs if "ga" in r]
        if ga:
            s["ga_accuracy"] = mean_sd([g["accuracy"] for g in ga])
            s["ga_mac_speedup"] = mean_sd([g["mac_speedup"] for g in ga])
            walls = [g["wall_speedup_256"] for g in ga if g["wall_speedup_256"] is not None]
            if walls:
                s["ga_wall_speedup_256"] = mean_sd(walls)
        out[variant] = s
    return out


def claims(s: dict[str, dict]) -> list[tuple[str, bool, str]]:
    base, scan, sd = (s.get(k) for k in ("fashion_claims_baseline", "fashion_claims_scan",
                                         "fashion_claims_self_distillation"))
    if not (base and scan):
        return []
    b = base["exits"][-1][0]
    out = [("deep exits >= baseline", scan["exits"][-1][0] >= b and scan["exits"][-2][0] >= b,
            f"SCAN exit 3 / 4 {scan['exits'][-2][0]:.2f} / {scan['exits'][-1][0]:.2f} vs baseline {b:.2f}"),
           ("ensemble > baseline", scan["ensemble"][0] > b, f"SCAN ensemble {scan['ensemble'][0]:.2f} vs {b:.2f}")]
    if sd:
        out.append(("attention helps shallow exits", scan["exits"][0][0] > sd["exits"][0][0],
                    f"exit 1 with / without attention {scan['exits'][0][0]:.2f} / {sd['exits'][0][0]:.2f}"))
    if "ga_accuracy" in scan:
        ok = scan["ga_accuracy"][0] >= b and scan["ga_mac_speedup"][0] >= 2.0
        out.append((">= 2x MAC acceleration at no accuracy drop", ok,
                    f"GA point {scan['ga_accuracy'][0]:.2f} % at {scan['ga_mac_speedup'][0]:.2f}x fewer MACs vs "
                    f"baseline {b:.2f} %"))
    return out


def markdown(s: dict[str, dict], rows: list[dict], command: str) -> str:
    pm = lambda v: f"{v[0]:.2f} ± {v[1]:.2f}"   # noqa: E731
    lines = ["# SCAN's claims at CPU scale on Fashion-MNIST", "", f"Made by: `{command}`", "",
             "Test top-1 (%) per exit, mean ± sd over seeds (checkpoint selected on the validation split); GA point: "
             "thresholds searched on the validation split (MAC cost, ensemble fallback), scored on the test set; "
             "speed-ups against the plain network (wall clock: real early exit at batch 256, deployment form).", "",
             "| variant | seeds | exit 1 | exit 2 | exit 3 | exit 4 | ensemble | GA top-1 | GA MACs | GA wall (256) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, v in s.items():
        ga = [pm(v["ga_accuracy"]) if "ga_accuracy" in v else "-",
              f"{v['ga_mac_speedup'][0]:.2f}x fewer" if "ga_mac_speedup" in v else "-",
              f"{v['ga_wall_speedup_256'][0]:.2f}x" if "ga_wall_speedup_256" in v else "-"]
        lines.append(f"| {VARIANTS[variant]} | {len(v['seeds'])} | " + " | ".join(pm(e) for e in v["exits"])
                     + f" | {pm(v['ensemble'])} | " + " | ".join(ga) + " |")
    lines += ["", "## Claims", ""]
    lines += [f"- {'holds' if ok else 'does NOT hold'}: {name} ({detail})" for name, ok, detail in claims(s)]
    return "\n".join(lines) + "\n"


def plot_exits(s: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, v in s.items():
        ys = [m for m, _ in v["exits"]] + [v["ensemble"][0]]
        es = [sd for _, sd in v["exits"]] + [v["ensemble"][1]]
        ax.errorbar(range(1, EXITS + 2), ys, yerr=es, marker="o", capsize=3, label=VARIANTS[variant])
    ax.set_xticks(range(1, EXITS + 2), [f"exit {i}" for i in range(1, EXITS + 1)] + ["ensemble"])
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Fashion-MNIST, SCAN ResNet18 at 1/4 width (cf. SCAN Fig. 2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attention(checkpoint: str, path: Path, n: int = 6) -> None:
    """SCAN Fig. 7: the input and each shallow exit's attention mask for a few test images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from scan_lightning.training.module import load_module
    from scan_lightning.utils.config import build

    module = load_module(checkpoint)
    net = module.net.eval()
    data = build(OmegaConf.create(module.hparams.run_config["data"]))
    data.prepare_data()
    x = torch.stack([data.eval_dataloader("test").dataset[i][0] for i in range(n)])
    maps, h = [], x
    with torch.no_grad():
        for i, section in enumerate(net.sections[:-1]):
            h = section(h)
            maps.append(net.attentions[i].attention_map(h).mean(1))   # mean over channels
    fig, axes = plt.subplots(n, 1 + len(maps), figsize=(1.6 * (1 + len(maps)), 1.6 * n))
    for r in range(n):
        axes[r, 0].imshow(x[r, 0], cmap="gray")
        for c, m in enumerate(maps, 1):
            axes[r, c].imshow(m[r], cmap="jet")
        for a in axes[r]:
            a.axis("off")
    for c, title in enumerate(["input"] + [f"exit {i + 1} mask" for i in range(len(maps))]):
        axes[0, c].set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/fashion_claims"))
    parser.add_argument("--command", default="python -m scan_lightning.train -m experiment=fashion_claims_baseline,"
                        "fashion_claims_dsn,fashion_claims_self_distillation,fashion_claims_scan seed=0,1,2")
    args = parser.parse_args()
    rows = collect(args.sweep_dir)
    if not rows:
        raise SystemExit(f"no finished runs under {args.sweep_dir}")
    s = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"runs": rows, "summary": s}, indent=2))
    args.out.with_suffix(".md").write_text(markdown(s, rows, args.command))
    plot_exits(s, args.out.with_suffix(".png"))
    scan = sorted((r for r in rows if r["variant"] == "fashion_claims_scan"), key=lambda r: r["seed"])
    if scan:
        plot_attention(scan[0]["checkpoint"], args.out.parent / f"{args.out.name}_attention.png")
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
