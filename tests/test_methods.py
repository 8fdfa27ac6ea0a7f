"""The field's training methods (conf/method/): each loss and weight schedule against a hand computation, each head
and network switch, a short training that lowers each method's loss, and one clear error for each bad setting."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from scan_lightning.losses import LossComposer, RampedCrossEntropy, SampleWeightedCrossEntropy, WeightedCrossEntropy
from scan_lightning.losses.l2w import budgeted_exits, exit_fractions, meta_step
from scan_lightning.models import MultiExitNetwork, build_backbone
from scan_lightning.models.heads import SDNHead
from scan_lightning.models.outputs import ExitOutputs
from scan_lightning.training.builders import build_module, prepare
from scan_lightning.training.callbacks import MetaReweighting
from scan_lightning.utils.config import ConfigError
from tests.helpers.compose import options
from tests.helpers.runs import FAST

METHODS = options("method")


def outputs_of(logits: list[torch.Tensor]) -> ExitOutputs:
    return ExitOutputs(logits, [torch.zeros(len(logits[0]), 1) for _ in logits])


@pytest.fixture
def four_exits():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(6, 5, generator=g) for _ in range(4)]
    target = torch.randint(5, (6,), generator=g)
    ce = [F.cross_entropy(z, target).item() for z in logits]
    return logits, target, ce


def tiny_net(**kw) -> MultiExitNetwork:
    return MultiExitNetwork(build_backbone("resnet18", width=0.125, in_channels=1), 4, bottleneck_width=8,
                            attention=False, **kw)


# --- losses and schedules, by hand ----------------------------------------------------------------------------


def test_sdn_ramp_matches_hand_computation(four_exits):
    logits, target, ce = four_exits
    term = RampedCrossEntropy(exits="shallow")
    term.check(4, [1] * 4)
    taus = [0.3, 0.6, 0.9]                                   # SDN's rule 0.9 * i / n for 3 shallow exits
    for progress in (0.0, 0.5, 1.0):
        term.set_progress(progress)
        want = sum((0.01 + (t - 0.01) * progress) * c for t, c in zip(taus, ce[:3]))
        assert term(outputs_of(logits), target).item() == pytest.approx(want, rel=1e-5)
    term.set_progress(7.0)                                   # clipped: never above tau
    assert term.exit_weights(3) == pytest.approx(taus)


def test_sdn_ramp_follows_the_epochs_through_the_composer(four_exits):
    logits, target, ce = four_exits
    composer = LossComposer({"ic": RampedCrossEntropy(exits="shallow", maxima=[0.2, 0.4, 0.8])})
    composer.set_progress(epoch=2, max_epochs=5)              # t = 2 / 4
    total, terms = composer(outputs_of(logits), target)
    want = sum((0.01 + (t - 0.01) * 0.5) * c for t, c in zip([0.2, 0.4, 0.8], ce[:3]))
    assert total.item() == pytest.approx(want, rel=1e-5) and terms["ic"].item() == pytest.approx(want, rel=1e-5)
    composer.set_progress(epoch=0, max_epochs=1)              # a one-epoch run trains at the maxima
    assert composer.terms["ic"].exit_weights(3) == pytest.approx([0.2, 0.4, 0.8])


def test_pabee_loss_is_the_depth_weighted_mean(four_exits):
    logits, target, ce = four_exits
    term = WeightedCrossEntropy(exits="all", weights="depth")
    want = sum((i + 1) * c for i, c in enumerate(ce)) / 10
    assert term(outputs_of(logits), target).item() == pytest.approx(want, rel=1e-5)
    listed = WeightedCrossEntropy(exits=[1, 3], weights=[1.0, 3.0])
    assert listed(outputs_of(logits), target).item() == pytest.approx((ce[1] + 3 * ce[3]) / 4, rel=1e-5)


def test_l2w_loss_starts_as_deep_supervision_at_half_weight(four_exits):
    logits, target, ce = four_exits
    term = SampleWeightedCrossEntropy()
    term.check(4, [1] * 4)
    assert term(outputs_of(logits), target).item() == pytest.approx(0.5 * sum(ce), rel=1e-5)
    with torch.no_grad():                                     # weights follow the predictor, per sample and exit
        term.predictor.mlp[-1].bias.copy_(torch.tensor([20.0, -20.0, -20.0, -20.0]))
    assert term(outputs_of(logits), target).item() == pytest.approx(ce[0], rel=1e-4)


def test_budgeted_exits_take_the_most_confident_share_at_each_exit():
    # 4 samples, 2 exits + deepest; exit 0 takes 1/4 of the batch (the most confident), exit 1 the next quarter
    confident = torch.tensor([[0.0, 1.0], [0.0, 5.0], [0.0, 2.0], [0.0, 0.5]])
    second = torch.tensor([[0.0, 9.0], [0.0, 9.0], [0.0, 0.1], [0.0, 3.0]])
    deep = torch.zeros(4, 2)
    taken = budgeted_exits([confident, second, deep], [0.25, 0.25, 0.5])
    assert taken.tolist() == [1, 0, 2, 2]
    assert exit_fractions(3, 0.5) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert exit_fractions(4, 1.0) == pytest.approx([0.25] * 4)


def test_meta_step_trains_only_the_predictor_and_leaves_the_network_as_it_was():
    torch.manual_seed(0)
    net = tiny_net().train()
    term = SampleWeightedCrossEntropy()
    term.check(net.num_exits, net.feature_widths)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(8, 1, 16, 16), torch.randint(4, (8,))
    loss = meta_step(net, term, x, y, torch.randn(8, 1, 16, 16), torch.randint(4, (8,)), lr=0.1)
    loss.backward(inputs=list(term.predictor.parameters()))
    last = term.predictor.mlp[-1]                             # zero at the start, so the gradient reaches it first
    assert last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())   # BN statistics included


# --- heads and network switches --------------------------------------------------------------------------------


def test_sdn_head_mixes_max_and_average_pooling_to_4x4():
    head = SDNHead(3, 5)
    with torch.no_grad():
        head.alpha.fill_(0.25)
    x = torch.randn(2, 3, 8, 8)
    want = 0.25 * F.max_pool2d(x, 2) + 0.75 * F.avg_pool2d(x, 2)
    torch.testing.assert_close(head.features(x), want.flatten(1))
    assert head.feature_width == 3 * 16 and head(x)[0].shape == (2, 5)


def test_cascade_links_the_shallow_exits_and_leaves_the_deepest_alone():
    net = tiny_net(isc="cascade").eval()
    assert [net.reads_previous(i) for i in range(4)] == [False, True, True, False]
    x = torch.randn(3, 1, 16, 16)
    out = net(x)
    assert [net.heads[i].fc.in_features - out.features[i].shape[1] for i in range(4)] == [0, 4, 4, 0]
    with torch.no_grad():                                     # exit 2 changes with exit 1's logits, the deepest not
        h = net.sections[1](net.sections[0](x))
        shifted = net.forward_exit(1, h, out.logits[0] + 5.0)[0]
        deepest = net.exit_branch(3)
    assert not torch.allclose(shifted, out.logits[1]) and deepest.isc is None


def test_boostnet_exits_add_the_detached_previous_output():
    torch.manual_seed(0)
    net = tiny_net(isc="identity", gradient_equilibrium=True).train()
    out = net(torch.randn(4, 1, 16, 16))
    own = net.heads[1].fc(out.features[1])                    # exit 2 = its own logits + exit 1's output
    torch.testing.assert_close(out.logits[1], own + out.logits[0])
    F.cross_entropy(out.logits[1], torch.zeros(4, dtype=torch.long)).backward()   # no gradient into exit 1
    assert net.heads[0].fc.weight.grad is None or net.heads[0].fc.weight.grad.abs().sum() == 0


# --- configs: every method composes, builds and lowers its loss --------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_every_method_builds_and_a_short_train_lowers_its_loss(make_cfg, method, one_thread):
    cfg = make_cfg(*FAST, f"method={method}", "model.backbone.stem=small")
    module = build_module(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, *[int(cfg.data.in_channels), int(cfg.data.image_size), int(cfg.data.image_size)], generator=g)
    y = torch.randint(int(cfg.data.num_classes), (32,), generator=g)
    x = x + 2.0 * F.one_hot(y, x[0].numel()).view_as(x)       # a learnable signal
    optimizer = torch.optim.SGD([p for p in module.net.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    module.criterion.set_progress(1, 2)
    losses = []
    for _ in range(12):
        total, _ = module.criterion(module.net(x), y)
        optimizer.zero_grad()
        total.backward()
        if not losses:   # DDP without find_unused_parameters: every trainable parameter takes part in the loss
            unused = [n for n, p in module.net.named_parameters() if p.requires_grad and p.grad is None]
            assert not unused, unused
        optimizer.step()
        losses.append(total.item())
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0], losses


def test_method_overlays_set_what_the_method_is(make_cfg):
    cfg = {m: make_cfg(f"method={m}") for m in ("sdn", "ztw", "boost", "pbee", "l2w")}
    assert cfg["sdn"].model.head == "sdn" and cfg["sdn"].loss.terms.ce_ic._target_.endswith("RampedCrossEntropy")
    assert cfg["ztw"].model.isc == "cascade" and cfg["ztw"].policy.rule == "running_ensemble"
    assert cfg["boost"].model.isc == "identity" and cfg["boost"].model.gradient_equilibrium
    assert cfg["pbee"].policy.rule == "patience" and cfg["pbee"].loss.terms.ce.weights == "depth"
    assert isinstance(instantiate(cfg["l2w"].callbacks.meta_reweighting), MetaReweighting)


# --- bad input: one clear error each, before training ------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["method=sdn", "loss.terms.ce_ic.maxima=[0.5,0.5]"], "maxima has 2 entries but the term covers 3 exits"),
    (["method=sdn", "loss.terms.ce_ic.maxima=[0.5,0.5,1.5]"], "must be a non-empty list of numbers in [0, 1]"),
    (["method=pbee", "loss.terms.ce.weights=deep"], "weights='deep' is not allowed"),
    (["method=ztw", "model.exit_after=[2]"], "model.isc='cascade' needs two shallow exits to link"),
    (["method=boost", "model.exit_after=[4]"], "model.isc='identity' needs at least two exits"),
    (["method=dsn", "model.head=cascade"], "model.head='cascade' is not allowed"),
    (["method=l2w", "callbacks.meta_reweighting.meta_size=0"], "meta_size=0 must be an integer >= 1"),
    (["method=l2w", "callbacks.meta_reweighting.meta_size=100000"], "is larger than the training split"),
    (["loss=l2w"], "needs its meta step, callbacks.meta_reweighting"),
    (["method=l2w", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
     "L2W's meta step runs in one process"),
])
def test_bad_method_settings_are_one_clear_error(make_cfg, overrides, message):
    cfg = make_cfg(*FAST, *overrides)
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert message in str(err.value)
    assert not (cfg.paths.output_dir and Path(cfg.paths.output_dir, "checkpoints").exists())


def test_unknown_method_names_the_options(make_cfg):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        make_cfg("method=boosting")
    assert "boost" in str(err.value)


def test_l2w_trains_through_lightning_and_its_predictor_learns(make_cfg, one_thread):
    from scan_lightning.cli.train import train
    from scan_lightning.training.module import load_module

    cfg = make_cfg(*FAST, "method=l2w", "callbacks.meta_reweighting.meta_size=32", "trainer.max_epochs=1",
                   "trainer.limit_train_batches=3", "timing.enabled=false", "callbacks.threshold_search=null")
    metrics = train(cfg)
    assert math.isfinite(metrics["train/meta/loss"])
    module = load_module(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"))
    predictor = module.criterion.terms["ce"].predictor
    assert predictor.mlp[-1].weight.abs().sum() > 0                # three meta steps moved it off its zero start
    saved = torch.load(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"),
                       weights_only=True)
    assert any("MetaReweighting" in key and value for key, value in saved["callbacks"].items())


def test_feature_widths_are_the_pooled_features_whatever_the_linear_reads():
    for isc in (None, "cascade", "linear"):
        net = tiny_net(isc=isc).eval()
        out = net(torch.randn(2, 1, 16, 16))
        assert net.feature_widths == [f.shape[1] for f in out.features], isc
