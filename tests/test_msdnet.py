"""MSDNet (models/msdnet.py): reference MACs per exit, ImageNet geometry, He init, real early exit and BatchNorm
folding on multi-scale sections, fast_dev_runs on CIFAR-100 and ImageNet layouts, the feature hint refused on
unequal exit widths, describe in the op-counter convention."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision import datasets

from scan_lightning.cli.train import train
from scan_lightning.cost import measure_costs
from scan_lightning.models import MultiExitNetwork, build_backbone
from scan_lightning.runtime.forms import fold_batchnorm
from scan_lightning.utils.config import build
from tests.helpers.images import make_image_folder, write_cifar100
from tests.helpers.networks import small_msdnet
from tests.helpers.references import assert_predictor_matches_median_thresholds

# cumulative M ops per exit on CIFAR-100 as the MSDNet/IMTA public op counter reports them (conv + linear MACs
# plus ReLU/pool element counts, every earlier exit included); msdnet_cifar_imta's seven are IMTA Table 1's
REFERENCE = {
    "msdnet_cifar_anytime": [15.14, 25.51, 37.10, 46.33, 57.34, 66.96, 75.94],
    "msdnet_cifar_budgeted": [6.86, 14.35, 27.54, 41.71, 58.48],
    "msdnet_cifar_imta": [6.86, 14.35, 27.29, 48.45, 76.43, 108.9, 137.3],   # IMTA Table 1, as printed
}


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_per_exit_macs_match_the_reference_within_1_percent(make_cfg, model):
    cfg = make_cfg(f"model={model}", "data=cifar100")
    net = build(cfg.model)
    costs = measure_costs(net, (3, 32, 32), elementwise=True)
    measured = [e.cumulative_macs / 1e6 for e in costs.exits]
    assert len(measured) == len(REFERENCE[model])
    for got, want in zip(measured, REFERENCE[model]):
        assert got == pytest.approx(want, rel=0.01)
    # plain conv/linear MACs (our default unit) are below the op-counter figures, which add ReLU/pool counts
    plain = measure_costs(net, (3, 32, 32))
    assert all(p.cumulative_macs < e.cumulative_macs for p, e in zip(plain.exits, costs.exits))


def test_imagenet_msdnet_geometry(make_cfg):
    net = build(make_cfg("model=msdnet_imagenet", "data=imagenet").model).eval()
    assert net.num_exits == 5 and [s.reduction for s in net.backbone.feature_info] == [32] * 5
    with torch.no_grad():
        maps = net.sections[0](torch.zeros(1, 3, 224, 224))
    assert [m.shape[-1] for m in maps] == [56, 28, 14, 7]          # 4 scales
    assert net.heads[0].fc.in_features == net.backbone.feature_info[0].channels  # classifier keeps its width


def test_he_initialisation_is_applied():
    net = MultiExitNetwork(build_backbone("msdnet"), 100, head="msdnet", deep_head="msdnet", attention=False)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 2000]
    assert len(convs) > 50
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.15)
    # PyTorch's default (kaiming_uniform, a=sqrt(5)) would give std 1/sqrt(3 fan_in): clearly different here
    big = max(convs, key=lambda c: c.weight.numel())
    fan_in = big.in_channels * big.kernel_size[0] * big.kernel_size[1]
    assert abs(big.weight.std().item() - 1 / math.sqrt(3 * fan_in)) > 0.2 / math.sqrt(3 * fan_in)


@pytest.mark.parametrize("isc", [None, "identity"])
def test_real_early_exit_on_multi_scale_sections(isc):
    torch.manual_seed(1)
    net = small_msdnet(isc=isc).eval()
    x = torch.randn(48, 3, 16, 16) * 3
    assert_predictor_matches_median_thresholds(net, x)
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.backbone.modules())
    with torch.no_grad():
        for a, b in zip(net(x).logits, folded(x).logits):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_msdnet_cifar100_fast_dev_run(make_cfg, tmp_path, monkeypatch):
    write_cifar100(tmp_path / "data")
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda *args: True)
    cfg = make_cfg("model=msdnet_cifar_anytime", "data=cifar100", "data.val_size=8", "data.batch_size=4",
                   "data.eval_batch_size=4", "data.num_workers=0", "data.pin_memory=false",
                   "trainer.fast_dev_run=true", "timing.enabled=false", "model.gradient_equilibrium=true",
                   "loss=dsn")
    metrics = train(cfg)
    assert "val/acc/exit7" in metrics and "test/acc/ensemble" in metrics


def test_msdnet_imagenet_fast_dev_run(make_cfg, tmp_path):
    make_image_folder(tmp_path / "imagenet")
    cfg = make_cfg("model=msdnet_imagenet", "data=imagenet", f"data.root={tmp_path / 'imagenet'}",
                   "data.num_classes=3", "data.val_size=3", "data.image_size=64", "data.resize_size=72",
                   "data.batch_size=2", "data.eval_batch_size=2", "data.num_workers=0", "data.pin_memory=false",
                   "trainer.fast_dev_run=true", "timing.enabled=false", "model.isc=identity", "loss=dsn")
    metrics = train(cfg)
    assert "val/acc/exit5" in metrics and "test/acc/ensemble" in metrics


def test_feature_hint_on_unequal_exit_widths_is_rejected_before_training(make_cfg, tmp_path):
    from scan_lightning.cli.train import ConfigError

    cfg = make_cfg("model=msdnet_imagenet", "data=synthetic", "loss=scan")  # exit widths 384 ... 560
    with pytest.raises(ConfigError, match="loss term 'hint': the feature hint needs equal feature widths; exit 0"):
        train(cfg)
    assert not (tmp_path / "out").exists()


def test_describe_counts_like_the_public_op_counter(make_cfg, caplog):
    from omegaconf import open_dict

    from scan_lightning.cli.describe import describe

    cfg = make_cfg("model=msdnet_cifar_budgeted", "data=cifar100")
    with open_dict(cfg):
        cfg.count_elementwise = True
    with caplog.at_level("INFO", logger="scan_lightning"):
        costs = describe(cfg)
    assert costs.exits[0].cumulative_macs / 1e6 == pytest.approx(6.86, rel=0.01)
    assert "MSDNet op-counter convention" in caplog.text
