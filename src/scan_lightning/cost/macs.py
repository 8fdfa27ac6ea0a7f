"""Per-exit cost of a multi-exit network, measured with ``torch.utils.flop_counter`` on its modules.

Honest accounting: a sample that leaves at exit k paid for sections 1..k and for *every* attention
module and head 1..k it ran (earlier heads included; an exit branch the policy skips, see
:func:`~scan_lightning.policy.exit_policy.skipped_heads`, was not run and is not charged). The SCAN public
code's convention - backbone prefix plus only the exit's own head, no attention - is kept alongside,
labelled ``own_head``, to compare with the paper's figures. MACs = FLOPs / 2 of the counted ops (convolutions and matrix products).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook
from torch.utils.flop_counter import FlopCounterMode

from scan_lightning.models.multi_exit import MultiExitNetwork, exit_input, plain_runs_every_exit
from scan_lightning.utils.modes import eval_mode


def exit_cost_vector(sections: torch.Tensor, branches: torch.Tensor, skipped: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """(..., K + 1) cost of leaving at each exit, then at the fallback (ran every section): every section up to
    the exit plus the exit branches run on the way. ``sections``, ``branches``: (K,) per-exit costs (MACs or ms);
    ``skipped``: (..., K) branches not run, so not charged."""
    per_exit = sections + branches if skipped is None else sections + branches * (~skipped)
    cum = per_exit.cumsum(-1)
    return torch.cat([cum, cum[..., -1:]], dim=-1)


@dataclass(frozen=True)
class ExitCost:
    """Costs for one exit (0-based ``index``); ``cumulative_*`` are what a sample exiting here paid."""

    index: int
    section_macs: int
    attention_macs: int
    head_macs: int
    cumulative_macs: int
    own_head_macs: int
    section_params: int
    attention_params: int
    head_params: int
    cumulative_params: int


@dataclass(frozen=True)
class CostTable:
    """Per-exit MACs and parameter counts of a network for one input shape (C, H, W), as :func:`measure_costs` counts
    them; ``chained``: ISC, so every exit branch runs."""
    exits: list[ExitCost]
    input_shape: tuple[int, ...]
    chained: bool = False   # ISC: each exit reads the previous exit's logits, so every exit branch runs
    plain_every_exit: bool = False   # linear ISC: no classifier stands alone, the plain network runs every exit

    @property
    def cumulative_macs(self) -> torch.Tensor:
        """Honest MACs of exiting at each exit, shape (num_exits,)."""
        return torch.tensor([e.cumulative_macs for e in self.exits], dtype=torch.float64)

    def exit_macs(self, skipped: torch.Tensor | None = None) -> torch.Tensor:
        """(..., K + 1) MACs paid at each exit, then at the fallback; ``skipped``: (..., K) exit branches not run."""
        sections = torch.tensor([e.section_macs for e in self.exits], dtype=torch.float64)
        branches = torch.tensor([e.attention_macs + e.head_macs for e in self.exits], dtype=torch.float64)
        return exit_cost_vector(sections, branches, skipped)

    @property
    def ensemble_macs(self) -> int:
        """The ensemble fallback ran every section, attention module and head."""
        return self.exits[-1].cumulative_macs

    @property
    def backbone_macs(self) -> int:
        """MACs of all sections alone: no attention modules, no heads."""
        return sum(e.section_macs for e in self.exits)

    @property
    def plain_macs(self) -> int:
        """The plain baseline network: all sections plus the deep head, no shallow exits (with linear ISC every exit:
        see :func:`~scan_lightning.models.multi_exit.plain_runs_every_exit`)."""
        return self.ensemble_macs if self.plain_every_exit else self.backbone_macs + self.exits[-1].head_macs

    @property
    def own_head_ensemble_macs(self) -> int:
        """Public-code convention for the ensemble: backbone plus every head, no attention modules."""
        return self.backbone_macs + sum(e.head_macs for e in self.exits)

    def to_dict(self) -> dict:
        """Plain data for JSON: input shape, ``chained``, the per-exit rows and the aggregate MAC counts."""
        return {
            "input_shape": list(self.input_shape),
            "chained": self.chained,
            "plain_every_exit": self.plain_every_exit,
            "exits": [asdict(e) for e in self.exits],
            "backbone_macs": self.backbone_macs,
            "plain_macs": self.plain_macs,
            "ensemble_macs": self.ensemble_macs,
            "own_head_ensemble_macs": self.own_head_ensemble_macs,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostTable:
        """From :meth:`to_dict`'s layout (the derived totals are recomputed)."""
        fields = ExitCost.__dataclass_fields__
        return cls([ExitCost(**{k: int(v) for k, v in e.items() if k in fields}) for e in data["exits"]],
                   tuple(int(d) for d in data["input_shape"]), bool(data.get("chained", False)),
                   bool(data.get("plain_every_exit", False)))


def _elementwise_ops(module: nn.Module, inputs: tuple, output: Any) -> int:
    """Per-sample ops the MSDNet/IMTA public op counter adds to conv/linear MACs: ReLU outputs, pooling
    window reads, Linear biases. Other modules: 0."""
    if isinstance(module, nn.ReLU):
        return output[0].numel()
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k = module.kernel_size
        return output[0].numel() * (k * k if isinstance(k, int) else math.prod(k))
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return inputs[0][0].numel()
    if isinstance(module, nn.Linear) and module.bias is not None:
        return module.out_features
    return 0


def count_macs(fn, *inputs, elementwise: bool = False) -> tuple[int, Any]:
    """MACs of one call of ``fn`` (a module or function; FLOPs / 2) and its output.

    ``elementwise=True`` also counts ReLU, pooling and Linear-bias ops per sample, the convention of the
    MSDNet/IMTA op counter behind their published FLOPs (inputs must be a batch of one).
    """
    extra = [0]

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        extra[0] += _elementwise_ops(module, args, output)

    handle = register_module_forward_hook(hook) if elementwise else None
    try:
        with FlopCounterMode(display=False) as counter:
            out = fn(*inputs)
    finally:
        if handle is not None:
            handle.remove()
    return counter.get_total_flops() // 2 + extra[0], out


def count_params(module: nn.Module) -> int:
    """Number of parameter elements in ``module``, trainable or frozen."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def measure_costs(net: MultiExitNetwork, input_shape: tuple[int, int, int], elementwise: bool = False) -> CostTable:
    """Run one image of ``input_shape`` (C, H, W) through every section, attention module and head.

    ``elementwise``: count as the MSDNet/IMTA op counter does (see :func:`count_macs`)."""
    with eval_mode(net):
        device = next(net.parameters()).device
        h = torch.zeros(1, *input_shape, device=device)
        rows, cum_macs, cum_params, prefix_macs, logits = [], 0, 0, 0, None
        for i, section in enumerate(net.sections):
            s_macs, h = count_macs(section, h, elementwise=elementwise)
            branch = net.exit_branch(i)
            attention = branch.attention if branch.attention is not None else nn.Identity()
            a_macs, _ = count_macs(attention, exit_input(h), elementwise=elementwise)
            # the exit as the network runs it (attention, head, ISC transfer), minus the attention
            exit_macs, (logits, _) = count_macs(branch, h, logits, elementwise=elementwise)
            head_macs = exit_macs - a_macs
            prefix_macs += s_macs
            cum_macs += s_macs + a_macs + head_macs
            s_p, a_p = count_params(section), count_params(attention)
            h_p = count_params(branch) - a_p          # head and ISC transfer
            cum_params += s_p + a_p + h_p
            rows.append(ExitCost(i, s_macs, a_macs, head_macs, cum_macs, prefix_macs + head_macs,
                                 s_p, a_p, h_p, cum_params))
        return CostTable(rows, tuple(input_shape), chained=net.isc is not None, 
                         plain_every_exit=plain_runs_every_exit(net.isc))
