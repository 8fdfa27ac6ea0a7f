"""A user's image folder: its layout (split folders, or one folder of classes) and an ImageFolder that numbers the
classes of every split the way the training folder does."""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.vision import StandardTransform

SPLITS = ("train", "val", "test")
LAYOUT = ("expected either <root>/train/<class>/<image> plus <root>/val/<class>/<image> and/or "
          "<root>/test/<class>/<image> (a missing val/ or test/ is held out from train/ by data.seed), or "
          "<root>/<class>/<image> (split by data.seed into train/val/test)")


def subfolders(folder: Path) -> list[str]:
    """Names of the visible subfolders, sorted (hidden ones such as ``.ipynb_checkpoints`` are no classes)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class FolderLayout:
    """Where each split's class folders are; ``None``: the split is held out from the training folder."""

    train: Path
    val: Path | None = None
    test: Path | None = None

    @classmethod
    def scan(cls, root: str | Path) -> FolderLayout:
        """The layout of ``root``, after one clear error for a missing, empty or ambiguous folder."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data.root={str(root)!r} is not a folder; {LAYOUT}")
        names = subfolders(root)
        if not names:
            raise FileNotFoundError(f"data.root={str(root)!r} has no subfolders; {LAYOUT}")
        if "train" not in names:
            if {"val", "test"} & set(names):
                raise ValueError(f"data.root={str(root)!r} has {sorted({'val', 'test'} & set(names))} but no train/; "
                                 f"{LAYOUT}")
            return cls(root)
        other = [n for n in names if n not in SPLITS]
        if other:
            raise ValueError(f"data.root={str(root)!r} has train/ and also {other}: only train/, val/ and test/ may sit "
                             f"beside each other; {LAYOUT}")
        return cls(root / "train", *(root / s if s in names else None for s in ("val", "test")))

    def classes(self) -> list[str]:
        """The class folders of the training folder."""
        names = subfolders(self.train)
        if not names:
            raise FileNotFoundError(f"{self.train} has no class subfolders; {LAYOUT}")
        return names


class ClassFolder(ImageFolder):
    """torchvision's ``ImageFolder`` over ``root/<class>/<image>`` with a given class list, so that every split
    numbers the classes alike (a split may lack a class); one clear error when it holds no image."""

    def __init__(self, root: str | Path, classes: Sequence[str], transform: Callable | None = None) -> None:
        self._given_classes = list(classes)
        extra = [n for n in subfolders(Path(root)) if n not in self._given_classes]
        if extra:
            raise ValueError(f"{root} has class folders {extra} that the training folder lacks (its classes: "
                             f"{self._given_classes})")
        super().__init__(str(root), transform=transform, allow_empty=True)
        if not self.samples:
            raise FileNotFoundError(f"{root} holds no images (extensions {', '.join(self.extensions)}); {LAYOUT}")

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        """The given class list and its label indices, whichever class folders ``directory`` has (replaces ImageFolder's
        own scan)."""
        return self._given_classes, {name: i for i, name in enumerate(self._given_classes)}

    def with_transform(self, transform: Callable | None) -> ClassFolder:
        """The same images (no rescan) with another transform."""
        other = copy.copy(self)
        other.transform, other.transforms = transform, StandardTransform(transform, None)
        return other

    def empty_classes(self) -> list[str]:
        """Classes without any image here."""
        present = set(self.targets)
        return [name for i, name in enumerate(self.classes) if i not in present]
