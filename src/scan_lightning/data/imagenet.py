"""ImageNet (ILSVRC2012) from ImageFolder directories: ``root/train/<class>/*``, ``root/val/<class>/*``.

The official validation set is the test set here; the validation split for model selection and
threshold search is held out from the training images (50,000 by default), with eval transforms.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets, transforms

from scan_lightning.data.base import SplitDataModule

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageNetDataModule(SplitDataModule):
    """RandomResizedCrop(image_size) + flip for training; Resize(resize_size) + CenterCrop for eval."""

    def __init__(self, root: str, resize_size: int = 256, **kwargs) -> None:
        super().__init__(**kwargs)
        if resize_size < self.image_size:
            raise ValueError(f"data.resize_size={resize_size} must be >= data.image_size={self.image_size}")
        self.root, self.resize_size = Path(root), resize_size

    def prepare_data(self) -> None:
        """Check ``root/train`` and ``root/val`` exist (nothing is downloaded); FileNotFoundError otherwise."""
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise FileNotFoundError(f"ImageNet folder {self.root / split} is missing: data.root must hold "
                                        "train/<class>/* and val/<class>/* (ImageFolder layout)")

    def make_dataset(self, train: bool, transform) -> Dataset:
        """An ImageFolder over ``root/train`` or ``root/val`` (the test split here), checked against ``num_classes``."""
        ds = datasets.ImageFolder(str(self.root / ("train" if train else "val")), transform=transform)
        if len(ds.classes) != self.num_classes:
            raise ValueError(f"{self.root / ('train' if train else 'val')} has {len(ds.classes)} classes but "
                             f"data.num_classes={self.num_classes}")
        return ds

    def train_transform(self):
        """RandomResizedCrop(image_size), horizontal flip, tensor, ImageNet normalisation."""
        return transforms.Compose([
            transforms.RandomResizedCrop(self.image_size), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(MEAN, STD),
        ])

    def eval_transform(self):
        """Resize(resize_size), CenterCrop(image_size), tensor, ImageNet normalisation."""
        return transforms.Compose([
            transforms.Resize(self.resize_size), transforms.CenterCrop(self.image_size),
            transforms.ToTensor(), transforms.Normalize(MEAN, STD),
        ])
