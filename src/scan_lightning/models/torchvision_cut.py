"""Exits on a user's backbone: any torchvision (or timm) classification model cut at named modules.

The model's modules are flattened into their forward order (children, with ``nn.Sequential``
containers opened up); ``cut_points`` name modules in that order, and section i runs everything after
cut i-1 up to and including cut i. What follows the last cut (pooling, classifier) is replaced by the
deep exit. Channel counts and reductions are inferred by a dry forward at ``image_size``. ``weights`` names
torchvision's pretrained weights (e.g. ``IMAGENET1K_V1``), read from the local torch hub cache only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scan_lightning.models.backbone import SectionedBackbone, SectionInfo
from scan_lightning.models.pretrained import cached_weights
from scan_lightning.models.registry import register_backbone
from scan_lightning.utils.modes import eval_mode


def sequential_modules(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The model's children in order, opening ``nn.Sequential`` containers one level at a time."""
    out = []
    for name, child in model.named_children():
        full = f"{prefix}{name}"
        out.append((full, child))
        if isinstance(child, nn.Sequential):
            out.extend(sequential_modules(child, f"{full}."))
    return out


def _load(name: str, source: str, weights: str | None = None) -> nn.Module:
    if weights is not None and source != "torchvision":
        raise ValueError(f"model.backbone.weights={weights!r} needs source='torchvision' (source={source!r})")
    if source == "torchvision":
        import torchvision

        available = torchvision.models.list_models(module=torchvision.models)
        if name not in available:
            raise ValueError(f"torchvision has no classification model {name!r}; available: {', '.join(available)}")
        # with the file in the cache, torchvision's own loading reads it (no download)
        return torchvision.models.get_model(name, weights=cached_weights(name, weights) if weights else None)
    if source == "timm":
        try:
            import timm
        except ImportError as err:
            raise ValueError("source='timm' needs the timm package (pip install timm)") from err
        return timm.create_model(name, pretrained=False)
    raise ValueError(f"source={source!r} is not allowed; choose 'torchvision' or 'timm'")


def cut_model(model: nn.Module, cut_points: Sequence[str], image_size: int = 224,
              in_channels: int = 3, pretrained: bool = False) -> SectionedBackbone:
    """Sections between consecutive ``cut_points`` (module names in forward order). ``pretrained``: the model's
    weights are trained ones (a first convolution adapted to grey images keeps them, summed over colours)."""
    flat = sequential_modules(model)
    # only modules whose parent is a container we opened can be cut at: a top-level child or a
    # member of an opened Sequential; the path from the root is a chain of such modules
    names = [n for n, _ in flat]
    index = {n: i for i, n in enumerate(names)}
    cuts = list(cut_points)
    missing = [c for c in cuts if c not in index]
    if not cuts or missing:
        raise ValueError(f"cut points {missing or cuts} are not modules of the model; valid names in forward "
                         f"order: {', '.join(names)}")
    positions = [index[c] for c in cuts]
    if positions != sorted(positions) or len(set(positions)) != len(positions):
        raise ValueError(f"cut points {cuts} are out of forward order; valid names in order: {', '.join(names)}")
    # a leaf sequence: the opened containers are replaced by their members
    leaves = [(n, m) for n, m in flat if not isinstance(m, nn.Sequential)]
    leaf_names = [n for n, _ in leaves]

    def last_leaf(cut: str) -> int:
        inside = [i for i, n in enumerate(leaf_names) if n == cut or n.startswith(cut + ".")]
        return inside[-1]

    ends = [last_leaf(c) for c in cuts]
    sections, start = [], 0
    for end in ends:
        sections.append(nn.Sequential(*[m for _, m in leaves[start:end + 1]]))
        start = end + 1
    _check_sequential(model, sections, cuts[-1], image_size)
    _first_conv_in_channels(sections[0], in_channels, pretrained)
    info = []
    with torch.no_grad():
        x = torch.zeros(1, in_channels, image_size, image_size)
        was = [s.training for s in sections]
        for i, s in enumerate(sections):
            s.eval()
            x = s(x)
            if x.dim() != 4:
                raise ValueError(f"section ending at {cuts[i]!r} gives a {x.dim()}-d output; cut at modules that "
                                 "output (N, C, H, W) feature maps")
            info.append(SectionInfo(cuts[i], x.shape[1], max(1, round(image_size / x.shape[-1]))))
        for s, w in zip(sections, was):
            s.train(w)
    return SectionedBackbone(nn.ModuleList(sections), info)


def _check_sequential(model: nn.Module, sections: Sequence[nn.Module], last_cut: str, image_size: int) -> None:
    """The chained sections must reproduce the model's own feature at the last cut (torch.fx extractor)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    with eval_mode(model):
        x = torch.randn(1, _in_channels(model), image_size, image_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = create_feature_extractor(model, {last_cut: "out"})(x)["out"]
            out = x
            for s in sections:
                out = s(out)
    if out.shape != ref.shape or not torch.allclose(out, ref, atol=1e-4, rtol=1e-3):
        raise ValueError(f"the model's forward is not a plain sequence of its modules up to {last_cut!r}; "
                         "cut it where it is (e.g. at its stages), or register a builder for it")


def _in_channels(model: nn.Module) -> int:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def _first_conv_in_channels(section: nn.Module, in_channels: int, pretrained: bool = False) -> None:
    """Replace the first convolution when the data has another channel count (e.g. 1 for grey images); for grey
    images a pretrained one's weights are summed over its input channels (grey = equal R, G, B)."""
    for parent in section.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    conv = nn.Conv2d(
                        in_channels, child.out_channels,
                        # torch types these attributes tuple[int, ...] but Conv2d's arguments as 2-tuples: a Conv2d's
                        # own values always fit
                        child.kernel_size, child.stride, child.padding, child.dilation,  # type: ignore[arg-type]
                        child.groups, child.bias is not None)
                    if pretrained and in_channels == 1 and child.groups == 1:
                        with torch.no_grad():
                            conv.weight.copy_(child.weight.sum(1, keepdim=True))
                            if child.bias is not None and conv.bias is not None:   # both or neither
                                conv.bias.copy_(child.bias)
                    setattr(parent, name, conv)
                return


@register_backbone
def torchvision_cut(*, model: str, cut_points: Sequence[str], source: str = "torchvision", image_size: int = 224,
                    in_channels: int = 3, weights: str | None = None) -> SectionedBackbone:
    """A torchvision (or timm) model by name, cut after each of ``cut_points``; ``weights``: torchvision's
    pretrained weights by enum name (e.g. ``IMAGENET1K_V1``), from the local hub cache."""
    return cut_model(_load(model, source, weights), cut_points, image_size=image_size, in_channels=in_channels,
                     pretrained=weights is not None)


def cut_state_dict(state: dict[str, torch.Tensor], *, model: str, cut_points: Sequence[str],
                   source: str = "torchvision", image_size: int = 224, in_channels: int = 3,
                   exit_after: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a plain model's ``state_dict`` (``torch.save(torchvision_model.state_dict())``) under their
    names in the cut backbone (``sections.*``, regrouped by ``exit_after`` as the network does); tensors the file
    lacks, or whose shape differs (a first convolution adapted to other channels), are left out."""
    plain = _load(model, source)
    own = plain.state_dict(keep_vars=True)
    found = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    plain.load_state_dict({k: state[k] for k in found}, strict=False)
    loaded = {id(own[k]) for k in found}   # loading copies in place: the cut shares these tensors
    backbone = cut_model(plain, cut_points, image_size=image_size, in_channels=in_channels)
    if exit_after is not None:
        backbone = backbone.regroup(exit_after)
    return {k: v.detach() for k, v in backbone.state_dict(keep_vars=True).items() if id(v) in loaded}
