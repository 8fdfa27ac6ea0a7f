"""Start from an earlier run: load its network weights, train only some parameters, freeze BN statistics."""
from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatch

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from scan_lightning.training.checkpoints import read_weights


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


def backbone_state(state: dict[str, torch.Tensor], model: dict) -> dict[str, torch.Tensor]:
    """A plain backbone's ``state_dict`` (e.g. ``torch.save(torchvision_model.state_dict())``) under the multi-exit
    network's names (``backbone.sections.*``): only the ``torchvision_cut`` backbone knows where each tensor goes."""
    from scan_lightning.models.torchvision_cut import cut_state_dict

    backbone = model.get("backbone") or {}
    if backbone.get("name") != "torchvision_cut":
        raise ValueError(f"its tensor names ({', '.join(list(state)[:3])} ...) are not this network's, and a plain "
                         f"backbone's state_dict fits model=torchvision backbones only (model.backbone.name="
                         f"{backbone.get('name')!r})")
    options = {k: backbone[k] for k in ("model", "cut_points", "source", "image_size", "in_channels") if k in backbone}
    return {f"backbone.{k}": v for k, v in cut_state_dict(state, exit_after=model.get("exit_after"), **options).items()}


def initial_weights(net: nn.Module, model: dict, path: str) -> dict[str, torch.Tensor]:
    """The tensors ``init_from`` gives ``net``: a scan_lightning checkpoint's network, a ``state_dict`` of the
    multi-exit network, or one of its plain torchvision backbone (``model``: the network's config)."""
    state, checkpoint = read_weights(path)
    own = net.state_dict()
    try:
        if not checkpoint and not any(k in own for k in state):
            state = backbone_state(state, model)
        if not any(k in own and own[k].shape == v.shape for k, v in state.items()):
            raise ValueError("none of its tensors fits this network (names and shapes differ)")
    except ValueError as err:
        raise ValueError(f"init_from={path!r} is not a scan_lightning checkpoint of this network, nor a state_dict "
                         f"of it or of its backbone: {err}") from None
    return state


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
