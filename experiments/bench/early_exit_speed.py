"""Benchmark: is the early-exit saving real? Wall-clock vs MAC speed-up, and the GA's run time.

Trains nothing. Two networks are built untrained from the configs: the quickstart's
(model=resnet18_cpu, data=fashion_mnist: 1x28x28, ~7 M MACs, overhead-bound on a CPU) and the paper's
SCAN ResNet18 (model=resnet18, data=cifar100: 3x32x32, ~0.56 G MACs, compute-bound), and the 7-exit
MSDNet of IMTA (model=msdnet_cifar_anytime: ~52 M MACs, its classifiers are part of the design). The exit mix is
forced with budgeted thresholds (MSDNet proportions for several p) computed on the benchmark images
themselves, so each sweep point sends a known share of samples to each exit. ``--ckpt`` benchmarks a
trained checkpoint instead (same procedure, its input shape).

    python experiments/bench/early_exit_speed.py [--ckpt PATH] [--out experiments/bench/results]

Writes ``early_exit_speed.json`` and ``early_exit_speed.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from scan_lightning.config import build, config_dir
from scan_lightning.inference import (
    EarlyExitPredictor,
    ExitCache,
    ExitPolicy,
    budget_proportions,
    budgeted_thresholds,
    genetic_search,
    measure_costs,
    time_early_exit,
)
from scan_lightning.inference.analysis import exit_macs
from scan_lightning.inference.deploy import fold_batchnorm

NETWORKS = {  # name: (overrides, images per batch size)
    "quickstart resnet18_cpu @ fashion_mnist": (["model=resnet18_cpu", "data=fashion_mnist"], 1024),
    "SCAN resnet18 @ cifar100": (["model=resnet18", "data=cifar100"], 256),
    "IMTA msdnet_cifar_anytime @ cifar100": (["model=msdnet_cifar_anytime", "data=cifar100"], 256),
}


def config_net(overrides: list[str]):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=unused", *overrides])
    return build(cfg.model).eval(), (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)


def checkpoint_net(path: str):
    from scan_lightning.module import MultiExitModule

    module = MultiExitModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    d = module.hparams.run_config["data"]
    return module.net.eval(), (d["in_channels"], d["image_size"], d["image_size"])


def time_ga(samples: int = 10_000, exits: int = 4, classes: int = 10, repeats: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    cache = ExitCache(torch.randn(exits, samples, classes, generator=g) * 3,
                      torch.randint(classes, (samples,), generator=g))
    em = torch.linspace(1.0, 2.0, exits + 1, dtype=torch.float64)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        genetic_search(cache, em, reference_macs=1.5, population=100, generations=100, seed=0)
        best = min(best, time.perf_counter() - start)
    return {"samples": samples, "exits": exits, "population": 100, "generations": 100, "seconds": best}


def sweep(name: str, net, costs, images: torch.Tensor) -> list[dict]:
    """Wall-clock vs MAC speed-up at batch 1 and 256 for several forced exit mixes."""
    net = fold_batchnorm(net)
    with torch.no_grad():
        conf = torch.stack([torch.softmax(lg, -1).max(-1).values for lg in net(images).logits])
    rows = []
    for p in (0.5, 1.0, 2.0):
        thresholds = budgeted_thresholds(conf, budget_proportions(p, net.num_exits))
        thresholds = thresholds.clamp(min=1e-6, max=1.0).tolist()  # inf (nobody exits) -> 1.0
        predictor = EarlyExitPredictor(net, ExitPolicy.create(thresholds), costs)
        for bs in (1, 256):
            r = time_early_exit(net, predictor, costs, images, bs)
            rows.append({"network": name, "p": p, "thresholds": thresholds, **r.to_dict()})
            print(f"{name} p={p:.1f} batch={bs:>3}: full {r.full_ms_per_image:.3f} ms/img, early exit "
                  f"{r.early_exit_ms_per_image:.3f} ms/img, wall {r.wall_speedup:.2f}x, MAC {r.mac_speedup:.2f}x, "
                  f"wall/MAC {r.efficiency:.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default=None, help="trained checkpoint (default: untrained quickstart net)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    nets = {args.ckpt: ("ckpt", 1024)} if args.ckpt else NETWORKS
    rows, meta_nets = [], {}
    for name, (overrides, n_images) in nets.items():
        net, shape = checkpoint_net(name) if overrides == "ckpt" else config_net(overrides)
        costs = measure_costs(net, shape)
        meta_nets[name] = {"input_shape": list(shape), "plain_macs": costs.plain_macs,
                           "exit_macs": exit_macs(costs).tolist()}
        rows += sweep(name, net, costs, torch.randn(n_images, *shape))
    ga = time_ga()
    print(f"GA: {ga['samples']} samples, {ga['exits']} exits, population 100, 100 generations: {ga['seconds']:.2f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "networks": meta_nets,
            "note": "untrained networks, BatchNorm folded; exit mix forced by budgeted thresholds"}
    (out / "early_exit_speed.json").write_text(json.dumps({"meta": meta, "sweep": rows, "ga": ga}, indent=2))
    lines = ["# Early-exit wall-clock benchmark", "",
             f"`python experiments/bench/early_exit_speed.py`: torch {meta['torch']}, {meta['threads']} threads, "
             f"{meta['cpus']} CPUs ({meta['machine']}); {meta['note']}.", ""]
    lines += [f"- {n}: input {tuple(m['input_shape'])}, plain network {m['plain_macs'] / 1e6:.2f} M MACs"
              for n, m in meta_nets.items()]
    lines += ["", "| network | p | batch | full ms/img | early-exit ms/img | wall speed-up | MAC speed-up | wall / MAC |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['network']} | {r['p']:.1f} | {r['batch_size']} | {r['full_ms_per_image']:.3f} | {r['early_exit_ms_per_image']:.3f} "
              f"| {r['wall_speedup']:.2f} | {r['mac_speedup']:.2f} | {r['efficiency']:.2f} |" for r in rows]
    lines += ["", f"GA ({ga['samples']} samples, {ga['exits']} exits, population 100, 100 generations): "
                  f"{ga['seconds']:.2f} s (best of 3)."]
    (out / "early_exit_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
