"""Building blocks shared by the backbones and exit heads."""
from __future__ import annotations

from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None) -> list[nn.Module]:
    """Conv (no bias) + BatchNorm + ReLU; ``padding=None`` keeps the size at stride 1 (``kernel // 2``)."""
    padding = kernel // 2 if padding is None else padding
    return [nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def he_init(module: nn.Module) -> None:
    """He (fan-out) normal init for convs, BatchNorm at (1, 0), zero Linear biases (torchvision's ResNet init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
