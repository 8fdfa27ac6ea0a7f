"""Benchmark: is the early-exit saving real? Wall clock vs MAC speed-up, per deployment form, and where the time goes.

Trains nothing. Networks are built untrained from the configs: the quickstart's (``model=resnet18_cpu
data=fashion_mnist``), the paper's SCAN ResNet18 (``model=resnet18 data=cifar100``, 3x32x32) and IMTA's 7-exit
MSDNet (``model=msdnet_cifar_anytime data=cifar100``). The exit mix is forced with budgeted thresholds (MSDNet
proportions for p = 0.5, 1, 2) computed on the benchmark images, so each point sends a known share of samples to
each exit. Each form (``eager``: the network as trained; ``deploy``: BatchNorm folded, attention gated in place,
patchify convs as GEMMs, channels-last, freed memory retained; ``--compile`` adds ``deploy+compile``) times the early-exit predictor against the plain network
built from the same parts, interleaved pass by pass, median of ``--repeats`` passes. A per-part profile (ms per
image of every section and exit at batch 256 against its MACs) shows where the time goes.

    python experiments/bench/early_exit_speed.py [--ckpt PATH] [--compile] [--out experiments/bench/results]

Writes ``early_exit_speed.json`` and ``early_exit_speed.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from scan_lightning.cost.macs import measure_costs
from scan_lightning.data.base import input_shape
from scan_lightning.export import deploy
from scan_lightning.models.outputs import exit_name
from scan_lightning.policy import ExitCache, ExitPolicy, budget_proportions, budgeted_thresholds, genetic_search
from scan_lightning.runtime.early_exit import EarlyExitRunner
from scan_lightning.runtime.forms import DeployedNetwork, DeployOptions
from scan_lightning.runtime.memory import retain_freed_memory
from scan_lightning.runtime.timing import mac_phrase, measure_latency, speed_phrase, time_early_exit
from scan_lightning.utils.config import build
from scan_lightning.utils.defaults import config_dir

NETWORKS = {  # name: (overrides, images per batch size, timed passes)
    "quickstart resnet18_cpu @ fashion_mnist": (["model=resnet18_cpu", "data=fashion_mnist"], 1024, 5),
    "SCAN resnet18 @ cifar100": (["model=resnet18", "data=cifar100"], 256, 3),
    "IMTA msdnet_cifar_anytime @ cifar100": (["model=msdnet_cifar_anytime", "data=cifar100"], 256, 3),
}


def commit() -> str:
    """The git commit benchmarked (``+dirty`` with uncommitted changes), or ``unknown`` outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def config_net(overrides: list[str]):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=unused", *overrides])
    return build(cfg.model).eval(), input_shape(cfg.data)


def checkpoint_net(path: str):
    from scan_lightning.training.module import MultiExitModule

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
        genetic_search(cache, em, reference_cost=1.5, population=100, generations=100, seed=0)
        best = min(best, time.perf_counter() - start)
    return {"samples": samples, "exits": exits, "population": 100, "generations": 100, "seconds": best}


def profile(name: str, form: str, net: DeployedNetwork, costs, images: torch.Tensor) -> dict:
    """ms per image of every section and exit at batch 256, against its MACs."""
    table = measure_latency(net, images, batch_size=min(256, images.shape[0]), repeats=9)
    parts = []
    for e, s_ms, x_ms in zip(costs.exits, table.section_ms, table.exit_ms_own):
        parts.append({"part": f"section{e.index + 1}", "ms": s_ms, "macs": e.section_macs})
        parts.append({"part": exit_name(e.index), "ms": x_ms, "macs": e.attention_macs + e.head_macs})
    return {"network": name, "form": form, "plain_ms": table.plain_ms, "plain_macs": costs.plain_macs, "parts": parts}


def sweep(name: str, form: str, net: DeployedNetwork, costs, images: torch.Tensor, repeats: int) -> list[dict]:
    """Wall clock vs MAC speed-up at batch 1 and 256 for several forced exit mixes."""
    conf = torch.stack([torch.softmax(lg, -1).max(-1).values for lg in net.all_exits(images)])
    rows = []
    for p in (0.5, 1.0, 2.0):
        thresholds = budgeted_thresholds(conf, budget_proportions(p, net.num_exits))
        policy = ExitPolicy.create(thresholds.clamp(min=1e-6, max=1.0).tolist())  # inf (nobody exits) -> 1.0
        predictor = EarlyExitRunner(net, policy, costs)
        for bs in (1, 256):
            r = time_early_exit(net, predictor, costs, images, bs, repeats)
            rows.append({"network": name, "form": form, "p": p, "thresholds": list(policy.thresholds), **r.to_dict()})
            print(f"{name} [{form}] p={p:.1f} batch={bs:>3}: plain {r.plain_ms_per_image:.3f} ms/img, early exit "
                  f"{r.early_exit_ms_per_image:.3f} ms/img ({speed_phrase(r.wall_speedup)}), {mac_phrase(r.mac_speedup)}, "
                  f"wall/MAC {r.efficiency:.2f}", flush=True)
    return rows


def write_markdown(out: Path, meta: dict, rows: list[dict], profiles: list[dict], ga: dict) -> None:
    lines = ["# Early-exit wall-clock benchmark", "",
             f"`python experiments/bench/early_exit_speed.py{meta['args']}` at {meta.get('commit', 'unknown')}: torch "
             f"{meta['torch']}, {meta['threads']} threads, {meta['cpus']} CPUs ({meta['machine']}); {meta['note']}.", ""]
    lines += [f"- {n}: input {tuple(m['input_shape'])}, plain network {m['plain_macs'] / 1e6:.2f} M MACs"
              for n, m in meta["networks"].items()]
    lines += ["", "Wall clock = plain ms/img / early-exit ms/img (median pass); wall / MAC = wall speed-up / MAC "
              "speed-up (1.0: the MAC saving is all real).", "",
              "| network | form | p | batch | plain ms/img | early-exit ms/img | early-exit p50 / p95 ms per batch "
              "| early exit | MACs | wall / MAC |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['network']} | {r['form']} | {r['p']:.1f} | {r['batch_size']} | {r['plain_ms_per_image']:.3f} "
              f"| {r['early_exit_ms_per_image']:.3f} | {r['early_exit']['call_p50_ms']:.2f} / "
              f"{r['early_exit']['call_p95_ms']:.2f} | {speed_phrase(r['wall_speedup'])} | {mac_phrase(r['mac_speedup'])} "
              f"| {r['efficiency']:.2f} |" for r in rows]
    lines += ["", "## Where the time goes (batch 256, ms per image; time share vs MAC share of the plain network)", ""]
    for pr in profiles:
        lines += [f"**{pr['network']}, {pr['form']}**: plain network {pr['plain_ms']:.3f} ms/img", "",
                  "| part | ms/img | M MACs | time share | MAC share | time / MAC (vs plain) |", "|---|---|---|---|---|---|"]
        for part in pr["parts"]:
            ts, ms = part["ms"] / pr["plain_ms"], part["macs"] / pr["plain_macs"]
            lines.append(f"| {part['part']} | {part['ms']:.4f} | {part['macs'] / 1e6:.2f} | {100 * ts:.1f}% "
                         f"| {100 * ms:.1f}% | {ts / ms if ms else float('nan'):.2f} |")
        lines.append("")
    lines += [f"GA ({ga['samples']} samples, {ga['exits']} exits, population 100, 100 generations): "
              f"{ga['seconds']:.2f} s (best of 3)."]
    (out / "early_exit_speed.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default=None, help="trained checkpoint (default: untrained config networks)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd deployment form")
    parser.add_argument("--onnxruntime", action="store_true", help="also time the form run by onnxruntime")
    parser.add_argument("--openvino", action="store_true", help="also time the form run by OpenVINO's CPU plugin")
    parser.add_argument("--only", default=None, help="substring of the network names to run")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager form (time the deployment forms only)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    nets = {args.ckpt: ("ckpt", 1024, 5)} if args.ckpt else NETWORKS
    forms = {"deploy": DeployOptions()} if args.no_eager else {"eager": None, "deploy": DeployOptions()}
    if args.compile:
        forms["deploy+compile"] = DeployOptions(compile=True)
    if args.onnxruntime:
        forms["deploy+onnxruntime"] = DeployOptions(onnxruntime=True)
    if args.openvino:
        forms["deploy+openvino"] = DeployOptions(openvino=True)
    if any(o is not None and o.retain_memory for o in forms.values()):
        retain_freed_memory()     # process-wide: on from the start, so every form and network runs with it
    rows, profiles, meta_nets = [], [], {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(ga: dict | None) -> None:   # after every network, so a stopped run keeps what it measured
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "networks": meta_nets, "compile": args.compile,
                "args": "".join(f" {a}" for a in sys.argv[1:]), "commit": commit(),
                "forms": {f: (o or DeployOptions.off()).to_dict()
                          for f, o in forms.items()},
                "note": "untrained networks; exit mix forced by budgeted thresholds; both sides in the same form"}
        (out / "early_exit_speed.json").write_text(json.dumps(
            {"meta": meta, "sweep": rows, "profile": profiles, "ga": ga}, indent=2))
        write_markdown(out, meta, rows, profiles, ga or {"samples": 0, "exits": 0, "seconds": float("nan")})

    for name, (overrides, n_images, repeats) in nets.items():
        if args.only and args.only not in name:
            continue
        net, shape = checkpoint_net(name) if overrides == "ckpt" else config_net(overrides)
        costs = measure_costs(net, shape)
        meta_nets[name] = {"input_shape": list(shape), "plain_macs": costs.plain_macs,
                           "exit_macs": [e.cumulative_macs for e in costs.exits]}
        images = torch.randn(n_images, *shape)
        for form, options in forms.items():
            deployed = DeployedNetwork(net) if options is None else deploy(net, options, costs)
            profiles.append(profile(name, form, deployed, costs, images[:256]))
            rows += sweep(name, form, deployed, costs, images, repeats)
        save(None)
    ga = time_ga()
    print(f"GA: {ga['samples']} samples, {ga['exits']} exits, population 100, 100 generations: {ga['seconds']:.2f} s")
    save(ga)

if __name__ == "__main__":
    main()
