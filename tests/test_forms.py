"""runtime/forms.py: the deployment form (BatchNorm folded, patchify convs as GEMMs, channels-last) keeps
every exit's output on SCAN networks (with and without ISC) and MSDNet, and the real early-exit predictor on it
still equals computing every exit and then choosing."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

from scan_lightning.cost import measure_costs
from scan_lightning.export import deploy
from scan_lightning.models.heads import AttentionModule
from scan_lightning.policy import ExitPolicy
from scan_lightning.runtime import memory
from scan_lightning.runtime.early_exit import EarlyExitRunner
from scan_lightning.runtime.forms import DeployedNetwork, DeployOptions, InPlaceAttention, PatchMatmul, fold_batchnorm
from tests.helpers.networks import scan_net, small_msdnet, small_net

NETS = {"scan": scan_net, "scan_isc_linear": lambda: scan_net("linear"), "scan_isc_identity": lambda: scan_net("identity")}


@pytest.mark.parametrize("name", list(NETS))
def test_deployment_form_keeps_every_exit_and_removes_batchnorm(name):
    net = NETS[name]()
    x = torch.randn(6, 3, 32, 32) * 2
    ref = DeployedNetwork(net).all_exits(x)
    dep = deploy(net)
    for a, b in zip(ref, dep.all_exits(x)):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(dep.plain(x), DeployedNetwork(net).plain(x), atol=2e-4, rtol=2e-4)
    if net.isc != "identity":   # identity ISC adds the previous logits, which the plain network has not got
        torch.testing.assert_close(dep.plain(x), ref[-1], atol=2e-4, rtol=2e-4)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in dep.modules())
    assert sum(isinstance(m, PatchMatmul) for m in dep.modules()) == 3   # exits 1-3: 8x8/8, 4x4/4, 2x2/2 convs
    conv = next(m for m in dep.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # the network it came from is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_patch_matmul_equals_the_strided_conv_on_odd_sizes():
    conv = nn.Conv2d(6, 7, kernel_size=4, stride=4)
    x = torch.randn(3, 6, 13, 10)   # 13 and 10 do not divide by 4: the conv drops the border, so must the GEMM
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.testing.assert_close(PatchMatmul(conv)(x.contiguous(memory_format=fmt)), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [8, 7])   # 7: the deconv's map is one pixel larger and cropped
def test_in_place_attention_equals_the_attention_module(size):
    attention = AttentionModule(5).eval()
    for p in attention.parameters():
        nn.init.normal_(p)
    x = torch.randn(3, 5, size, size)
    with torch.inference_mode():
        ref = attention(x)
        for fmt in (torch.contiguous_format, torch.channels_last):
            xf = x.contiguous(memory_format=fmt)
            out = InPlaceAttention(attention)(xf)
            torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
            assert torch.equal(xf, x)                                   # the input is never written to
    xg = x.clone().requires_grad_()
    InPlaceAttention(attention)(xg).sum().backward()                    # out of place when gradients are needed
    assert xg.grad is not None


def test_deployment_form_swaps_every_attention_module_and_keeps_the_network():
    net = scan_net()
    dep = deploy(net)
    assert sum(isinstance(m, InPlaceAttention) for m in dep.modules()) == 3
    assert not any(isinstance(m, AttentionModule) for m in dep.modules())
    assert sum(isinstance(m, AttentionModule) for m in net.modules()) == 3


class FakeMallopt:
    """Records ``mallopt`` calls instead of making them."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return 1


@pytest.fixture
def fake_mallopt(monkeypatch):
    fake = FakeMallopt()
    monkeypatch.setattr(memory, "_applied", False)
    monkeypatch.setattr(memory, "_mallopt", lambda: fake)
    return fake


def test_retain_memory_tunes_malloc_once(fake_mallopt):
    deploy(small_net(), DeployOptions(retain_memory=False))
    assert fake_mallopt.calls == []
    deploy(small_net())
    deploy(small_net())
    assert fake_mallopt.calls == [(memory.M_MMAP_MAX, 0), (memory.M_TRIM_THRESHOLD, memory.MAX_TRIM_THRESHOLD)]


def test_retained_memory_restores_the_defaults_unless_it_was_on_before(fake_mallopt):
    with memory.retained_memory():
        deploy(small_net())
    assert fake_mallopt.calls[2:] == list(memory.DEFAULTS.items()) and not memory._applied
    memory.retain_freed_memory()
    calls = len(fake_mallopt.calls)
    with memory.retained_memory():
        deploy(small_net())
    assert len(fake_mallopt.calls) == calls and memory._applied   # a serving process keeps its setting


def test_retain_memory_changes_nothing_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_applied", False)
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("", ""))    # musl, macOS
    assert memory.retain_freed_memory() is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_the_memory_settings():
    code = ("from scan_lightning.runtime import memory as m\n"
            "assert m.retain_freed_memory()\nm.release_freed_memory()\nassert not m._applied")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_msdnet_deployment_form_keeps_outputs():
    net = small_msdnet().eval()
    x = torch.randn(4, 3, 32, 32)
    for a, b in zip(DeployedNetwork(net).all_exits(x), deploy(net).all_exits(x)):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=2e-4)


def test_fold_batchnorm_keeps_outputs_and_structure():
    net = small_net()
    folded = fold_batchnorm(net)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a, b = net(x), folded(x)
    for la, lb in zip(a.logits, b.logits):
        torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    bn = lambda m: sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert bn(folded) == 0 < bn(net)  # every BN folded, those after the attention deconvs included
    assert len(folded.sections) == 4 and folded.num_exits == 4


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name", ["scan", "scan_isc_linear"])
def test_predictor_on_the_deployment_form_equals_compute_all_then_choose(batch, name):
    g = torch.Generator().manual_seed(batch)
    net = NETS[name]()
    dep = deploy(net)
    x = torch.randn(64, 3, 32, 32, generator=g) * 3
    logits = dep.all_exits(x)
    conf = torch.stack([torch.softmax(lg, -1).max(-1).values for lg in logits])
    lo, hi = conf.min(1).values, conf.max(1).values
    thresholds = (lo + (hi - lo) * torch.rand(4, generator=g)).tolist()
    predictor = EarlyExitRunner(dep, ExitPolicy.create(thresholds, fallback="ensemble"), measure_costs(net, (3, 32, 32)))
    got = [predictor(xb) for xb in x.split(batch)]
    exits = torch.cat([r.exit_index for r in got])
    fired = conf > torch.tensor(thresholds)[:, None]
    ref_exits = torch.where(fired.any(0), fired.float().argmax(0), torch.tensor(4))
    assert torch.equal(exits, ref_exits)
    stacked = torch.stack(logits)
    ref_pred = torch.where(ref_exits < 4, stacked.argmax(-1).gather(0, ref_exits.clamp(max=3)[None])[0],
                           stacked.mean(0).argmax(-1))
    assert torch.equal(torch.cat([r.prediction for r in got]), ref_pred)
    if batch == 64:
        assert len(set(exits.tolist())) >= 3




@pytest.mark.parametrize("isc", [None, "identity", "linear"])
def test_the_plain_network_is_one_rule_on_every_backend(isc):
    """The plain baseline of every speed ratio: every section and the deep head alone (no ISC input) without ISC
    and with identity ISC; every exit with linear ISC, whose deepest classifier reads the previous logits. The
    eager form, onnxruntime, the MAC count and the latency table all follow it."""
    pytest.importorskip("onnxruntime")
    from scan_lightning.export import OrtNetwork
    from scan_lightning.runtime.timing import measure_latency

    net = scan_net(isc).eval()
    x = torch.randn(4, 3, 32, 32)
    costs = measure_costs(net, (3, 32, 32))
    eager = DeployedNetwork(net)
    ort = OrtNetwork(eager, costs)
    if isc == "linear":
        want = eager.all_exits(x)[-1]
        assert costs.plain_macs == costs.ensemble_macs
    else:
        h = x
        for section in net.sections:
            h = section(h)
        want = net.heads[-1].fc(net.heads[-1].features(h))          # the deep head, no previous logits
        assert costs.plain_macs == costs.backbone_macs + costs.exits[-1].head_macs
    torch.testing.assert_close(eager.plain(x), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ort.plain(x), want, atol=2e-4, rtol=2e-4)
    table = measure_latency(eager, x, batch_size=2, repeats=1)
    assert table.plain_every_exit == (isc == "linear")
    expected = sum(table.section_ms) + (sum(table.exit_ms_own) if isc == "linear" else table.deep_head_ms)
    assert table.plain_ms == pytest.approx(expected)


@pytest.mark.parametrize("isc", [None, "identity", "cascade"])
def test_openvino_form_computes_what_the_eager_form_does(isc):
    """OpenVINO's CPU plugin runs the same ONNX parts: every exit, the plain network and real early exit (batch
    compaction, batch 1) agree with the eager deployment form."""
    pytest.importorskip("openvino")
    from scan_lightning.export import deploy
    from scan_lightning.policy import ExitPolicy
    from scan_lightning.runtime.early_exit import EarlyExitRunner

    net = scan_net(isc).eval()
    x = torch.randn(6, 3, 32, 32)
    costs = measure_costs(net, (3, 32, 32))
    eager = DeployedNetwork(net)
    ov = deploy(net, DeployOptions(openvino=True), costs)
    assert type(ov).__name__ == "OvNetwork"
    for got, want in zip(ov.all_exits(x), eager.all_exits(x)):
        torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(ov.plain(x), eager.plain(x), atol=2e-4, rtol=2e-4)
    policy = ExitPolicy.create([0.3] * net.num_exits, fallback="deepest")
    for batch in (x, x[:1]):
        a, b = EarlyExitRunner(ov, policy, costs)(batch), EarlyExitRunner(eager, policy, costs)(batch)
        assert torch.equal(a.exit_index, b.exit_index) and torch.equal(a.prediction, b.prediction)


def test_one_runtime_at_a_time():
    with pytest.raises(ValueError, match="onnxruntime and openvino exclude each other"):
        DeployOptions(onnxruntime=True, openvino=True)
    with pytest.raises(ValueError, match="compile and openvino exclude each other"):
        DeployOptions(compile=True, openvino=True)
