"""Multi-exit ResNet shapes, feature widths, SCAN head geometry, attention behaviour, head switches."""
from __future__ import annotations

import pytest
import torch

from scan_lightning.models import AttentionModule, BottleneckHead, LinearHead, MultiExitNetwork, build_backbone


def net(stem="cifar", width=0.25, **kw) -> MultiExitNetwork:
    return MultiExitNetwork(build_backbone("resnet18", stem=stem, width=width, in_channels=kw.pop("in_channels", 3)),
                            num_classes=7, **kw).eval()


@pytest.mark.parametrize("stem,size,reductions", [("cifar", 32, [1, 2, 4, 8]), ("imagenet", 64, [4, 8, 16, 32])])
def test_shapes_and_feature_widths(stem, size, reductions):
    m = net(stem)
    info = m.backbone.feature_info
    assert [s.reduction for s in info] == reductions
    assert [s.channels for s in info] == [16, 32, 64, 128]
    feats = m.backbone(torch.randn(2, 3, size, size))
    assert [f.shape[-1] for f in feats] == [size // r for r in reductions]
    out = m(torch.randn(2, 3, size, size))
    assert [o.shape for o in out.logits] == [torch.Size([2, 7])] * 4
    # every SCAN bottleneck exit produces a feature as wide as the deep exit's (needed by the hint loss)
    assert [f.shape for f in out.features] == [torch.Size([2, 128])] * 4
    assert out.ensemble.shape == (2, 7)


def test_ensemble_is_the_mean_of_the_exits_logits():
    """SCAN's ensemble (Algorithm 1's fallback), on numbers worked out by hand."""
    from scan_lightning.models.outputs import ExitOutputs

    out = ExitOutputs([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]), torch.tensor([[2.0, 0.0]])], [])
    assert out.ensemble.tolist() == [[1.0, 1.0]]


def test_scan_head_geometry_full_width():
    m = net("cifar", width=1.0)
    strides = [h.bottleneck[3].stride[0] for h in m.heads[:3]]
    assert strides == [8, 4, 2]
    assert [h.fc.in_features for h in m.heads] == [512] * 4
    assert all(h.bottleneck[0].out_channels == 128 for h in m.heads[:3])


def test_one_channel_input():
    m = net(in_channels=1)
    out = m(torch.randn(3, 1, 28, 28))
    assert out.logits[0].shape == (3, 7)


def test_attention_mask_in_open_unit_interval():
    att = AttentionModule(8).eval()
    x = torch.randn(2, 8, 7, 7) * 10
    mask = att.attention_map(x)
    assert mask.shape == x.shape
    assert (mask > 0).all() and (mask < 1).all()
    torch.testing.assert_close(att(x), mask * x)


def test_attention_applies_to_the_branch_only():
    m = net()
    x = torch.randn(2, 3, 32, 32)
    base = m(x)
    # the trunk and the deep exit do not see the masks: changing the attention modules changes the
    # shallow exits but leaves the deep exit untouched
    with torch.no_grad():
        for a in m.attentions:
            for p in a.parameters():
                p.add_(torch.randn_like(p))
    changed = m(x)
    torch.testing.assert_close(changed.logits[-1], base.logits[-1])
    assert not torch.allclose(changed.logits[0], base.logits[0])


def test_head_switches_per_exit():
    m = net(head=["linear", "bottleneck", "bottleneck"], attention=[False, True, False])
    assert isinstance(m.heads[0], LinearHead) and isinstance(m.heads[1], BottleneckHead)
    assert isinstance(m.attentions[0], torch.nn.Identity) and isinstance(m.attentions[1], AttentionModule)
    assert isinstance(m.heads[3], LinearHead)
    out = m(torch.randn(2, 3, 32, 32))
    assert out.features[0].shape == (2, 16)


@pytest.mark.parametrize("kw,needle", [
    ({"head": "mlp"}, "model.head='mlp'"),
    ({"attention": [True, False]}, "has 2 entries but the backbone has 3"),
    ({"num_classes": 1}, "num_classes=1"),
])
def test_bad_model_settings(kw, needle):
    kwargs = {"num_classes": 7, **kw}
    with pytest.raises(ValueError, match=None) as err:
        MultiExitNetwork(build_backbone("resnet18", width=0.25), **kwargs)
    assert needle in str(err.value)


def test_unknown_backbone_lists_registered_ones():
    with pytest.raises(ValueError, match="available: .*resnet18"):
        build_backbone("resnet7")


def test_bad_stem():
    with pytest.raises(ValueError, match="stem='vit'"):
        build_backbone("resnet18", stem="vit")
