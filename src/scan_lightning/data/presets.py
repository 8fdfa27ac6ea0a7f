"""Augmentation presets for images of any size (torchvision transforms), with the eval transforms that suit them.

``none``: resize the short side to ``size`` and centre-crop, for training too. ``cifar``: that, then a random crop
padded by ``size // 8`` (4 px at 32) and a horizontal flip. ``imagenet``: ``RandomResizedCrop(size)`` and a flip;
eval resizes the short side to ``size / 0.875`` (256 for 224) and centre-crops.
"""
from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms

AUGMENTS = ("none", "cifar", "imagenet")
IMAGENET_CROP = 0.875   # eval: the centre crop keeps this fraction of the resized short side (224 of 256)


def check_augment(augment: str) -> str:
    """``augment`` unchanged when it names a preset of :data:`AUGMENTS`; ValueError otherwise."""
    if augment not in AUGMENTS:
        raise ValueError(f"data.augment={augment!r} is not a preset; choose one of {AUGMENTS}")
    return augment


def eval_geometry(augment: str, size: int) -> list:
    """Deterministic resize + centre crop to ``size`` x ``size``."""
    resize = round(size / IMAGENET_CROP) if check_augment(augment) == "imagenet" else size
    return [transforms.Resize(resize), transforms.CenterCrop(size)]


def train_geometry(augment: str, size: int) -> list:
    """The preset's random geometry (``none``: the eval geometry)."""
    if check_augment(augment) == "imagenet":
        return [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    steps = eval_geometry(augment, size)
    if augment == "cifar":
        steps += [transforms.RandomCrop(size, padding=max(1, size // 8)), transforms.RandomHorizontalFlip()]
    return steps


def compose(geometry: list, in_channels: int, mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None) -> transforms.Compose:
    """Channels (1: grey, 3: RGB) -> geometry -> tensor in [0, 1] -> normalised (when ``mean`` and ``std`` given)."""
    channels = [transforms.Grayscale(num_output_channels=1)] if in_channels == 1 else []
    norm = [transforms.Normalize(list(mean), list(std))] if mean is not None and std is not None else []
    return transforms.Compose([*channels, *geometry, transforms.ToTensor(), *norm])
