"""IMTA's training techniques: Gradient Equilibrium (IMTA Eq. 5: each section receives the mean of the gradients
of the exits behind it; on ResNet and on MSDNet), Inline Subnetwork Collaboration (ISC: identity or linear, detached
or not; real early exit with it) and the One-For-All distillation term (against the KL written out by hand)."""
from __future__ import annotations

import pytest
import torch

from scan_lightning.models import MultiExitNetwork, build_backbone
from scan_lightning.models.gradient import equilibrium_scales, scale_gradient


def test_scale_gradient_is_identity_forward_and_scales_backward():
    x = torch.randn(3, requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 0.25))


def test_equilibrium_scales():
    assert [equilibrium_scales(i, 4) for i in range(4)] == [(1 / 4, 3 / 4), (1 / 3, 2 / 3), (1 / 2, 1 / 2), (1.0, 0.0)]


def section_output_grads(net: MultiExitNetwork, x: torch.Tensor, exits: list[int]) -> list[torch.Tensor]:
    """Gradient of sum_j loss_j (j in ``exits``) w.r.t. every section's output (the coarsest map of a
    multi-scale section: the one its exit reads)."""
    outputs = []

    def keep(module, inputs, output) -> None:  # returning None keeps the output unchanged
        tap = output[-1] if isinstance(output, list) else output
        tap.retain_grad()
        outputs.append(tap)

    hooks = [s.register_forward_hook(keep) for s in net.sections]
    out = net(x)
    sum(out.logits[j].square().mean() for j in exits).backward()
    for h in hooks:
        h.remove()
    return [torch.zeros_like(o) if o.grad is None else o.grad.clone() for o in outputs]


def test_ge_gives_each_section_the_mean_of_its_exit_gradients():
    torch.manual_seed(0)
    net = MultiExitNetwork(build_backbone("resnet18", width=0.125), 5, bottleneck_width=8).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    k = net.num_exits
    per_exit = [section_output_grads(net, x, [j]) for j in range(k)]   # plain network, one exit at a time
    net.gradient_equilibrium = True
    with_ge = section_output_grads(net, x, list(range(k)))
    for i in range(k):
        behind = [per_exit[j][i] for j in range(i, k)]                   # exits whose gradient passes section i
        torch.testing.assert_close(with_ge[i], torch.stack(behind).mean(0), atol=1e-6, rtol=1e-6)
    net.gradient_equilibrium = False
    plain = section_output_grads(net, x, list(range(k)))
    torch.testing.assert_close(plain[0], torch.stack([per_exit[j][0] for j in range(k)]).sum(0), atol=1e-6, rtol=1e-6)


def test_ge_leaves_the_forward_and_head_gradients_unchanged():
    torch.manual_seed(0)
    net = MultiExitNetwork(build_backbone("resnet18", width=0.125), 5, bottleneck_width=8).eval()
    x = torch.randn(2, 3, 16, 16)
    a = net(x)
    a.logits[0].sum().backward()
    head_grad = net.heads[0].fc.weight.grad.clone()
    net.zero_grad()
    net.gradient_equilibrium = True
    b = net(x)
    for la, lb in zip(a.logits, b.logits):
        torch.testing.assert_close(la, lb)
    b.logits[0].sum().backward()
    torch.testing.assert_close(net.heads[0].fc.weight.grad, head_grad)


def test_one_for_all_matches_hand_computation():
    from scan_lightning.losses import OneForAll
    from scan_lightning.models.outputs import ExitOutputs
    from tests.helpers.references import hand_kl

    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(4, 6, generator=g, requires_grad=True) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 3])
    out = ExitOutputs(logits, [torch.zeros(4, 2)] * 3)
    term = OneForAll(exits="shallow", alpha=0.3, temperature=2.0)
    value = term(out, y)
    expected = 0.0
    for i in (0, 1):
        ce = torch.nn.functional.cross_entropy(logits[i].detach(), y).item()
        kl = hand_kl(logits[i].detach(), logits[2].detach(), 2.0) / 4.0  # hand_kl includes T^2; OFA does not
        expected += 0.3 * ce + 0.7 * kl
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert logits[2].grad is None  # the teacher is detached
    with pytest.raises(ValueError, match="alpha=1.5"):
        OneForAll(alpha=1.5)


def test_one_for_all_with_a_frozen_teacher_reads_the_teacher_argument():
    """The frozen network's logits reach the composer as their own argument, beside the student's outputs."""
    from scan_lightning.losses import LossComposer, OneForAll
    from scan_lightning.models.outputs import ExitOutputs
    from tests.helpers.references import hand_kl

    g = torch.Generator().manual_seed(4)
    logits = [torch.randn(4, 6, generator=g) for _ in range(3)]
    teacher = torch.randn(4, 6, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    composer = LossComposer({"ofa": OneForAll(exits=[0], alpha=0.3, temperature=2.0, teacher="frozen")})
    total, terms = composer(ExitOutputs(logits, [torch.zeros(4, 2)] * 3), y, teacher)
    expected = (0.3 * torch.nn.functional.cross_entropy(logits[0], y).item()
                + 0.7 * hand_kl(logits[0], teacher, 2.0) / 4.0)
    assert total.item() == pytest.approx(expected, rel=1e-5) and terms["ofa"].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="needs a frozen teacher network"):
        composer(ExitOutputs(logits, [torch.zeros(4, 2)] * 3), y)


@pytest.mark.parametrize("isc", ["identity", "linear"])
@pytest.mark.parametrize("detach", [True, False])
def test_isc_detached_blocks_gradient_to_the_previous_exit(isc, detach):
    torch.manual_seed(0)
    net = MultiExitNetwork(build_backbone("resnet18", width=0.125), 5, bottleneck_width=8, isc=isc,
                           isc_detach=detach)
    out = net(torch.randn(4, 3, 16, 16))
    out.logits[2].square().mean().backward()       # exit 3's loss only
    grads = [p.grad for p in [*net.heads[1].parameters(), *net.attentions[1].parameters()]]
    reached = any(g is not None and g.abs().sum() > 0 for g in grads)
    assert reached is (not detach)


def test_isc_predictor_equals_compute_all_then_choose():
    from tests.helpers.references import assert_predictor_matches_median_thresholds

    torch.manual_seed(1)
    net = MultiExitNetwork(build_backbone("resnet18", width=0.125), 3, bottleneck_width=8, isc="linear").eval()
    assert_predictor_matches_median_thresholds(net, torch.randn(32, 3, 32, 32) * 3)


def test_isc_identity_adds_the_previous_logits():
    torch.manual_seed(0)
    net = MultiExitNetwork(build_backbone("resnet18", width=0.125), 5, bottleneck_width=8, isc="identity").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = net(x)
        net.isc = None
        plain = net(x)
    torch.testing.assert_close(out.logits[1], plain.logits[1] + out.logits[0])
    torch.testing.assert_close(out.logits[0], plain.logits[0])
    with pytest.raises(ValueError, match="model.isc='mlp'"):
        MultiExitNetwork(build_backbone("resnet18", width=0.125), 5, isc="mlp")


def _section_param_grads(net, x, exits) -> list[torch.Tensor]:
    net.zero_grad()
    out = net(x)
    sum(out.logits[j].square().mean() for j in exits).backward()
    return [torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype)
                       for p in s.parameters()]) for s in net.sections]


def _small_msdnet(make_cfg, ge_scales: str):
    from scan_lightning.utils.config import build

    cfg = make_cfg("model=msdnet_cifar_anytime", "data=synthetic", f"model.ge_scales={ge_scales}",
                   "model.backbone.num_blocks=4", "model.backbone.step=1", "model.backbone.base=1",
                   "model.backbone.channels=4", "model.backbone.growth=2", "model.bottleneck_width=8")
    return build(cfg.model).double().eval()


def test_ge_on_msdnet_gives_each_block_the_mean_of_its_exits_parameter_gradients(make_cfg):
    """IMTA Eq. 5 on a multi-scale network, checked on the blocks' parameter gradients against one backward
    pass per exit without GE: block i gets the mean of the gradients of exits i..k (every scale rescaled)."""
    torch.manual_seed(0)
    net = _small_msdnet(make_cfg, "all")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    k = net.num_exits
    per_exit = [_section_param_grads(net, x, [j]) for j in range(k)]
    net.gradient_equilibrium = True
    with_ge = _section_param_grads(net, x, list(range(k)))
    for i in range(k):
        want = torch.stack([per_exit[j][i] for j in range(i, k)]).mean(0)
        torch.testing.assert_close(with_ge[i], want, atol=1e-9, rtol=1e-7)
    # the public code's rule rescales the coarsest scale only: the first block then gets more than the mean
    public = _small_msdnet(make_cfg, "coarsest")
    public.load_state_dict(net.state_dict())
    public.gradient_equilibrium = True
    first = _section_param_grads(public, x, list(range(k)))[0]
    assert first.norm() > 1.05 * with_ge[0].norm()
