"""ResNets cut into stem+stage sections, built from torchvision's residual blocks.

``stem="cifar"`` is the 3x3 stride-1 stem without max-pool used by SCAN on 32x32 images;
``stem="imagenet"`` is torchvision's 7x7/2 stem with 3x3/2 max-pool; ``stem="small"`` is a 3x3 stride-2 stem for
small images on a CPU (the quickstart: 28x28 -> 14x14 before the first stage, so no layer works at full size). ``width`` scales every stage's
channel count (1.0 = the paper's 64-128-256-512) so CPU-sized variants keep the same topology.
"""
from __future__ import annotations

from typing import Literal, Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from scan_lightning.models.backbone import SectionedBackbone, SectionInfo
from scan_lightning.models.layers import he_init
from scan_lightning.models.registry import register_backbone

Stem = Literal["cifar", "imagenet", "small"]
STEMS = ("cifar", "imagenet", "small")


def _stem(kind: str, in_channels: int, out_channels: int) -> tuple[nn.Sequential, int]:
    if kind in ("cifar", "small"):
        stride = 1 if kind == "cifar" else 2
        conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)), stride
    if kind == "imagenet":
        conv = nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True), pool), 4
    raise ValueError(f"stem={kind!r} is not a ResNet stem; choose one of {STEMS}")


def _stage(block: type[BasicBlock | Bottleneck], inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            conv1x1(inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
        )
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


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
    stem_module, reduction = _stem(stem, in_channels, planes[0])
    sections, info = [], []
    inplanes = planes[0]
    for i, (p, n) in enumerate(zip(planes, layers)):
        stride = 1 if i == 0 else 2
        stage = _stage(block, inplanes, p, n, stride)
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
