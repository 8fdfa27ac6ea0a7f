"""Exit heads: SCAN attention module, SCAN bottleneck classifier, plain pool+linear, MSDNet classifier, SDN's internal
classifier.

Every head maps a section output to ``(logits, feature)``, where ``feature`` is the pooled vector that
feeds the final Linear layer (SCAN's F_i, used by the feature-hint loss).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from scan_lightning.models.layers import conv_bn_relu, he_init


class AttentionModule(nn.Module):
    """SCAN Eq. 2: conv 3x3/2 + BN + ReLU, deconv 4/2 + BN, sigmoid -> a mask the size of the input.

    ``forward`` returns ``mask * x``; the mask feeds only the exit's classifier, never the trunk.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mask = nn.Sequential(
            *conv_bn_relu(channels, channels, kernel=3, stride=2, padding=1),
            nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.Sigmoid(),
        )

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The sigmoid mask in [0, 1] for ``x`` (SCAN, Zhang et al., NeurIPS 2019, Eq. 2), cropped to ``x``'s height and
        width."""
        mask = self.mask(x)
        # Odd sizes (e.g. 7x7) come back one pixel larger after the transposed conv; crop to the input.
        return mask[..., : x.shape[-2], : x.shape[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` multiplied by its attention mask."""
        return self.attention_map(x) * x


class ExitHead(nn.Module):
    """An exit's classifier: ``features(x)`` (pooled, one vector per sample) then the Linear ``fc``; returns both
    (the loss terms read the features, e.g. SCAN's feature hint)."""

    fc: nn.Linear
    feature_width: int   # width of the pooled feature (the Linear may read more: ISC and cascade inputs join it)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature, one vector per sample (N, feature_width); subclasses implement it."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, feature)`` for a section output ``x``."""
        feature = self.features(x)
        return self.fc(feature), feature


class BottleneckHead(ExitHead):
    """SCAN / self-distillation shallow classifier.

    1x1 conv to ``width`` ch, conv with kernel = stride = ``stride`` (brings the map to the deep exit's
    size), 1x1 conv to ``out_features`` ch, each + BN + ReLU; global average pool; Linear.
    """

    def __init__(self, in_channels: int, num_classes: int, out_features: int, stride: int, width: int = 128) -> None:
        super().__init__()
        layers = conv_bn_relu(in_channels, width, kernel=1, stride=1)
        if stride > 1:
            layers += conv_bn_relu(width, width, kernel=stride, stride=stride, padding=0)
        layers += conv_bn_relu(width, out_features, kernel=1, stride=1)
        self.bottleneck = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_features, num_classes)
        self.feature_width = out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck convolutions, then global average pooling, flattened."""
        return self.pool(self.bottleneck(x)).flatten(1)


class LinearHead(ExitHead):
    """Global average pool + Linear: the deep exit, or a plain shallow exit."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.feature_width = in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pooling of ``x``, flattened."""
        return self.pool(x).flatten(1)


class MSDNetHead(ExitHead):
    """MSDNet's classifier: two 3x3 stride-2 conv-BN-ReLU (``width`` channels; ``None`` = keep the input's),
    average pool, Linear. He-initialised like the backbone."""

    def __init__(self, in_channels: int, num_classes: int, width: int | None = 128) -> None:
        super().__init__()
        width = width or in_channels
        self.convs = nn.Sequential(*conv_bn_relu(in_channels, width, kernel=3, stride=2, padding=1),
                                   *conv_bn_relu(width, width, kernel=3, stride=2, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        self.feature_width = width
        he_init(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The two stride-2 conv-BN-ReLU, then global average pooling, flattened (MSDNet's classifier, Huang et al.,
        ICLR 2018)."""
        return self.pool(self.convs(x)).flatten(1)


class SDNHead(ExitHead):
    """SDN's internal classifier (Kaya et al., ICML 2019, Sec. 4.1): feature reduction by mixed max and average pooling
    (Lee et al., AISTATS 2016) with one learned mixing weight, to a fixed 4x4 map, then one Linear layer on the
    flattened map.

    SDN pools with kernel = stride = H // 4 (a 4x4 map when H is a multiple of 4) and leaves maps under 4x4 as they
    are; adaptive pooling to 4x4 is the same for multiples of 4 and gives every head the same width otherwise. The
    mixing weight starts at 0.5 (the authors' code draws it
    at random) and is not constrained, as there.
    """

    SIZE = 4

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.fc = nn.Linear(in_channels * self.SIZE * self.SIZE, num_classes)
        self.feature_width = in_channels * self.SIZE * self.SIZE

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``alpha * maxpool + (1 - alpha) * avgpool`` to 4x4, flattened."""
        size = (self.SIZE, self.SIZE)
        mixed = self.alpha * F.adaptive_max_pool2d(x, size) + (1 - self.alpha) * F.adaptive_avg_pool2d(x, size)
        return mixed.flatten(1)
