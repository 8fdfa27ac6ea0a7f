"""Inference-time rewrites that keep outputs (up to float rounding) and cut per-layer overhead."""
from __future__ import annotations

import copy

from torch import nn
from torch.fx.experimental.optimization import fuse

from scan_lightning.models.multi_exit import MultiExitNetwork


def fold_batchnorm(net: MultiExitNetwork) -> MultiExitNetwork:
    """An eval-mode copy with every Conv2d+BatchNorm2d pair folded into one conv (torch.fx ``fuse``).

    Sections, attention modules and heads are traced and fused one by one, so the copy keeps the
    section/exit structure the early-exit predictor walks.
    """
    folded = copy.deepcopy(net).eval()
    folded.backbone.sections = nn.ModuleList([fuse(m) for m in folded.backbone.sections])
    folded.attentions = nn.ModuleList([fuse(m) for m in folded.attentions])
    folded.heads = nn.ModuleList([fuse(m) for m in folded.heads])
    return folded
