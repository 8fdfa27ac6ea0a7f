"""Pretrained torchvision backbones from the local hub cache, and init_from with plain state_dict files."""
from __future__ import annotations

import pytest
import torch
import torchvision

from scan_lightning.cli.train import train
from scan_lightning.models.pretrained import weights_file
from scan_lightning.training.builders import build_module
from scan_lightning.training.module import load_module
from scan_lightning.utils.config import ConfigError

MODEL = "mobilenet_v3_small"
CUTS = "[features.3,features.8,features.12]"
TV = ("model=torchvision", f"model.backbone.model={MODEL}", f"model.backbone.cut_points={CUTS}", "data=synthetic",
      "data.image_size=32", "model.bottleneck_width=8")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME: the hub cache is ``tmp_path/torch/hub/checkpoints``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def fake_weights(seed: int = 1) -> tuple[dict[str, torch.Tensor], object]:
    """A freshly built (random) torchvision model's state_dict, saved under the file name of IMAGENET1K_V1."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(MODEL).state_dict()
    weights = torchvision.models.get_model_weights(MODEL)["IMAGENET1K_V1"]
    path = weights_file(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state, weights


def test_pretrained_weights_load_from_the_hub_cache(make_cfg, torch_home, tmp_path):
    state, weights = fake_weights()
    assert weights_file(weights) == torch_home / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    module = build_module(make_cfg(*TV, "model.backbone.weights=IMAGENET1K_V1"))
    net = dict(module.net.backbone.named_parameters())   # cut_model opens nn.Sequential containers: one leaf each
    first_conv = net["sections.0.0.weight"]
    assert torch.equal(first_conv, state["features.0.0.weight"])
    assert torch.equal(net["sections.2.3.weight"], state["features.12.0.weight"])
    # a checkpoint of it loads without the pretrained file (its own weights replace them)
    path = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in module.net.state_dict().items()},
                "hyper_parameters": dict(module.hparams)}, path)
    weights_file(weights).unlink()
    assert torch.equal(load_module(path).net.backbone.sections[0][0].weight, first_conv)


def test_grey_images_keep_pretrained_first_conv_summed_over_colours(make_cfg, torch_home):
    state, _ = fake_weights()
    module = build_module(make_cfg(*TV, "data.in_channels=1", "model.backbone.weights=DEFAULT"))
    conv = module.net.backbone.sections[0][0]
    assert conv.in_channels == 1
    assert torch.allclose(conv.weight, state["features.0.0.weight"].sum(1, keepdim=True))


def test_missing_weights_file_says_which_file_from_where_to_where(make_cfg, torch_home):
    with pytest.raises(ConfigError) as err:
        train(make_cfg(*TV, "model.backbone.weights=IMAGENET1K_V1", "trainer.fast_dev_run=true"))
    msg = str(err.value)
    expected = torch_home / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    assert "download https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth" in msg
    assert f"put it at {expected}" in msg and "Nothing is downloaded" in msg
    assert not expected.exists()


def test_unknown_weights_name_lists_the_valid_ones(make_cfg, torch_home):
    with pytest.raises(ConfigError, match=r"'IMAGENET9K' is not a weights name of mobilenet_v3_small; choose one of "
                                          r"\['IMAGENET1K_V1'\] or DEFAULT"):
        train(make_cfg(*TV, "model.backbone.weights=IMAGENET9K"))


FAST = ("trainer.fast_dev_run=true", "timing.enabled=false", "~callbacks.threshold_search", "test=false",
        "data.batch_size=4", "data.eval_batch_size=4", "data.train_samples=16", "data.val_size=4")


def test_init_from_a_plain_torchvision_backbone_state_dict(make_cfg, tmp_path):
    torch.manual_seed(2)
    plain = torchvision.models.get_model(MODEL)
    path = tmp_path / "backbone.pt"
    torch.save(plain.state_dict(), path)
    cfg = make_cfg(*TV, f"init_from={path}", "model.exit_after=[2,3]")   # regrouped sections: names still found
    module = build_module(cfg)
    net = dict(module.net.backbone.named_parameters())
    assert torch.equal(net["sections.0.0.0.weight"], plain.state_dict()["features.0.0.weight"])   # sections 1+2
    assert torch.equal(net["sections.1.3.weight"], plain.state_dict()["features.12.0.weight"])


def test_init_from_a_multi_exit_state_dict_and_from_a_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg(*TV)
    source = build_module(cfg).net
    path = tmp_path / "net.pt"
    torch.save(source.state_dict(), path)
    loaded = build_module(make_cfg(*TV, f"init_from={path}")).net
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # a Lightning checkpoint of a run
    run = make_cfg(*TV, *FAST)
    train(run)
    ckpt = tmp_path / "out" / "checkpoints" / "final.ckpt"
    trained = load_module(ckpt).net
    again = build_module(make_cfg(*TV, f"init_from={ckpt}")).net
    assert all(torch.equal(again.state_dict()[k], v) for k, v in trained.state_dict().items())


def test_init_from_a_state_dict_of_another_network_is_refused(make_cfg, tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torchvision.models.get_model("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match="none of its tensors fits this network"):
        build_module(make_cfg(*TV, f"init_from={path}"))
    # the default model is no torchvision backbone: a plain backbone's file cannot be placed
    with pytest.raises(ValueError, match="fits model=torchvision backbones only"):
        build_module(make_cfg("data=synthetic", f"init_from={path}"))
