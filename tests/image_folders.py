"""Small generated image folders (PNG files written with PIL) for the folder-data tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "fox")


def write_class_folders(root: Path, per_class: int = 8, classes: tuple[str, ...] = CLASSES, size: int = 12,
                        seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: RGB images whose colour depends on the class (learnable), plus noise, of
    slightly varying sizes (the transforms must make them square)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.zeros(3)
        base[c % 3] = 200
        for i in range(per_class):
            h, w = size + i % 3, size + (i + 1) % 2
            pixels = np.clip(base + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def write_split_folders(root: Path, splits: dict[str, int], **kwargs) -> Path:
    """``root/<split>/<class>/<i>.png`` for each split name and images per class."""
    for i, (split, per_class) in enumerate(splits.items()):
        write_class_folders(root / split, per_class, seed=i, **kwargs)
    return root
