"""What the SCAN attention modules look at: each shallow exit's mask for a batch of images."""
from __future__ import annotations

import torch

from scan_lightning.models.heads import AttentionModule
from scan_lightning.models.multi_exit import MultiExitNetwork, exit_input


def attention_exits(net: MultiExitNetwork) -> list[int]:
    """0-based indices of the exits that have an attention module (none: a network without attention)."""
    return [i for i, a in enumerate(net.attentions) if isinstance(a, AttentionModule)]


@torch.no_grad()
def attention_maps(net: MultiExitNetwork, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Exit index (0-based) -> its attention mask averaged over channels, (N, H, W) in [0, 1], for the exits that
    have one; the sections after the last such exit are not run."""
    exits = attention_exits(net)
    maps: dict[int, torch.Tensor] = {}
    h = x
    for i, section in enumerate(net.sections[: max(exits) + 1] if exits else []):
        h = section(h)
        attention = net.attentions[i]
        if isinstance(attention, AttentionModule):   # the exits in ``exits``
            maps[i] = attention.attention_map(exit_input(h)).mean(1)
    return maps
