"""Benchmark: what glibc's page faults cost the deployment form at batch 256 (``DeployOptions.retain_memory``).

The setting is process-wide and sticky, so the two sides cannot share a process: each round starts one child
with memory retained and one without (alternating which goes first), each child builds the untrained SCAN
ResNet18 (``model=resnet18 data=cifar100``, 3x32x32) in the deployment form and times every section and exit at
batch 256 (:func:`measure_latency`, median of ``--repeats``). Reported: per part, the median over rounds of the
ms per image on each side, and their ratio.

    python experiments/bench/memory_retention.py [--rounds 3] [--out experiments/bench/results]

Writes ``memory_retention.json`` and ``memory_retention.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

SIDES = ("retained", "default")


def child(side: str, repeats: int) -> dict:
    """One side's per-part ms per image (this process's malloc set by ``side``)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from early_exit_speed import config_net

    from scan_lightning.cost.macs import measure_costs
    from scan_lightning.export import deploy
    from scan_lightning.runtime.forms import DeployOptions
    from scan_lightning.runtime.memory import retain_freed_memory
    from scan_lightning.runtime.timing import measure_latency

    torch.manual_seed(0)
    net, shape = config_net(["model=resnet18", "data=cifar100"])
    costs = measure_costs(net, shape)
    deployed = deploy(net, DeployOptions(retain_memory=side == "retained"), costs)
    applied = side == "retained" and retain_freed_memory()
    table = measure_latency(deployed, torch.randn(256, *shape), batch_size=256, repeats=repeats)
    parts = {}
    for e, s_ms, x_ms in zip(costs.exits, table.section_ms, table.exit_ms_own):
        parts[f"section{e.index + 1}"] = {"ms": s_ms, "macs": e.section_macs}
        parts[f"exit{e.index + 1}"] = {"ms": x_ms, "macs": e.attention_macs + e.head_macs}
    return {"side": side, "retained": bool(applied), "plain_ms": table.plain_ms, "parts": parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats)))
        return
    runs = {side: [] for side in SIDES}
    for r in range(args.rounds):
        for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
            done = subprocess.run([sys.executable, __file__, "--child", side, "--repeats", str(args.repeats)],
                                  capture_output=True, text=True, check=True)
            runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {side}: plain {runs[side][-1]['plain_ms']:.3f} ms/img", flush=True)
    names = list(runs["retained"][0]["parts"])
    med = {side: {n: statistics.median(run["parts"][n]["ms"] for run in runs[side]) for n in names} for side in SIDES}
    plain = {side: statistics.median(run["plain_ms"] for run in runs[side]) for side in SIDES}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "libc": "-".join(platform.libc_ver()), "rounds": args.rounds,
            "repeats": args.repeats, "retained_in_force": all(run["retained"] for run in runs["retained"])}
    (out / "memory_retention.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))
    lines = ["# Page faults at batch 256: memory retained vs glibc's default", "",
             f"`python experiments/bench/memory_retention.py`: torch {meta['torch']}, {meta['threads']} threads, "
             f"{meta['cpus']} CPUs ({meta['machine']}, {meta['libc']}); untrained SCAN ResNet18 (3x32x32) in the "
             f"deployment form; {args.rounds} rounds of one child process per side (alternating order), each part "
             f"timed at batch 256, median of {args.repeats} calls; medians over rounds. Retention in force on the "
             f"retained side: {meta['retained_in_force']}.", "",
             "| part | M MACs | default ms/img | retained ms/img | default / retained |", "|---|---|---|---|---|"]
    macs = runs["retained"][0]["parts"]
    for n in names:
        d, k = med["default"][n], med["retained"][n]
        lines.append(f"| {n} | {macs[n]['macs'] / 1e6:.2f} | {d:.4f} | {k:.4f} | {d / k:.2f}x |")
    lines.append(f"| plain network | | {plain['default']:.4f} | {plain['retained']:.4f} | "
                 f"{plain['default'] / plain['retained']:.2f}x |")
    (out / "memory_retention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
