"""cost/macs.py: the per-exit cost table (the MACs and parameters a sample leaving at each exit really paid
for) against PyTorch's FLOP counter, and against the reference counts of SCAN's ResNet-18 on CIFAR-100."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scan_lightning.cost import measure_costs
from scan_lightning.models import MultiExitNetwork, build_backbone
from tests.helpers.networks import small_net


def flops_macs(fn, *args) -> int:
    with FlopCounterMode(display=False) as c:
        fn(*args)
    return c.get_total_flops() // 2


def test_cost_table_is_honest_and_consistent():
    net = small_net()
    costs = measure_costs(net, (3, 32, 32))
    cum = [e.cumulative_macs for e in costs.exits]
    assert cum == sorted(cum) and len(set(cum)) == 4
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        backbone = flops_macs(net.backbone, x)
        everything = flops_macs(net, x)
    assert costs.backbone_macs == backbone
    # the deepest exit's own cost = backbone + its head; a sample reaching it really ran everything
    assert costs.exits[-1].own_head_macs == backbone + costs.exits[-1].head_macs
    assert costs.exits[-1].cumulative_macs == everything == costs.ensemble_macs
    # exit k paid for every earlier head and attention module too
    e1, e2 = costs.exits[0], costs.exits[1]
    assert e2.cumulative_macs == e1.cumulative_macs + e2.section_macs + e2.attention_macs + e2.head_macs
    assert e1.attention_macs > 0 and costs.exits[-1].attention_macs == 0
    assert costs.exits[-1].cumulative_params == sum(p.numel() for p in net.parameters())


def test_scan_resnet18_cifar100_reference_macs():
    """SCAN's ResNet-18 on CIFAR-100 (full width, CIFAR stem, 3x32x32), in conv + linear MACs: backbone 555.5 M;
    exit heads 26.27 / 9.49 / 4.25 / 0.05 M; each attention module 26.21 M. The public code's per-exit count
    (backbone prefix plus the exit's own head) is 0.322 / 0.534 / 0.766 / 1.0 of the backbone; the honest one (every
    earlier head and attention module included) 0.37 / 0.68 / 0.97 / 1.21."""
    net = MultiExitNetwork(build_backbone("resnet18", stem="cifar", width=1.0), 100)
    costs = measure_costs(net, (3, 32, 32))
    assert costs.backbone_macs / 1e6 == pytest.approx(555.5, abs=0.1)
    assert [round(e.head_macs / 1e6, 2) for e in costs.exits] == [26.27, 9.49, 4.25, 0.05]
    assert [round(e.attention_macs / 1e6, 2) for e in costs.exits[:3]] == [26.21] * 3
    own = [e.own_head_macs / costs.backbone_macs for e in costs.exits]
    assert [round(r, 3) for r in own] == [0.322, 0.534, 0.766, 1.0]
    honest = [e.cumulative_macs / costs.backbone_macs for e in costs.exits]
    assert [round(r, 2) for r in honest] == [0.37, 0.68, 0.97, 1.21]
