"""Every exit rule decides alike on every path: cached scoring (``cached_early_exit``), the eager
``EarlyExitRunner``, the TorchScript file and the ONNX runner (numpy + onnxruntime) give the same predictions,
exit indices and MACs, at batch 64 and one sample at a time, on a ResNet, an MSDNet and an ISC network."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from scan_lightning.cost import measure_costs
from scan_lightning.cost.macs import CostTable
from scan_lightning.export.formats import export_onnx, export_torchscript
from scan_lightning.models import MultiExitNetwork, build_backbone
from scan_lightning.policy import ExitPolicy
from scan_lightning.policy.cache import ExitCache
from scan_lightning.policy.rules import FEATURES, RULE_NAMES, RULES, ExitRule, fit_rule, rule_outputs
from scan_lightning.policy.scoring import cached_early_exit
from scan_lightning.runtime import EarlyExitRunner
from scan_lightning.runtime.forms import fold_batchnorm
from tests.helpers.networks import small_msdnet

BATCH = 64
SHAPE = (3, 16, 16)


def resnet(**kw) -> MultiExitNetwork:
    """SCAN ResNet-18 at 1/8 width, 3 classes, 4 exits."""
    return MultiExitNetwork(build_backbone("resnet18", width=0.125), 3, bottleneck_width=8, **kw)


@dataclass(frozen=True)
class Setting:
    """How a network is built and run: seed, fallback, random temperatures, an exit switched off (threshold 1,
    skipped under a rule that reads no earlier exit when nothing else reads it), and whether the fitted rules are
    fitted (``fit_rule``) or drawn at random."""

    build: Callable[[], MultiExitNetwork]
    seed: int
    fallback: str
    temper: bool
    switched_off: int | None
    fit: bool


NETWORKS = {
    "resnet": Setting(resnet, 0, "deepest", False, 1, True),
    "msdnet": Setting(lambda: small_msdnet(), 1, "ensemble", True, None, False),
    "resnet_isc_linear": Setting(lambda: resnet(isc="linear"), 2, "deepest", True, 2, False),
    # ZTW's cascade on SDN heads: the shallow exits after the first read the previous logits, the deepest does not
    "resnet_sdn_cascade": Setting(lambda: resnet(isc="cascade", head="sdn", attention=False), 3, "deepest", True, 1,
                                  False),
    # BoostNet: identity ISC (each exit adds the previous output) with gradient equilibrium
    "resnet_boost": Setting(lambda: resnet(isc="identity", gradient_equilibrium=True, attention=False), 7,
                            "ensemble", False, None, False),
}


def spread_heads(net: MultiExitNetwork, x: torch.Tensor) -> None:
    """Re-centre and rescale each exit's last linear layer on ``x`` (exit by exit: with ISC an exit reads the one
    before), so every exit's argmax varies from sample to sample: a random network otherwise answers one class per
    exit, and patience, agreement and the running ensemble would have nothing to decide."""
    for i in range(net.num_exits):
        fc = net.heads[i].fc
        seen: list[torch.Tensor] = []
        handle = fc.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out.detach()))
        with torch.no_grad():
            net(x)
        handle.remove()
        out = seen[0]
        scale = 2.0 / out.std(0).mean().clamp_min(1e-6)
        with torch.no_grad():
            fc.weight.mul_(scale)
            fc.bias.copy_((fc.bias - out.mean(0)) * scale)


class Network:
    """A BN-folded network with varied exits, its cost table, inputs, every exit's logits on them, and the ONNX
    export (once, with the legacy exporter; every rule runs on it through ``OnnxEarlyExit(policy=...)``)."""

    def __init__(self, name: str, directory: Path) -> None:
        setting = NETWORKS[name]
        self.name, self.setting = name, setting
        torch.manual_seed(setting.seed)
        self.g = torch.Generator().manual_seed(setting.seed)
        raw = setting.build().eval()
        self.x = torch.randn(BATCH, *SHAPE, generator=self.g) * 3
        spread_heads(raw, self.x)
        self.net = fold_batchnorm(raw)
        self.costs: CostTable = measure_costs(raw, SHAPE)
        self.chained = self.net.isc is not None
        k = self.k = self.net.num_exits
        self.temperatures = (0.5 + 1.5 * torch.rand(k, generator=self.g)).tolist() if setting.temper else [1.0] * k
        with torch.no_grad():
            self.logits = torch.stack(self.net(self.x).logits)
        # labels with something to fit (random labels fit weights ~0: a uniform ensemble, constant scores): the
        # ensemble's answer, a quarter of them redrawn at random
        redraw = torch.rand(BATCH, generator=self.g) < 0.25
        self.labels = torch.where(redraw, torch.randint(self.net.num_classes, (BATCH,), generator=self.g),
                                  self.logits.mean(0).argmax(-1))
        self.onnx = export_onnx(self.net, ExitPolicy.create([1.0] * k, fallback=setting.fallback), self.costs,
                                directory / "onnx", exporter="legacy")

    def rule(self, name: str) -> ExitRule:
        """The rule with its parameters: fitted (``fit_rule``) on :attr:`labels`, or drawn at random (non-negative
        weights)."""
        rule, k = ExitRule(name), self.k
        if not rule.needs_fit:
            return rule
        if self.setting.fit:
            return fit_rule(rule, self.logits, self.labels, self.temperatures)
        if name == "running_ensemble":
            return ExitRule(name, {"weights": [(1.5 * torch.rand(i + 1, generator=self.g)).tolist()
                                               for i in range(k)]})
        return ExitRule(name, {"scheduler": (4 * torch.randn(k, len(FEATURES) + 1, generator=self.g)).tolist()})

    def policy(self, name: str) -> ExitPolicy:
        """A policy of rule ``name`` whose thresholds sit in wide gaps between that rule's scores on the inputs."""
        rule = self.rule(name)
        probe = ExitPolicy.create([1.0] * self.k, self.temperatures, self.setting.fallback, rule=rule)
        scores, _ = rule_outputs(probe.scorer(), self.logits)
        thresholds = [spread(s, self.g) for s in scores]
        if self.setting.switched_off is not None:
            thresholds[self.setting.switched_off] = 1.0
        return probe.with_thresholds(thresholds)


def spread(scores: torch.Tensor, g: torch.Generator) -> float:
    """A threshold between two neighbouring distinct scores of one exit, among the wider half of the gaps whose
    midpoint lets 10-60 % of the samples leave: several exits are taken and no score sits within rounding of the
    threshold. A single distinct score (patience at the first exit): a threshold above it (nobody leaves)."""
    values = torch.unique(scores.double())
    if values.numel() < 2:
        return float(min(1.0, (values[0] + 1) / 2)) if values[0] < 1 else 1.0
    gaps, mids = values[1:] - values[:-1], (values[1:] + values[:-1]) / 2
    above = (scores.double()[None] > mids[:, None]).double().mean(1)
    window = ((above >= 0.1) & (above <= 0.6)).nonzero()[:, 0]
    if window.numel() == 0:
        window = torch.arange(gaps.numel())
    wide = window[gaps[window] >= max(float(gaps[window].median()), 1e-4)]
    if wide.numel() == 0:
        wide = window[gaps[window].argmax()][None]
    return float(mids[wide[int(torch.randint(len(wide), (1,), generator=g))]])


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: a second thread only adds contention


@pytest.fixture(scope="module")
def networks(tmp_path_factory) -> Callable[[str], Network]:
    """One :class:`Network` (and ONNX export) per name for the whole module, built on first use."""
    built: dict[str, Network] = {}

    def get(name: str) -> Network:
        if name not in built:
            built[name] = Network(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


def as_tensors(out) -> tuple[torch.Tensor, ...]:
    """A path's ``(prediction, exit_index, macs, confidence)`` as tensors."""
    return tuple(torch.as_tensor(v) for v in tuple(out)[:4])


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_path_decides_alike(networks, name, rule, tmp_path):
    pytest.importorskip("onnxruntime")
    from scan_lightning.export.onnx_runner import OnnxEarlyExit

    net = networks(name)
    policy = net.policy(rule)
    skipped = policy.skipped_heads(chained=net.chained)
    assert any(skipped) == (net.setting.switched_off is not None and net.setting.fallback == "deepest"
                            and not net.chained and not RULES[rule].reads_history)
    # (a) cached scoring, charged what the runner pays
    prediction, exit_index = cached_early_exit(ExitCache(net.logits, net.labels), policy)
    macs = net.costs.exit_macs(torch.tensor(skipped))[exit_index]
    # several exits are taken; with additive exits (BoostNet) the previous logits carry the argmax onward, so under
    # patience the samples leave at the first exit that can agree or at the fallback
    taken = 2 if (name, rule) == ("resnet_boost", "patience") else 3
    assert len(set(exit_index.tolist())) >= taken, exit_index.bincount()
    # (b) eager, (c) TorchScript (frozen, as users export it), (d) ONNX runner under this policy
    eager = EarlyExitRunner(net.net, policy, net.costs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)       # torch 2.9+: "torch.jit.load is deprecated"
        scripted = torch.jit.load(str(export_torchscript(net.net, policy, net.costs, tmp_path / "model.pt")))
    onnx = OnnxEarlyExit(net.onnx, policy=policy.to_dict())
    assert scripted.rule == rule == onnx.rule and onnx.skipped == skipped
    assert list(scripted.thresholds) == list(policy.thresholds) == onnx.thresholds
    reference = eager(net.x)
    paths = {"eager": lambda x: (lambda r: (r.prediction, r.exit_index, r.macs, r.confidence))(eager(x)),
             "torchscript": scripted, "onnx": onnx}
    for path, run in paths.items():
        got = as_tensors(run(net.x))
        assert torch.equal(got[1], exit_index), (path, got[1], exit_index)
        assert torch.equal(got[0], prediction), path
        torch.testing.assert_close(got[2], macs.to(got[2].dtype), msg=path)
        torch.testing.assert_close(got[3], reference.confidence, atol=1e-5, rtol=1e-5, msg=path)
    # batch 1: up to 3 samples per exit taken (the fallback included)
    few = torch.cat([(exit_index == e).nonzero()[:3, 0] for e in range(net.k + 1)]).tolist()
    for path, run in paths.items():
        singles = [as_tensors(run(net.x[i:i + 1])) for i in few]
        assert torch.equal(torch.cat([s[1] for s in singles]), exit_index[few]), path
        assert torch.equal(torch.cat([s[0] for s in singles]), prediction[few]), path
        torch.testing.assert_close(torch.cat([s[2] for s in singles]), macs[few].to(singles[0][2].dtype), msg=path)


def test_onnx_runner_knows_the_rules_of_the_project():
    from scan_lightning.export.onnx_runner import NUM_FEATURES
    from scan_lightning.export.onnx_runner import RULES as ONNX_RULES

    assert ONNX_RULES == {n: (info.reads_history, info.fitted) for n, info in RULES.items()}
    assert NUM_FEATURES == len(FEATURES)


def test_onnx_runner_policy_override_bad_input(networks):
    pytest.importorskip("onnxruntime")
    from scan_lightning.export.onnx_runner import OnnxEarlyExit

    net = networks("msdnet")
    good = net.policy("patience").to_dict()
    assert OnnxEarlyExit(net.onnx, policy=good).rule == "patience"
    runner = OnnxEarlyExit(net.onnx, policy=good, thresholds=[0.5, 0.6, 1.0])   # thresholds= still overrides
    assert runner.thresholds == [0.5, 0.6, 1.0] and runner.rule == "patience"
    assert OnnxEarlyExit(net.onnx, thresholds=[0.5, 0.6, 1.0]).rule == "max_softmax"   # the exported policy's
    weights = [[1.0], [0.5, 0.5], [0.2, 0.3, 0.5]]
    cases = [
        ({**good, "rule": "pabee"}, r"rule='pabee' is not allowed; choose one of \['max_softmax'"),
        ({**good, "thresholds": [0.5, 0.5]}, r"thresholds \[0.5, 0.5\] must be 3 values in \(0, 1\]"),
        ({**good, "thresholds": [0.5, 0.0, 0.5]}, r"thresholds \[0.5, 0.0, 0.5\] must be 3 values in \(0, 1\]"),
        ({**good, "thresholds": [0.5, 1.5, 0.5]}, r"must be 3 values in \(0, 1\]"),
        ({**good, "temperatures": [1.0, -1.0, 1.0]}, r"temperatures \[1.0, -1.0, 1.0\] must be 3 values > 0"),
        ({**good, "fallback": "vote"}, "fallback='vote' is not allowed"),
        ({**good, "rule_params": {"weights": weights}}, r"rule patience takes parameters none; got \['weights'\]"),
        ({**good, "rule": "running_ensemble"}, "rule running_ensemble needs its fitted weights"),
        ({**good, "rule": "running_ensemble", "rule_params": {"weights": weights[:2]}},
         "needs weights for 3 exits"),
        ({**good, "rule": "running_ensemble", "rule_params": {"weights": [[1.0], [0.5, -0.5], [0.2, 0.3, 0.5]]}},
         r"weights row 1 = \[0.5, -0.5\]"),
        ({**good, "rule": "learned", "rule_params": {"scheduler": [[0.0] * 5, [0.0] * 4, [0.0] * 5]}},
         r"scheduler row 1 = \[0.0, 0.0, 0.0, 0.0\] must hold 5 numbers"),
        ({**good, "speed": 1}, r"policy has unknown keys \['speed'\]"),
        ([0.5, 0.5, 0.5], "policy must be a dict with 'thresholds'"),
    ]
    for policy, needle in cases:
        with pytest.raises(ValueError, match=needle):
            OnnxEarlyExit(net.onnx, policy=policy)   # type: ignore[arg-type]
