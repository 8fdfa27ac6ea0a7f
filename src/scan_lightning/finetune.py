"""Start from an earlier run: load its network weights, train only some parameters, freeze BN statistics."""
from __future__ import annotations

from fnmatch import fnmatch
from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def freeze_except(net: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Train only parameters whose names match a glob pattern (e.g. ``heads.*.fc.*``); return their names."""
    names = [name for name, _ in net.named_parameters()]
    trainable = [n for n in names if any(fnmatch(n, pattern) for pattern in patterns)]
    if not trainable:  # a single pattern may match nothing (e.g. ISC modules when ISC is off)
        raise ValueError(f"trainable={list(patterns)} matches no parameter; names look like "
                         f"{', '.join(names[:2])} ... {', '.join(names[-2:])}")
    for name, p in net.named_parameters():
        p.requires_grad_(name in trainable)
    return trainable


def frozen_batchnorms(net: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers none of whose parameters train: their running statistics must stay fixed too."""
    return [m for m in net.modules()
            if isinstance(m, _BatchNorm) and not any(p.requires_grad for p in m.parameters(recurse=False))]


def load_matching(net: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor whose name and shape match; return the names of the network's tensors left as they were
    (new modules such as ISC transfers, or a classifier layer whose width changed)."""
    own = net.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(matched, strict=False)
    return sorted(set(own) - set(matched))


def check_new_tensors_train(net: nn.Module, new: Sequence[str]) -> None:
    """Tensors not loaded from the earlier run must be trained (a buffer: its module must train), else they
    would stay at their random initial values."""
    params = dict(net.named_parameters())

    def trains(name: str) -> bool:
        if name in params:
            return params[name].requires_grad
        owner = name.rsplit(".", 1)[0] + "."
        return any(p.requires_grad for k, p in params.items() if k.startswith(owner))

    stuck = [n for n in new if not trains(n)]
    if stuck:
        raise ValueError(f"{len(stuck)} tensors are not in the checkpoint and would stay frozen at their random "
                         f"initial values: {', '.join(stuck[:4])}{' ...' if len(stuck) > 4 else ''}; add them to "
                         f"trainable")
