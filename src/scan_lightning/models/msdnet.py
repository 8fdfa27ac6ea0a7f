"""MSDNet (Huang et al., ICLR 2018), the IMTA backbone, cut into one section per block.

Every section maps the list of per-scale feature maps (finest first) to the next such list; the exit
after it reads the coarsest map. A layer adds ``growth * gr_factor[s]`` channels at each scale ``s`` it
keeps (dense connectivity): half from a strided conv of the next-finer scale, half from a conv at the
scale itself (all of it at the finest kept scale). Finer scales are dropped as depth grows (the
"max" pruning of the reference design), each drop followed by a 1x1 transition that scales the
channels by ``reduction`` (0.5). Convolutions get He initialisation.

Block sizes: ``step_mode="even"`` gives blocks of ``base, step, step, ...`` layers; ``"lin_grow"``
gives ``base, step + 1, 2 * step + 1, ...``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from scan_lightning.models.backbone import SectionedBackbone, SectionInfo
from scan_lightning.models.layers import conv_bn_relu, he_init, make_stem
from scan_lightning.models.registry import register_backbone

STEP_MODES = ("even", "lin_grow")


class DenseConv(nn.Module):
    """Optional 1x1 bottleneck (to at most ``bn_width * cout`` channels), then a 3x3 conv (stride 1 or 2)."""

    def __init__(self, cin: int, cout: int, stride: int, bottleneck: bool, bn_width: int) -> None:
        super().__init__()
        inner = min(cin, bn_width * cout) if bottleneck else cin
        layers = conv_bn_relu(cin, inner, 1) if bottleneck else []
        self.body = nn.Sequential(*layers, *conv_bn_relu(inner, cout, 3, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The optional 1x1 bottleneck and the 3x3 convolution applied to ``x``."""
        return self.body(x)


class FirstLayer(nn.Module):
    """Image -> one map per scale: a stem at the finest scale, then a stride-2 conv per coarser scale."""

    def __init__(self, in_channels: int, widths: Sequence[int], stem: str) -> None:
        super().__init__()
        first, _ = make_stem(stem, in_channels, widths[0])
        self.scales = nn.ModuleList([first] + [nn.Sequential(*conv_bn_relu(a, b, 3, 2)) for a, b in zip(widths, widths[1:])])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One map per scale, finest first, each coarser one made from the previous by a stride-2 conv."""
        maps = []
        for conv in self.scales:
            x = conv(x)
            maps.append(x)
        return maps


class DenseMultiScaleLayer(nn.Module):
    """One MSDNet layer: input scales ``first_in..S-1``, output scales ``first_out..S-1`` (first_out - first_in
    is 0, or 1 when the finest input scale is dropped here). ``channels``/``growth`` are per unit of
    ``gr_factor``."""

    def __init__(self, channels: int, growth: int, gr_factor: Sequence[int], bn_factor: Sequence[int],
                 first_in: int, first_out: int, bottleneck: bool) -> None:
        super().__init__()
        self.first_in, self.first_out, num_scales = first_in, first_out, len(gr_factor)
        self.own, self.down = nn.ModuleList(), nn.ModuleList()
        for s in range(first_out, num_scales):
            new = growth * gr_factor[s]
            has_finer = s - 1 >= first_in
            own_width = new // 2 if has_finer else new
            self.own.append(DenseConv(channels * gr_factor[s], own_width, 1, bottleneck, bn_factor[s]))
            if has_finer:
                self.down.append(DenseConv(channels * gr_factor[s - 1], new - own_width, 2, bottleneck,
                                           bn_factor[s - 1]))
        self.has_finer = first_out > first_in  # does the first output scale also read a finer one?

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every output scale's input map with the new channels concatenated (dense connectivity): a strided conv of the
        next-finer map where there is one, and a conv of the map itself."""
        out, d = [], 0
        for j, own in enumerate(self.own):
            s = self.first_out + j
            x = maps[s - self.first_in]
            parts = [x]
            if j > 0 or self.has_finer:
                parts.append(self.down[d](maps[s - 1 - self.first_in]))
                d += 1
            parts.append(own(x))
            out.append(torch.cat(parts, dim=1))
        return out


class Transition(nn.Module):
    """1x1 conv-BN-ReLU per scale, ``cin -> cout`` channel units (times each scale's ``gr_factor``)."""

    def __init__(self, cin: int, cout: int, gr_factor: Sequence[int], first: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(*conv_bn_relu(cin * g, cout * g, 1)) for g in gr_factor[first:]])

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every scale's map through its 1x1 conv-BN-ReLU (fewer channels)."""
        return [conv(x) for conv, x in zip(self.convs, maps)]


def block_sizes(num_blocks: int, base: int, step: int, step_mode: str) -> list[int]:
    """Layers per block: ``even`` -> base, step, step, ...; ``lin_grow`` -> base, step + 1, 2 step + 1, ..."""
    if step_mode not in STEP_MODES:
        raise ValueError(f"step_mode={step_mode!r} is not allowed; choose one of {STEP_MODES}")
    if num_blocks < 1 or base < 1 or step < 1:
        raise ValueError(f"num_blocks={num_blocks}, base={base}, step={step} must all be >= 1")
    return [base] + [step if step_mode == "even" else step * i + 1 for i in range(1, num_blocks)]


@register_backbone
def msdnet(
    *,
    num_blocks: int = 7,
    base: int = 4,
    step: int = 2,
    step_mode: Literal["even", "lin_grow"] = "even",
    num_scales: int = 3,
    channels: int = 16,
    growth: int = 6,
    gr_factor: Sequence[int] = (1, 2, 4),
    bn_factor: Sequence[int] = (1, 2, 4),
    bottleneck: bool = True,
    reduction: float = 0.5,
    stem: str = "cifar",
    in_channels: int = 3,
) -> SectionedBackbone:
    """MSDNet with one section per block (defaults: the CIFAR "anytime" network, 7 exits)."""
    gr_factor, bn_factor = [int(g) for g in gr_factor], [int(b) for b in bn_factor]
    if len(gr_factor) != num_scales or len(bn_factor) != num_scales:
        raise ValueError(f"gr_factor={gr_factor} and bn_factor={bn_factor} need one entry per scale "
                         f"(num_scales={num_scales})")
    if not 0.0 < reduction <= 1.0:
        raise ValueError(f"reduction={reduction} must lie in (0, 1]")
    sizes = block_sizes(num_blocks, base, step, step_mode)
    total = sum(sizes)
    interval = math.ceil(total / num_scales)  # layers between two scale drops

    def first_scale(layer: int) -> int:  # finest scale still present after `layer` (1-based; 0 = first layer)
        return min(num_scales - 1, max(0, layer - 1) // interval)

    width = channels
    sections, info, layer = [], [], 0
    reduction_at = [(4 if stem == "imagenet" else 1) * 2 ** s for s in range(num_scales)]
    for b, size in enumerate(sizes):
        modules: list[nn.Module] = [FirstLayer(in_channels, [width * g for g in gr_factor], stem)] if b == 0 else []
        for _ in range(size):
            layer += 1
            first_in, first_out = first_scale(layer - 1), first_scale(layer)
            modules.append(DenseMultiScaleLayer(width, growth, gr_factor, bn_factor, first_in, first_out, bottleneck))
            width += growth
            if first_out > first_in:
                reduced = math.floor(reduction * width)
                modules.append(Transition(width, reduced, gr_factor, first_out))
                width = reduced
        sections.append(nn.Sequential(*modules))
        info.append(SectionInfo(f"block{b + 1}", width * gr_factor[-1], reduction_at[-1]))
    backbone = SectionedBackbone(nn.ModuleList(sections), info)
    he_init(backbone)
    return backbone
