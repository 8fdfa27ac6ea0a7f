"""Experiment (not kept): MSDNet's dense concatenations replaced by preallocated per-scale buffers.

In the deployment form (channels-last) ``torch.cat`` takes about 30 % of MSDNet's first two sections at batch 256:
every layer copies the whole growing map to append 6-24 channels. The rewrite timed here allocates, per run of dense
layers, one NHWC buffer per scale at its final width; each layer writes only its new channels into it, and each
consumer's 1x1 bottleneck reads the first ``c`` channels as a strided GEMM operand (no copy). Both sides start from
the same BN-folded, channels-last untrained ``msdnet_cifar_anytime``; every section is timed on the same input,
interleaved, median of ``--repeats``.

    python experiments/bench/msdnet_dense_buffers.py [--repeats 9] [--out experiments/bench/results]

Writes ``msdnet_dense_buffers.md`` (per-section times and the operator profile of sections 1-2 on each side).
"""
from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from early_exit_speed import commit, config_net  # noqa: E402

from scan_lightning.export import deploy
from scan_lightning.models.msdnet import DenseConv, DenseMultiScaleLayer, FirstLayer, Transition  # noqa: E402
from scan_lightning.runtime.forms import DeployOptions, _fold_sequential_pairs  # noqa: E402


def new_channels(conv: DenseConv) -> int:
    return [m for m in conv.body if isinstance(m, nn.Conv2d)][-1].out_channels


def dense_conv_on_prefix(conv: DenseConv, buf: torch.Tensor, c: int) -> torch.Tensor:
    """``conv`` on the first ``c`` channels of the NHWC buffer ``buf``; a leading 1x1 conv reads them in place."""
    body, first = list(conv.body), conv.body[0]
    if first.kernel_size == (1, 1) and first.stride == (1, 1):
        n, h, w, total = buf.shape
        a = buf.reshape(n * h * w, total)[:, :c]                       # row stride ``total``: a GEMM operand as is
        weight = first.weight.reshape(first.out_channels, c).t()
        y = torch.addmm(first.bias, a, weight) if first.bias is not None else a @ weight
        x, body = y.view(n, h, w, -1).permute(0, 3, 1, 2), body[1:]   # channels-last NCHW view
    else:
        x = buf[..., :c].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    for m in body:
        x = m(x)
    return x


class BufferedSection(nn.Module):
    """One MSDNet section with each run of dense layers writing into preallocated per-scale buffers."""

    def __init__(self, section: nn.Sequential) -> None:
        super().__init__()
        self.layers = nn.ModuleList(section)

    def forward(self, maps):
        layers, i = list(self.layers), 0
        while i < len(layers):
            if isinstance(layers[i], (FirstLayer, Transition)):
                maps, i = layers[i](maps), i + 1
                continue
            run = []
            while i < len(layers) and isinstance(layers[i], DenseMultiScaleLayer):
                run.append(layers[i])
                i += 1
                if run[-1].first_out > run[-1].first_in:   # a layer that drops a scale ends the run
                    break
            maps = self._run(run, maps)
        return maps

    @staticmethod
    def _run(run: list[DenseMultiScaleLayer], maps: list[torch.Tensor]) -> list[torch.Tensor]:
        first_in, width = run[0].first_in, [x.shape[1] for x in maps]
        final = list(width)
        for layer in run:
            d = 0
            for j, own in enumerate(layer.own):
                s = layer.first_out + j - first_in
                final[s] += new_channels(own)
                if j > 0 or layer.has_finer:
                    final[s], d = final[s] + new_channels(layer.down[d]), d + 1
        bufs = []
        for x, f in zip(maps, final):
            buf = x.new_empty(x.shape[0], x.shape[2], x.shape[3], f)
            buf[..., :x.shape[1]].copy_(x.permute(0, 2, 3, 1))
            bufs.append(buf)
        for layer in run:
            grown, d = list(width), 0
            for j, own in enumerate(layer.own):
                s = layer.first_out + j - first_in
                pos = width[s]
                parts = []
                if j > 0 or layer.has_finer:
                    parts.append(dense_conv_on_prefix(layer.down[d], bufs[s - 1], width[s - 1]))
                    d += 1
                parts.append(dense_conv_on_prefix(own, bufs[s], width[s]))
                for y in parts:
                    bufs[s][..., pos:pos + y.shape[1]].copy_(y.permute(0, 2, 3, 1))
                    pos += y.shape[1]
                grown[s] = pos
            width = grown
        return [b.permute(0, 3, 1, 2) for b in bufs[run[-1].first_out - first_in:]]


def op_table(fn, repeats: int = 3) -> str:
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    net, shape = config_net(["model=msdnet_cifar_anytime", "data=cifar100"])
    ref = deploy(net, DeployOptions())
    folded = copy.deepcopy(net).eval()
    buffered = []
    for section in folded.backbone.sections:
        _fold_sequential_pairs(section)
        buffered.append(BufferedSection(section).to(memory_format=torch.channels_last).requires_grad_(False))
    lines = [
        "# MSDNet: dense concatenations vs preallocated per-scale buffers (not kept)", "",
        f"`python experiments/bench/msdnet_dense_buffers.py --repeats {args.repeats}` at {commit()}: torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; untrained "
        f"`msdnet_cifar_anytime` (3x32x32), BN folded, channels-last on both sides; ms per batch, median of "
        f"{args.repeats} interleaved passes.", ""]
    for batch in (256, 1):
        x = ref.prepare(torch.randn(batch, *shape))
        with torch.inference_mode():
            inputs = [x]
            for k in range(ref.num_exits):
                inputs.append(ref.section(k, inputs[-1]))
            diff = max(max((a - b).abs().max().item() for a, b in zip(ref.section(k, inputs[k]), buffered[k](inputs[k])))
                       for k in range(ref.num_exits))
            lines += [f"## Batch {batch} (largest difference of any output map: {diff:.2e})", "",
                      "| section | concatenation ms | buffers ms | buffers / concatenation |", "|---|---|---|---|"]
            total = [0.0, 0.0]
            for k in range(ref.num_exits):
                times = ([], [])
                for _ in range(args.repeats):
                    for side, fn in enumerate((ref.section, lambda i, h: buffered[i](h))):
                        start = time.perf_counter()
                        fn(k, inputs[k])
                        times[side].append(time.perf_counter() - start)
                a, b = (1e3 * sorted(t)[len(t) // 2] for t in times)
                total = [total[0] + a, total[1] + b]
                lines.append(f"| {k + 1} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
                print(f"batch {batch} section {k + 1}: {a:.2f} vs {b:.2f} ms", flush=True)
            lines += [f"| all | {total[0]:.2f} | {total[1]:.2f} | {total[1] / total[0]:.2f} |", ""]
        if batch == 256:
            first_two = (
                ("concatenation", lambda h=inputs: (ref.section(0, h[0]), ref.section(1, h[1]))),
                ("buffers", lambda h=inputs: (buffered[0](h[0]), buffered[1](h[1]))))
            for name, fn in first_two:
                lines += [f"Operators of sections 1-2, {name} (3 passes):", "", "```", op_table(fn).strip(), "```", ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "msdnet_dense_buffers.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'msdnet_dense_buffers.md'}")


if __name__ == "__main__":
    main()
