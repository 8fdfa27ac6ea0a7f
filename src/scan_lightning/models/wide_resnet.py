"""Wide ResNets of the CIFAR family (depth 6n + 2, three stages 16k-32k-64k): three sections, three exits.

Built from torchvision's BasicBlock (post-activation), as SCAN's WRN20-8 / WRN44-8; the paper has no
4/4 exit for them.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock

from scan_lightning.models.backbone import SectionedBackbone, SectionInfo
from scan_lightning.models.layers import Stem, he_init, make_stem, resnet_stage
from scan_lightning.models.registry import register_backbone


def build_wide_resnet(depth: int, widen: int, *, stem: Stem = "cifar", in_channels: int = 3,
                      width: float = 1.0) -> SectionedBackbone:
    """A CIFAR wide ResNet WRN-``depth``-``widen``: three stage sections of 16, 32 and 64 times ``widen`` channels
    (scaled by ``width``), He-initialised."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"depth={depth} must be 6n + 2 (e.g. 20, 44)")
    if widen < 1 or width <= 0:
        raise ValueError(f"widen={widen} must be >= 1 and width={width} > 0")
    n = (depth - 2) // 6
    base = max(1, round(16 * width))
    stem_module, reduction = make_stem(stem, in_channels, base)
    sections, info, inplanes = [], [], base
    for i, planes in enumerate(base * widen * m for m in (1, 2, 4)):
        stride = 1 if i == 0 else 2
        stage = resnet_stage(BasicBlock, inplanes, planes, n, stride)
        inplanes, reduction = planes, reduction * stride
        sections.append(nn.Sequential(stem_module, stage) if i == 0 else stage)
        info.append(SectionInfo(f"stage{i + 1}", planes, reduction))
    backbone = SectionedBackbone(nn.ModuleList(sections), info)
    he_init(backbone)
    return backbone


@register_backbone
def wrn20_8(*, stem: Stem = "cifar", in_channels: int = 3, width: float = 1.0) -> SectionedBackbone:
    """WRN-20-8: three stages of 3 blocks, 128-256-512 channels."""
    return build_wide_resnet(20, 8, stem=stem, in_channels=in_channels, width=width)


@register_backbone
def wrn44_8(*, stem: Stem = "cifar", in_channels: int = 3, width: float = 1.0) -> SectionedBackbone:
    """WRN-44-8: three stages of 7 blocks, 128-256-512 channels."""
    return build_wide_resnet(44, 8, stem=stem, in_channels=in_channels, width=width)
