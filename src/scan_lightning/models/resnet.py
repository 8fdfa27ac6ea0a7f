"""ResNets cut into stem+stage sections, built from torchvision's residual blocks.

``stem="cifar"`` is the 3x3 stride-1 stem without max-pool used by SCAN on 32x32 images;
``stem="imagenet"`` is torchvision's 7x7/2 stem with 3x3/2 max-pool; ``stem="small"`` is a 3x3 stride-2 stem for
small images on a CPU (the quickstart: 28x28 -> 14x14 before the first stage, so no layer works at full size). ``width`` scales every stage's
channel count (1.0 = the paper's 64-128-256-512) so CPU-sized variants keep the same topology.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from scan_lightning.models.backbone import SectionedBackbone, SectionInfo
from scan_lightning.models.layers import Stem, he_init, make_stem, resnet_stage
from scan_lightning.models.registry import register_backbone


def build_resnet(
    block: type[BasicBlock | Bottleneck],
    layers: Sequence[int],
    *,
    stem: Stem = "cifar",
    in_channels: int = 3,
    width: float = 1.0,
) -> SectionedBackbone:
    """Four sections: (stem + layer1), layer2, layer3, layer4 - one exit after each."""
    if width <= 0:
        raise ValueError(f"width={width} must be > 0")
    if len(layers) != 4 or any(n < 1 for n in layers):
        raise ValueError(f"layers={list(layers)} must be four positive block counts")
    planes = [max(1, round(p * width)) for p in (64, 128, 256, 512)]
    stem_module, reduction = make_stem(stem, in_channels, planes[0])
    sections, info = [], []
    inplanes = planes[0]
    for i, (p, n) in enumerate(zip(planes, layers)):
        stride = 1 if i == 0 else 2
        stage = resnet_stage(block, inplanes, p, n, stride)
        inplanes = p * block.expansion
        reduction *= stride
        sections.append(nn.Sequential(stem_module, stage) if i == 0 else stage)
        info.append(SectionInfo(name=f"layer{i + 1}", channels=inplanes, reduction=reduction))
    backbone = SectionedBackbone(nn.ModuleList(sections), info)
    he_init(backbone)
    return backbone


def _resnet(name: str, block: type[BasicBlock | Bottleneck], default_layers: tuple[int, ...]):
    def builder(*, stem: Stem = "cifar", in_channels: int = 3, width: float = 1.0,
                layers: Sequence[int] | None = None) -> SectionedBackbone:
        return build_resnet(block, layers or default_layers, stem=stem, in_channels=in_channels, width=width)

    builder.__name__ = name
    builder.__doc__ = f"{name} ({block.__name__}, blocks {list(default_layers)}); ``layers`` may be shrunk for CPU runs."
    return register_backbone(builder)


resnet18 = _resnet("resnet18", BasicBlock, (2, 2, 2, 2))
resnet34 = _resnet("resnet34", BasicBlock, (3, 4, 6, 3))
resnet50 = _resnet("resnet50", Bottleneck, (3, 4, 6, 3))
resnet101 = _resnet("resnet101", Bottleneck, (3, 4, 23, 3))
resnet152 = _resnet("resnet152", Bottleneck, (3, 8, 36, 3))
