"""Inference-time rewrites that keep outputs (up to float rounding) and cut per-layer overhead."""
from __future__ import annotations

import copy

from torch import nn
from torch.fx.experimental.optimization import fuse

from scan_lightning.models.multi_exit import MultiExitNetwork


def fold_batchnorm(net: MultiExitNetwork) -> MultiExitNetwork:
    """An eval-mode copy with every Conv2d+BatchNorm2d pair folded into one conv (torch.fx ``fuse``).

    Sections, and the conv stacks of attention modules and heads, are traced and fused one by one, so
    the copy keeps the section/exit structure the early-exit predictor walks.
    """
    folded = copy.deepcopy(net).eval()
    folded.backbone.sections = nn.ModuleList([fuse(m) for m in folded.backbone.sections])
    # inside attention modules and heads only their Sequential stacks are traced, so the modules keep
    # the methods the network calls (attention_map, features, fc)
    for module in [*folded.attentions, *folded.heads]:
        for name in ("mask", "bottleneck", "convs"):
            if isinstance(getattr(module, name, None), nn.Sequential):
                setattr(module, name, fuse(getattr(module, name)))
    return folded
