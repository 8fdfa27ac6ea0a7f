"""VGG-BN cut at its pooling stages: four sections (blocks 1-2, 3, 4, 5), an exit after each.

Layer specs come from torchvision (``torchvision.models.vgg.cfgs``); ``width`` scales the channels for
CPU runs. The deep exit is global pool + linear (as in CIFAR VGGs), not torchvision's 4096-wide FC stack.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.vgg import cfgs

from scan_lightning.models.backbone import SectionedBackbone, SectionInfo
from scan_lightning.models.layers import he_init
from scan_lightning.models.registry import register_backbone


def _blocks(spec: list, in_channels: int, width: float) -> list[tuple[nn.Sequential, int]]:
    """Split a torchvision VGG spec into conv-BN-ReLU blocks, each ending with its max-pool."""
    blocks: list[tuple[nn.Sequential, int]] = []
    layers: list[nn.Module] = []
    channels = in_channels
    for v in spec:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            blocks.append((nn.Sequential(*layers), channels))
            layers = []
        else:
            out = max(1, round(v * width))
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
    return blocks


def build_vgg(spec: list, *, in_channels: int = 3, width: float = 1.0) -> SectionedBackbone:
    """A VGG-BN backbone from a torchvision layer spec: four sections (blocks 1-2, 3, 4, 5), channels scaled by
    ``width``, He-initialised."""
    if width <= 0:
        raise ValueError(f"width={width} must be > 0")
    b = _blocks(spec, in_channels, width)
    groups = [b[0:2], b[2:3], b[3:4], b[4:5]]
    sections = nn.ModuleList([nn.Sequential(*[m for m, _ in g]) for g in groups])
    info = [SectionInfo(f"pool{2 + i}", g[-1][1], 2 ** (2 + i)) for i, g in enumerate(groups)]
    backbone = SectionedBackbone(sections, info)
    he_init(backbone)
    return backbone


@register_backbone
def vgg16_bn(*, in_channels: int = 3, width: float = 1.0) -> SectionedBackbone:
    """VGG16 with BatchNorm (torchvision spec "D")."""
    return build_vgg(cfgs["D"], in_channels=in_channels, width=width)


@register_backbone
def vgg19_bn(*, in_channels: int = 3, width: float = 1.0) -> SectionedBackbone:
    """VGG19 with BatchNorm (torchvision spec "E")."""
    return build_vgg(cfgs["E"], in_channels=in_channels, width=width)
