"""Backbone builders registered by name, so configs and users can list and pick them."""
from __future__ import annotations

from collections.abc import Callable

from scan_lightning.models.backbone import SectionedBackbone

BackboneBuilder = Callable[..., SectionedBackbone]
_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(fn: BackboneBuilder) -> BackboneBuilder:
    """Decorator: make ``fn`` available as ``build_backbone(fn.__name__, ...)``."""
    _BACKBONES[fn.__name__] = fn
    return fn


def list_backbones() -> list[str]:
    """Names of the registered backbone builders, sorted."""
    return sorted(_BACKBONES)


def build_backbone(name: str, **kwargs) -> SectionedBackbone:
    """Build a registered backbone by name; unknown names list the available ones."""
    if name not in _BACKBONES:
        raise ValueError(f"backbone {name!r} is unknown; available: {', '.join(list_backbones())}")
    return _BACKBONES[name](**kwargs)
