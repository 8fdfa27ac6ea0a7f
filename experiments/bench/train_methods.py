"""Benchmark: what a training step of each method costs next to the plain network's, on the leaderboard's network.

Each method of ``conf/method/`` is built as ``experiment=leaderboard_fashion method=<name>`` composes it (the 1/4-width
quickstart ResNet18 at 1x28x28, batch 128, SGD as configured); ``plain`` is the plain network itself (the backbone and
the deep head, no shallow exit). One step = forward, loss, backward, optimiser step;
for L2W also its meta step (one-step look-ahead, :func:`scan_lightning.losses.l2w.meta_step`, and the predictor's Adam
step) every ``interval``-th step, as ``MetaReweighting`` runs it, so the median step carries its share. The methods are
timed interleaved, ``--steps`` steps per method per pass, ``--passes`` passes; the median ms per step is reported.

    python experiments/bench/train_methods.py [--passes 5] [--steps 10] [--threads 2]

Writes ``train_methods.json`` and ``train_methods.md`` to ``--out`` (default: experiments/bench/results); the
leaderboard (experiments/leaderboard.py) joins the per-epoch times (100 steps an epoch).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from scan_lightning.losses.l2w import meta_step
from scan_lightning.training.builders import build_module
from scan_lightning.training.callbacks.meta_reweighting import l2w_term
from scan_lightning.utils.defaults import config_dir

METHODS = ["plain", "dsn", "scan", "sdn", "pbee", "ztw", "l2w", "boost"]
# the plain network itself: the backbone and the deep head, no shallow exit (method=plain keeps the heads at weight 0)
PLAIN = ["model.exit_after=[4]", "~loss.terms.ce"]


def make_step(method: str, batch: int) -> Callable[[], None]:
    """One training step of ``method`` on a fixed random batch (a closure; it counts its own steps for L2W)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=unused", "logger=none", "experiment=leaderboard_fashion",
                                          f"method={method}", *(PLAIN if method == "plain" else [])])
    module = build_module(cfg)
    net, criterion = module.net.train(), module.criterion
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(10, (batch,), generator=g)
    term = l2w_term(module)
    meta = cfg.callbacks.get("meta_reweighting") or {}
    interval = int(meta.get("interval", 1))
    meta_opt = torch.optim.Adam(term.predictor.parameters(), lr=1e-3) if term is not None and term.predictor else None
    count = [0]

    def step() -> None:
        if term is not None and meta_opt is not None and count[0] % interval == 0:
            loss = meta_step(net, term, x, y, x, y, float(optimizer.param_groups[0]["lr"]))
            meta_opt.zero_grad()
            loss.backward(inputs=list(meta_opt.param_groups[0]["params"]))
            meta_opt.step()
        count[0] += 1
        total, _ = criterion(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step


def main() -> None:
    """Time every method's step, interleaved; write the JSON and Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("experiments/bench/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = {m: make_step(m, args.batch) for m in METHODS}
    for step in steps.values():      # warm-up: first-call allocations
        step()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(args.passes):
        for m, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[m].append(1000 * (time.perf_counter() - start) / args.steps)
    command = (f"python experiments/bench/train_methods.py --passes {args.passes} --steps {args.steps} "
               f"--threads {args.threads}")
    note = (f"batch {args.batch}, {args.threads} threads, median of {args.passes} interleaved passes of {args.steps} "
            f"steps, torch {torch.__version__}, {platform.machine()}")
    result = {"command": command, "note": note,
              "methods": {m: {"ms_per_step": statistics.median(t), "passes_ms": t} for m, t in times.items()}}
    plain = result["methods"]["plain"]["ms_per_step"]
    lines = ["# Training step time per method (leaderboard network)", "", f"`{command}`: {note}.", "",
             "| method | ms per step (median) | min - max over passes | x plain |", "|---|---|---|---|"]
    for m, t in times.items():
        lines.append(f"| {m} | {statistics.median(t):.1f} | {min(t):.1f} - {max(t):.1f} | "
                     f"{statistics.median(t) / plain:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_methods.json").write_text(json.dumps(result, indent=2))
    (args.out / "train_methods.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
