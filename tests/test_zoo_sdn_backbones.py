"""The SDN / ZTW backbones (ResNet-56, WRN-32-4, MobileNet; Kaya et al., ICML 2019; Wolczyk et al., NeurIPS 2021):
sections, declared shapes, their configs, and ResNet-56's published size."""
from __future__ import annotations

import pytest
import torch

from scan_lightning.cost.macs import count_params
from scan_lightning.models import MultiExitNetwork, build_backbone
from scan_lightning.models.wide_resnet import build_wide_resnet
from scan_lightning.utils.config import build

# builder -> (sections, deep channels, deep reduction) at width 1 on a 32x32 image (cifar stem)
GEOMETRY = {"resnet56": (27, 64, 4), "wrn32_4": (15, 256, 4), "mobilenet": (13, 1024, 16)}
# config -> exits: SDN's internal classifiers + the deep exit
CONFIG_EXITS = {"resnet56": 7, "wrn32_4": 7, "mobilenet": 6}


@pytest.mark.parametrize("name", sorted(GEOMETRY))
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_sections_and_feature_info_match_the_real_outputs(name, width):
    sections, channels, reduction = GEOMETRY[name]
    backbone = build_backbone(name, width=width).eval()
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 32, 32))
    assert backbone.num_sections == len(outs) == sections
    for out, info in zip(outs, backbone.feature_info):
        assert out.shape[1] == info.channels, info
        assert out.shape[-2:] == (32 // info.reduction, 32 // info.reduction), info
    deep = backbone.feature_info[-1]
    assert deep.reduction == reduction
    assert deep.channels == (channels if width == 1.0 else round(channels * width))


def test_block_sections_cut_the_stages_where_sdn_places_its_classifiers():
    net = build_backbone("resnet56")
    assert [s.name for s in net.feature_info[:2]] == ["stage1.block1", "stage1.block2"]
    assert [(s.channels, s.reduction) for s in net.feature_info[8:10]] == [(16, 1), (32, 2)]
    assert sum(len(s[-1]) if i == 0 else len(s) for i, s in enumerate(net.sections)) == 27   # 3 x 9 blocks
    sdn = net.regroup([4, 8, 12, 16, 20, 24])
    assert [s.name for s in sdn.feature_info] == ["stage1.block4", "stage1.block8", "stage2.block3", "stage2.block7",
                                                  "stage3.block2", "stage3.block6", "stage3.block9"]


def test_sections_per_stage_keeps_every_block_and_the_stage_default():
    per_stage = build_wide_resnet(56, 1)
    assert [s.name for s in per_stage.feature_info] == ["stage1", "stage2", "stage3"]
    chunked = build_wide_resnet(56, 1, sections_per_stage=2)        # 9 blocks -> 5 + 4
    assert [s.name for s in chunked.feature_info][:2] == ["stage1.block5", "stage1.block9"]
    assert count_params(per_stage) == count_params(chunked) == count_params(build_backbone("resnet56"))
    x = torch.randn(1, 3, 32, 32)
    torch.manual_seed(0)
    a = build_backbone("resnet56").eval()
    torch.manual_seed(0)
    b = build_backbone("resnet56", sections_per_stage=1).eval()
    with torch.no_grad():
        assert torch.equal(a(x)[-1], b(x)[-1])   # same network, cut differently
    with pytest.raises(ValueError, match="sections_per_stage=10 must be 1..9"):
        build_wide_resnet(56, 1, sections_per_stage=10)


def test_wrn20_8_is_still_cut_per_stage():
    wrn = build_backbone("wrn20_8", width=0.125)
    assert [s.name for s in wrn.feature_info] == ["stage1", "stage2", "stage3"]


def test_resnet56_has_the_published_size():
    """~0.85 M parameters (He et al., 2016, Table 6); ours has 1x1 projection shortcuts (+2.8 k) at two stages."""
    assert count_params(build_backbone("resnet56")) / 1e6 == pytest.approx(0.85, abs=0.05)


def test_mobilenet_blocks_are_depthwise_separable():
    net = build_backbone("mobilenet")
    depthwise = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert [s.channels for s in net.feature_info] == [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    assert build_backbone("mobilenet", stem="imagenet").feature_info[-1].reduction == 32
    with pytest.raises(ValueError, match="is not a stem"):
        build_backbone("mobilenet", stem="tiny")


@pytest.mark.parametrize("model", sorted(CONFIG_EXITS))
def test_config_builds_a_network_with_one_logits_per_exit(make_cfg, model):
    cfg = make_cfg(f"model={model}", "data=cifar100")
    net = build(cfg.model).eval()
    assert isinstance(net, MultiExitNetwork)
    assert not any(isinstance(a, torch.nn.Module) and count_params(a) for a in net.attentions)   # no attention
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert len(out.logits) == net.num_exits == CONFIG_EXITS[model]
    assert all(lg.shape == (2, 100) for lg in out.logits)
