"""MobileNet (v1; Howard et al., 2017) in the CIFAR form SDN and ZTW use (Kaya et al., ICML 2019; Wolczyk et al.,
NeurIPS 2021): a 3x3 stem and 13 depthwise-separable blocks, one section per block.

``stem="cifar"`` is SDN's 3x3 stride-1 stem (32x32 -> 2x2 after the last block); ``"small"`` and ``"imagenet"`` are
the paper's 3x3 stride-2 stem (224 -> 7). ``width`` scales every channel count (the paper's width multiplier).
"""
from __future__ import annotations

from torch import nn

from scan_lightning.models.backbone import SectionedBackbone, SectionInfo
from scan_lightning.models.layers import STEMS, Stem, conv_bn_relu, he_init
from scan_lightning.models.registry import register_backbone

# (output channels, stride) of the 13 depthwise-separable blocks (Howard et al., Table 1; SDN's ``cfg``)
MOBILENET_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 conv (stride ``stride``) + BN + ReLU, then pointwise 1x1 conv + BN + ReLU (Howard et al.,
    Fig. 3)."""
    return nn.Sequential(*conv_bn_relu(cin, cin, 3, stride, groups=cin), *conv_bn_relu(cin, cout, 1))


@register_backbone
def mobilenet(*, stem: Stem = "cifar", in_channels: int = 3, width: float = 1.0) -> SectionedBackbone:
    """MobileNet v1 (Howard et al., 2017) as in SDN (Kaya et al., ICML 2019): a 3x3 conv stem of 32 channels, then
    13 depthwise-separable blocks of 64, 128/2, 128, 256/2, 256, 512/2, 512 x5, 1024/2, 1024 channels (/2: stride 2),
    one section per block (the stem joins the first); channels scaled by ``width``, He-initialised."""
    if stem not in STEMS:
        raise ValueError(f"stem={stem!r} is not a stem; choose one of {STEMS}")
    if width <= 0:
        raise ValueError(f"width={width} must be > 0")
    reduction = 1 if stem == "cifar" else 2
    channels = max(1, round(32 * width))
    stem_module = nn.Sequential(*conv_bn_relu(in_channels, channels, 3, reduction))
    sections: list[nn.Module] = []
    info: list[SectionInfo] = []
    for k, (cout, stride) in enumerate(MOBILENET_BLOCKS):
        out = max(1, round(cout * width))
        block = depthwise_separable(channels, out, stride)
        channels, reduction = out, reduction * stride
        sections.append(nn.Sequential(stem_module, block) if k == 0 else block)
        info.append(SectionInfo(f"block{k + 1}", channels, reduction))
    backbone = SectionedBackbone(nn.ModuleList(sections), info)
    he_init(backbone)
    return backbone
