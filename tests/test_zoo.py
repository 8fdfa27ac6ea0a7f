"""Backbone zoo: every model x {cifar100, imagenet} composes and runs; reference sizes; user backbones."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from scan_lightning.cli.train import train
from scan_lightning.cost import measure_costs
from scan_lightning.cost.macs import count_params
from scan_lightning.models import MultiExitNetwork, build_backbone, list_backbones
from scan_lightning.utils.config import build
from tests.helpers.compose import options
from tests.helpers.images import make_image_folder

EXITS = {"wrn20_8": 3, "wrn44_8": 3, "resnet56": 7, "wrn32_4": 7, "mobilenet": 6, "torchvision": 3, "msdnet_cifar_anytime": 7, "msdnet_cifar_budgeted": 5,
         "msdnet_cifar_imta": 7,
         "msdnet_imagenet": 5}
# heavy at 224 px or very deep: run with `make test-slow`; the default run keeps one of each family
LIGHT = {("resnet18", "cifar100"), ("resnet50", "cifar100"), ("vgg16_bn", "cifar100"), ("wrn20_8", "cifar100"),
         ("torchvision", "cifar100"), ("resnet18", "imagenet"), ("torchvision", "imagenet"),
         ("msdnet_cifar_anytime", "cifar100"), ("msdnet_imagenet", "imagenet")}
PAIRS = [pytest.param(m, d, marks=() if (m, d) in LIGHT else pytest.mark.slow)
         for m in options("model") for d in ("cifar100", "imagenet")]


@pytest.mark.parametrize("model,data", PAIRS)
def test_every_model_on_both_datasets(make_cfg, model, data):
    cfg = make_cfg(f"model={model}", f"data={data}")
    net = build(cfg.model).eval()
    size = cfg.data.image_size
    with torch.no_grad():
        out = net(torch.randn(1, 3, size, size))
    assert len(out.logits) == net.num_exits == EXITS.get(model, 4)
    assert all(lg.shape == (1, cfg.data.num_classes) for lg in out.logits)


# the smallest arguments that build each registered backbone (names as list_backbones() gives them)
SMALL = {"msdnet": {"num_blocks": 2, "channels": 4, "growth": 2}, "vgg16_bn": {"width": 0.125},
         "vgg19_bn": {"width": 0.125}, "wrn20_8": {"width": 0.125}, "wrn44_8": {"width": 0.125},
         "torchvision_cut": {"model": "resnet18", "cut_points": ["layer2", "layer4"], "image_size": 32}}


@pytest.mark.parametrize("name", list_backbones())
def test_every_registered_backbone_reports_what_its_sections_return(name):
    """Each builder in the registry (timm-style: parametrised over the registry's own list): the stage metadata
    (channels, total stride) it declares is what its sections really return on a 32x32 image."""
    backbone = build_backbone(name, **SMALL.get(name, {"width": 0.125})).eval()
    with torch.no_grad():
        outs = backbone(torch.randn(2, 3, 32, 32))
    assert len(outs) == len(backbone.feature_info) >= 2
    for out, info in zip(outs, backbone.feature_info):
        out = out[-1] if isinstance(out, (list, tuple)) else out   # MSDNet: the coarsest map feeds the exit
        assert out.shape[1] == info.channels, (name, info)
        assert 32 // out.shape[-1] == min(info.reduction, 32), (name, info)


def plain_torchvision_macs(model: torch.nn.Module) -> int:
    with FlopCounterMode(display=False) as c, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    return c.get_total_flops() // 2


@pytest.mark.parametrize("name,params_m,gmacs", [("resnet18", 11.69, 1.82), ("resnet50", 25.56, 4.09)])
def test_plain_backbone_matches_torchvision(name, params_m, gmacs):
    net = MultiExitNetwork(build_backbone(name, stem="imagenet"), 1000)
    costs = measure_costs(net, (3, 224, 224))
    plain_params = count_params(net.backbone) + count_params(net.heads[-1])
    reference = torchvision.models.get_model(name, weights=None)
    assert plain_params == count_params(reference)
    assert costs.plain_macs == plain_torchvision_macs(reference)
    assert plain_params / 1e6 == pytest.approx(params_m, abs=0.01)
    assert costs.plain_macs / 1e9 == pytest.approx(gmacs, abs=0.01)


def test_vgg_and_wrn_geometry():
    vgg = build_backbone("vgg16_bn")
    assert [s.reduction for s in vgg.feature_info] == [4, 8, 16, 32]
    assert [s.channels for s in vgg.feature_info] == [128, 256, 512, 512]
    assert count_params(vgg) == sum(p.numel() for p in torchvision.models.vgg16_bn(weights=None).features.parameters())
    wrn = build_backbone("wrn20_8")
    assert [(s.channels, s.reduction) for s in wrn.feature_info] == [(128, 1), (256, 2), (512, 4)]
    assert sum(len(s[-1]) if i == 0 else len(s) for i, s in enumerate(wrn.sections)) == 9  # 3 x 3 blocks


@pytest.mark.parametrize("model,cuts", [
    ("mobilenet_v3_small", ["features.3", "features.8", "features.12"]),
    ("resnet34", ["layer1", "layer2", "layer3", "layer4"]),
])
def test_user_backbone_trains_in_a_fast_dev_run(make_cfg, model, cuts):
    cfg = make_cfg("model=torchvision", f"model.backbone.model={model}",
                   f"model.backbone.cut_points=[{','.join(cuts)}]", "data=synthetic", "data.image_size=64",
                   "trainer.fast_dev_run=true", "timing.enabled=false", "model.bottleneck_width=16")
    metrics = train(cfg)
    assert f"test/acc/exit{len(cuts)}" in metrics and f"test/acc/exit{len(cuts) + 1}" not in metrics


@pytest.mark.parametrize("cuts,needle", [
    (["layer1", "layer9"], "cut points ['layer9'] are not modules of the model"),
    (["layer3", "layer1"], "out of forward order"),
])
def test_bad_cut_points_list_the_valid_names(cuts, needle):
    with pytest.raises(ValueError) as err:
        build_backbone("torchvision_cut", model="resnet34", cut_points=cuts, image_size=64)
    assert needle in str(err.value) and "layer2.0" in str(err.value) and "avgpool" in str(err.value)


def test_unknown_torchvision_model_lists_models():
    with pytest.raises(ValueError, match="no classification model 'resnet7'.*resnet18"):
        build_backbone("torchvision_cut", model="resnet7", cut_points=["layer1"])


def test_imagenet_imagefolder_fast_dev_run(make_cfg, tmp_path):
    make_image_folder(tmp_path / "imagenet")
    cfg = make_cfg("model=resnet101", "data=imagenet", f"data.root={tmp_path / 'imagenet'}")
    assert cfg.model.backbone.stem == "imagenet" and cfg.data.val_size == 50000 and cfg.data.image_size == 224
    cfg = make_cfg("model=resnet18", "model.backbone.width=0.125", "model.bottleneck_width=8", "data=imagenet",
                   f"data.root={tmp_path / 'imagenet'}", "data.num_classes=3", "data.val_size=3",
                   "data.image_size=32", "data.resize_size=36", "data.batch_size=4", "data.eval_batch_size=4",
                   "data.num_workers=0", "data.pin_memory=false", "trainer.fast_dev_run=true",
                   "timing.enabled=false")
    metrics = train(cfg)
    assert "val/acc/exit4" in metrics and "test/acc/ensemble" in metrics


def test_imagenet_folder_missing(make_cfg, tmp_path):
    dm = build(make_cfg("data=imagenet", f"data.root={tmp_path / 'nowhere'}").data)
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        dm.prepare_data()


def test_exit_positions_are_configurable(make_cfg):
    cfg = make_cfg("model=resnet18", "model.exit_after=[2,3]", "model.backbone.width=0.125", "data=synthetic")
    net = build(cfg.model)
    assert net.num_exits == 3 and [s.name for s in net.backbone.feature_info] == ["layer2", "layer3", "layer4"]
    out = net(torch.randn(2, 3, 32, 32))
    assert len(out.logits) == 3
    with pytest.raises(ValueError, match=r"sections \[7\] do not exist; this backbone has sections 1..4"):
        MultiExitNetwork(build_backbone("resnet18", width=0.125), 10, exit_after=[1, 7])
