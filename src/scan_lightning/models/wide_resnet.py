"""ResNets of the CIFAR family (depth 6n + 2, three stages 16k-32k-64k), cut per stage or inside stages.

Built from torchvision's BasicBlock (post-activation). SCAN's WRN20-8 / WRN44-8 are cut per stage: three
sections, three exits (the paper has no 4/4 exit for them). The SDN / ZTW networks (ResNet-56, WRN-32-4; Kaya et
al., ICML 2019; Wolczyk et al., NeurIPS 2021) are cut after every block, so ``model.exit_after`` can put their
internal classifiers inside the stages.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock

from scan_lightning.models.backbone import SectionedBackbone, SectionInfo
from scan_lightning.models.layers import Stem, he_init, make_stem, resnet_stage
from scan_lightning.models.registry import register_backbone


def _chunks(blocks: int, parts: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges cutting ``blocks`` blocks into ``parts`` runs whose lengths differ by at most one
    (the longer ones first)."""
    size, extra = divmod(blocks, parts)
    ranges, start = [], 0
    for j in range(parts):
        end = start + size + (j < extra)
        ranges.append((start, end))
        start = end
    return ranges


def build_wide_resnet(depth: int, widen: int, *, stem: Stem = "cifar", in_channels: int = 3, width: float = 1.0,
                      sections_per_stage: int = 1) -> SectionedBackbone:
    """A CIFAR (wide) ResNet WRN-``depth``-``widen`` (He et al., CVPR 2016; Zagoruyko & Komodakis, BMVC 2016): three
    stages of 16, 32 and 64 times ``widen`` channels (scaled by ``width``), He-initialised.

    Each stage of ``n = (depth - 2) / 6`` blocks is cut into ``sections_per_stage`` sections of (nearly) equal block
    counts: 1 = one section per stage (named ``stage<i>``), ``n`` = one per block (named ``stage<i>.block<j>``, ``j``
    the stage's last block in it, 1-based). The stem joins the first section.
    """
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"depth={depth} must be 6n + 2 (e.g. 20, 44, 56)")
    if widen < 1 or width <= 0:
        raise ValueError(f"widen={widen} must be >= 1 and width={width} > 0")
    n = (depth - 2) // 6
    if not 1 <= sections_per_stage <= n:
        raise ValueError(f"sections_per_stage={sections_per_stage} must be 1..{n} (the blocks per stage of "
                         f"WRN-{depth}-{widen})")
    base = max(1, round(16 * width))
    stem_module, reduction = make_stem(stem, in_channels, base)
    sections: list[nn.Module] = []
    info: list[SectionInfo] = []
    inplanes = base
    for i, planes in enumerate(base * widen * m for m in (1, 2, 4)):
        stride = 1 if i == 0 else 2
        stage = resnet_stage(BasicBlock, inplanes, planes, n, stride)
        inplanes, reduction = planes, reduction * stride
        if sections_per_stage == 1:
            parts, names = [stage], [f"stage{i + 1}"]
        else:
            ranges = _chunks(n, sections_per_stage)
            parts = [stage[a:b] for a, b in ranges]
            names = [f"stage{i + 1}.block{b}" for _, b in ranges]
        for j, (part, name) in enumerate(zip(parts, names)):
            sections.append(nn.Sequential(stem_module, part) if i == 0 and j == 0 else part)
            info.append(SectionInfo(name, planes, reduction))
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


@register_backbone
def resnet56(*, stem: Stem = "cifar", in_channels: int = 3, width: float = 1.0,
             sections_per_stage: int = 9) -> SectionedBackbone:
    """CIFAR ResNet-56 (He et al., CVPR 2016, Sec. 4.2), as in SDN (Kaya et al., ICML 2019) and ZTW (Wolczyk et
    al., NeurIPS 2021): a 3x3 stem of 16 channels, three stages of 9 BasicBlocks with 16-32-64 channels, ~0.85 M
    parameters. One section per block by default (27 sections), so exits can sit inside the stages.

    The two stage transitions use torchvision's 1x1-conv + BN projection shortcut (He et al.'s option B, +2.8 k
    parameters), where the paper's CIFAR ResNet uses parameter-free zero-padding (option A).
    """
    return build_wide_resnet(56, 1, stem=stem, in_channels=in_channels, width=width,
                             sections_per_stage=sections_per_stage)


@register_backbone
def wrn32_4(*, stem: Stem = "cifar", in_channels: int = 3, width: float = 1.0,
            sections_per_stage: int = 5) -> SectionedBackbone:
    """WRN-32-4 as in SDN (Kaya et al., ICML 2019) and ZTW (Wolczyk et al., NeurIPS 2021): three stages of 5 blocks,
    64-128-256 channels. One section per block by default (15 sections), so SDN's internal classifiers (after
    blocks 3, 5, 7, 9, 11, 13) can be placed with ``model.exit_after``.

    Built from torchvision's post-activation BasicBlock with projection shortcuts; SDN's WRN uses pre-activation
    blocks (Zagoruyko & Komodakis, BMVC 2016) with dropout 0.3 between the two convs.
    """
    return build_wide_resnet(32, 4, stem=stem, in_channels=in_channels, width=width,
                             sections_per_stage=sections_per_stage)
