"""Benchmark: what does a SCAN training step cost next to the plain network's, eager and compiled?

SCAN ResNet18 (``model=resnet18 data=cifar100 loss=scan_code``: four exits, attention + bottleneck heads,
CE + KD + feature hint) against the plain ResNet18 (the same backbone and deep head alone, ``exit_after=[4]``, CE),
both at 3x32x32, batch 128, SGD as configured. One step = forward, loss, backward, optimiser step. The variants
(plain / SCAN, eager / ``torch.compile`` of the forward: the ``compile=true`` run option) are timed interleaved,
``--steps`` steps per variant per pass, ``--passes`` passes; the median step and its quartiles are reported, with
the MAC ratio of the two forwards and a per-operator profile of the eager SCAN step.

    python experiments/bench/train_step.py [--batch 128] [--passes 5] [--steps 2] [--no-compile]

Writes ``train_step.json`` and ``train_step.md`` to ``--out`` (default: experiments/bench/results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from scan_lightning.cost.macs import measure_costs
from scan_lightning.training.builders import build_module
from scan_lightning.utils.defaults import config_dir

VARIANTS = {"plain": ["model.exit_after=[4]", "loss=single", "~loss.terms.ce"], "scan": []}


def make_step(name: str, compiled: bool, batch: int):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=unused", "model=resnet18", "data=cifar100",
                                          "logger=none", *VARIANTS[name]])
    module = build_module(cfg)
    net, criterion = module.net.train(), module.criterion
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    forward = torch.compile(net.forward) if compiled else net.forward
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(cfg.data.num_classes, (batch,), generator=g)

    def step() -> None:
        total, _ = criterion(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step, net


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def profile_step(step, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per pass")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    forms = [False] if args.no_compile else [False, True]
    steps, macs, warm_s = {}, {}, {}
    for name in VARIANTS:
        for compiled in forms:
            key = f"{name} {'compiled' if compiled else 'eager'}"
            step, net = make_step(name, compiled, args.batch)
            start = time.perf_counter()
            step()   # warm-up (the compile, for compiled variants)
            step()
            warm_s[key] = time.perf_counter() - start
            steps[key] = step
            macs[name] = measure_costs(net.eval(), (3, 32, 32)).ensemble_macs if name == "scan" else \
                measure_costs(net.eval(), (3, 32, 32)).plain_macs
            net.train()
            print(f"{key}: ready ({warm_s[key]:.1f} s for two warm-up steps)", flush=True)

    times: dict[str, list[float]] = {k: [] for k in steps}
    for p in range(args.passes):
        for key, step in steps.items():
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                times[key].append(time.perf_counter() - start)
        print(f"pass {p + 1}/{args.passes}: " + ", ".join(f"{k} {statistics.median(v[-args.steps:]):.3f} s"
                                                         for k, v in times.items()), flush=True)

    rows = []
    for key, ts in times.items():
        q1, med, q3 = quartiles(ts)
        rows.append({"variant": key, "median_s": med, "q1_s": q1, "q3_s": q3, "steps": len(ts),
                     "images_per_s": args.batch / med, "warmup_s": warm_s[key]})
    by = {r["variant"]: r["median_s"] for r in rows}
    ratios = {form: by[f"scan {form}"] / by[f"plain {form}"] for form in ("eager", "compiled") if f"scan {form}" in by}
    if "scan compiled" in by:
        ratios["scan compiled / plain eager"] = by["scan compiled"] / by["plain eager"]
    mac_ratio = macs["scan"] / macs["plain"]
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "batch": args.batch, "passes": args.passes, "steps": args.steps,
            "forward_macs": macs, "mac_ratio": mac_ratio}
    profile = profile_step(steps["scan eager"])
    (out / "train_step.json").write_text(json.dumps({"meta": meta, "rows": rows, "ratios": ratios}, indent=2))
    lines = ["# Training step: SCAN ResNet18 vs the plain ResNet18", "",
             f"`python experiments/bench/train_step.py`: torch {meta['torch']}, {meta['threads']} threads, "
             f"{meta['cpus']} CPUs ({meta['machine']}); 3x32x32, batch {args.batch}, CIFAR-100 heads; "
             f"{args.passes} interleaved passes of {args.steps} steps per variant; forward MACs: plain "
             f"{macs['plain'] / 1e6:.1f} M, SCAN (all exits) {macs['scan'] / 1e6:.1f} M = {mac_ratio:.2f}x.", "",
             "| variant | median step (s) | quartiles (s) | images/s | warm-up (2 steps, s) |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['median_s']:.3f} | {r['q1_s']:.3f} - {r['q3_s']:.3f} | {r['images_per_s']:.1f} "
              f"| {r['warmup_s']:.1f} |" for r in rows]
    lines += ["", "SCAN step / plain step (medians): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
              + f"; MAC ratio {mac_ratio:.2f}x.", "", "## Where the eager SCAN step's time goes (one step)", "",
              "```", profile, "```"]
    (out / "train_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12 + len(rows)]))


if __name__ == "__main__":
    main()
