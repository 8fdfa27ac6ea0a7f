"""Small generated datasets on disk: image folders (PNG files written with PIL) and the CIFAR-100 python
pickles in torchvision's layout."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets

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


def make_image_folder(root: Path, classes: int = 3, train_per_class: int = 6, val_per_class: int = 2,
                      size: int = 40) -> None:
    """ImageNet's layout, ``root/{train,val}/class<c>/<i>.png``, of random-pixel square images."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 10) -> None:
    """The CIFAR-100 python pickles in torchvision's layout, with random pixels."""
    base = root / datasets.CIFAR100.base_folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        data = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                "fine_labels": [int(i % 100) for i in range(n)]}
        with open(base / name, "wb") as f:
            pickle.dump(data, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
