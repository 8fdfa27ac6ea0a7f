"""Loss terms against hand computations, teacher detachment, composer weighting, bad values."""
from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf.errors import InterpolationResolutionError
from torch.nn import functional as F

from scan_lightning.losses import CrossEntropy, Distillation, FeatureHint, LossComposer
from scan_lightning.models.outputs import ExitOutputs
from scan_lightning.utils.config import build
from tests.helpers.references import hand_kl


def outputs(requires_grad: bool = True) -> ExitOutputs:
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(4, 5, generator=g, requires_grad=requires_grad) for _ in range(3)]
    feats = [torch.randn(4, 6, generator=g, requires_grad=requires_grad) for _ in range(3)]
    return ExitOutputs(logits, feats)


def test_kd_matches_hand_computation_at_temperature():
    out = outputs()
    kd = Distillation(exits="shallow", temperature=3.0)
    expected = sum(hand_kl(out.logits[i].detach(), out.logits[2].detach(), 3.0) for i in (0, 1))
    assert kd(out, torch.zeros(4, dtype=torch.long)).item() == pytest.approx(expected, rel=1e-5)


def test_kd_scales_with_t_squared():
    out = outputs()
    s, t = out.logits[0].detach(), out.logits[2].detach()
    raw = torch.nn.functional.kl_div(torch.log_softmax(s / 4.0, 1), torch.softmax(t / 4.0, 1),
                                     reduction="batchmean")  # KL at T = 4, unscaled
    kd = Distillation(exits=[0], temperature=4.0)(out, None)
    assert kd.item() == pytest.approx(16.0 * raw.item(), rel=1e-5)


@pytest.mark.parametrize("teacher", ["deepest", "ensemble"])
def test_kd_teacher_is_detached(teacher):
    out = outputs()
    Distillation(exits="shallow", teacher=teacher)(out, None).backward()
    assert out.logits[2].grad is None  # nothing reaches the deepest exit from the KD term
    assert out.logits[0].grad is not None and out.logits[0].grad.abs().sum() > 0


def test_cross_entropy_sums_selected_exits():
    out = outputs()
    y = torch.tensor([0, 1, 2, 3])
    ce = CrossEntropy(exits="all")(out, y)
    expected = sum(torch.nn.functional.cross_entropy(lg, y) for lg in out.logits)
    assert ce.item() == pytest.approx(expected.item())
    deep = CrossEntropy(exits="deepest")(out, y)
    assert deep.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits[2], y).item())


@pytest.mark.parametrize("reduction,divisor", [("mean", 4), ("sum", 1)])
def test_feature_hint(reduction, divisor):
    out = outputs()
    hint = FeatureHint(exits="shallow", reduction=reduction)(out, None)
    deep = out.features[2].detach()
    expected = sum(((out.features[i].detach() - deep) ** 2).sum().item() for i in (0, 1)) / divisor
    assert hint.item() == pytest.approx(expected, rel=1e-5)
    hint.backward()
    assert out.features[2].grad is None


def test_composer_weights_and_returns_each_term():
    out = outputs()
    y = torch.tensor([0, 1, 2, 3])
    terms = {"ce": CrossEntropy(weight=0.5, exits="all"), "kd": Distillation(weight=2.0, exits="shallow")}
    total, values = LossComposer(terms)(out, y)
    assert set(values) == {"ce", "kd"}
    assert total.item() == pytest.approx(0.5 * values["ce"].item() + 2.0 * values["kd"].item())
    assert str(LossComposer(terms)) == "0.5 * ce + 2 * kd"


def _scan_reference(out, y: torch.Tensor, alpha: float, lam: float, temperature: float, deep_ce_weight: float):
    """SCAN's loss written out term by term with torch.nn.functional, independently of the loss terms."""
    teacher, f_deep = out.logits[-1].detach(), out.features[-1].detach()
    total = deep_ce_weight * F.cross_entropy(out.logits[-1], y)
    for logits, feature in zip(out.logits[:-1], out.features[:-1]):
        kl = F.kl_div(F.log_softmax(logits / temperature, -1), F.softmax(teacher / temperature, -1),
                      reduction="batchmean") * temperature ** 2
        total = total + (1 - alpha) * F.cross_entropy(logits, y) + alpha * kl \
            + lam * ((feature - f_deep) ** 2).sum(1).mean()
    return total


@pytest.mark.parametrize("preset,temperature,deep_ce_weight", [("scan", 1.0, 0.7), ("scan_code", 3.0, 1.0)])
def test_scan_presets_equal_the_loss_written_out_by_hand(make_cfg, preset, temperature, deep_ce_weight):
    """``scan``: Eq. 1 as printed, over every exit (the deepest gets (1 - alpha) CE, no temperature);
    ``scan_code``: the public code (deepest exit CE at weight 1, KD at T = 3 scaled by T^2)."""
    composer = build(make_cfg(f"loss={preset}", "loss.terms.kd.weight=0.3").loss)
    torch.manual_seed(1)
    out = ExitOutputs([torch.randn(6, 5) for _ in range(4)], [torch.randn(6, 8) for _ in range(4)])
    y = torch.randint(5, (6,))
    total, _ = composer(out, y)
    want = _scan_reference(out, y, alpha=0.3, lam=6.4e-5, temperature=temperature, deep_ce_weight=deep_ce_weight)
    assert total.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("override,needle", [
    ("loss.terms.kd.weight=1.5", "alpha=1.5"),
    ("loss.terms.kd.temperature=0", "temperature=0"),
    ("loss.terms.hint.weight=-1", "weight=-1"),
    ("loss.terms.hint.reduction=max", "reduction='max'"),
    ("loss.terms.kd.teacher=middle", "teacher='middle'"),
])
def test_bad_loss_values_give_one_clear_error(make_cfg, override, needle):
    cfg = make_cfg("loss=scan", override)
    with pytest.raises((ValueError, InterpolationResolutionError, InstantiationException)) as err:
        build(cfg.loss)
    assert needle in str(err.value)
