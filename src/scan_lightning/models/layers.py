"""Building blocks shared by the backbones and exit heads: conv-BN-ReLU, the stems, a ResNet stage, He init."""
from __future__ import annotations

from typing import Literal

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

Stem = Literal["cifar", "imagenet", "small"]
STEMS = ("cifar", "imagenet", "small")


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None, groups: int = 1
                 ) -> list[nn.Module]:
    """Conv (no bias) + BatchNorm + ReLU; ``padding=None`` keeps the size at stride 1 (``kernel // 2``);
    ``groups=cin`` makes the conv depthwise."""
    padding = kernel // 2 if padding is None else padding
    return [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


def he_init(module: nn.Module) -> None:
    """He (fan-out) normal init for convs (zero biases), BatchNorm at (1, 0), zero Linear biases (torchvision's
    ResNet and VGG init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def make_stem(kind: str, in_channels: int, out_channels: int) -> tuple[nn.Sequential, int]:
    """The layers before the first section and their stride: ``cifar`` a 3x3 conv; ``small`` the same at stride 2
    (small images on a CPU budget); ``imagenet`` a 7x7/2 conv and a 3x3/2 max pool."""
    if kind in ("cifar", "small"):
        stride = 1 if kind == "cifar" else 2
        return nn.Sequential(*conv_bn_relu(in_channels, out_channels, 3, stride)), stride
    if kind == "imagenet":
        return nn.Sequential(*conv_bn_relu(in_channels, out_channels, 7, 2), nn.MaxPool2d(3, 2, 1)), 4
    raise ValueError(f"stem={kind!r} is not a stem; choose one of {STEMS}")


def resnet_stage(block: type[BasicBlock | Bottleneck], inplanes: int, planes: int, blocks: int, stride: int
                 ) -> nn.Sequential:
    """``blocks`` torchvision residual blocks; the first changes stride / width through a 1x1 projection."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(conv1x1(inplanes, planes * block.expansion, stride),
                                   nn.BatchNorm2d(planes * block.expansion))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)
