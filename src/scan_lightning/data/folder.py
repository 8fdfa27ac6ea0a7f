"""Any image folder (``data=folder``): train/val/test subfolders, or one folder of classes split by seed.

Splits present as folders are used as they are; a missing ``test/`` is held out from the training images first, then
a missing ``val/`` (the base class's seeded split). The validation split carries the eval transforms, and the test
images are never used for anything but the final test. The class count and names come from the training folder's
class subfolders; mean and std, when not given, from a bounded sample of the training split.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from scan_lightning.data.base import SplitDataModule, Transform
from scan_lightning.data.image_folder import LAYOUT, ClassFolder, FolderLayout
from scan_lightning.data.presets import check_augment, compose, eval_geometry, train_geometry
from scan_lightning.data.stats import channel_stats, sample_indices
from scan_lightning.utils.logs import get_logger

log = get_logger(__name__)


def check_split_size(name: str, value: int | float) -> int | float:
    """``value`` unchanged if it is a split size, a count >= 1 or a fraction in (0, 1); ValueError otherwise."""
    ok_count = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    ok_fraction = isinstance(value, float) and 0.0 < value < 1.0
    if not (ok_count or ok_fraction):
        raise ValueError(f"data.{name}={value!r} must be a count >= 1 or a fraction in (0, 1)")
    return value


def split_count(name: str, value: int | float, n: int) -> int:
    """How many of ``n`` images a split size means (a fraction: at least one)."""
    count = value if isinstance(value, int) else max(1, round(value * n))
    if count >= n:
        raise ValueError(f"data.{name}={value} leaves no training images: {count} of {n} images held out")
    return count


def check_classes(found: list[str], folder: Path, num_classes: int | None, class_names: Sequence[str] | None) -> None:
    """The class folders against ``data.num_classes`` and ``data.class_names`` (when set)."""
    shown = ", ".join(found[:10]) + (" ..." if len(found) > 10 else "")
    if num_classes is not None and num_classes != len(found):
        raise ValueError(f"data.num_classes={num_classes} but {folder} has {len(found)} class folders ({shown}); "
                         f"set data.num_classes={len(found)} or null (= the number of class folders)")
    if class_names is not None and [str(c) for c in class_names] != found:
        raise ValueError(f"data.class_names={list(class_names)} but {folder} has the class folders {found}")
    if len(found) < 2:
        raise ValueError(f"{folder} has {len(found)} class folder ({shown}); a classifier needs at least 2; {LAYOUT}")


class FolderDataModule(SplitDataModule):
    """Images in class folders (``torchvision.datasets.ImageFolder``), any size, grey or colour.

    Args:
        root: the image folder (layout: :data:`~scan_lightning.data.image_folder.LAYOUT`).
        num_classes: ``None`` = the number of class folders; a number is checked against them.
        class_names: ``None`` = the class folders' names (sorted: label order); a list is checked against them.
        in_channels: 1 (images converted to grey) or 3 (RGB).
        image_size: the side of the square images the network sees.
        augment: training augmentation preset (:data:`~scan_lightning.data.presets.AUGMENTS`).
        mean, std: per-channel normalisation; ``None`` = computed from at most ``stats_samples`` training images.
        val_size, test_size: held out from the training folder when ``val/`` or ``test/`` is missing: a count, or
            a fraction in (0, 1) of the images.
        **kwargs: batch sizes, workers, seed, ``max_train_samples``, ``stem`` (see :class:`SplitDataModule`).
    """

    def __init__(self, root: str, num_classes: int | None = None, class_names: Sequence[str] | None = None,
                 in_channels: int = 3, image_size: int = 64, augment: str = "cifar",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, stats_samples: int = 1000,
                 val_size: int | float = 0.1, test_size: int | float = 0.1, **kwargs) -> None:
        if in_channels not in (1, 3) or isinstance(in_channels, bool):
            raise ValueError(f"data.in_channels={in_channels!r} must be 1 (grey) or 3 (RGB)")
        self.augment = check_augment(augment)
        self.val_spec, self.test_spec = check_split_size("val_size", val_size), check_split_size("test_size", test_size)
        if (mean is None) != (std is None):
            raise ValueError(f"data.mean={mean} and data.std={std}: give both, or neither (= computed from the images)")
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != in_channels:
                raise ValueError(f"data.{name}={list(values)} has {len(values)} values but data.in_channels="
                                 f"{in_channels}")
        if std is not None and min(std) <= 0:
            raise ValueError(f"data.std={list(std)} must be > 0")
        if isinstance(stats_samples, bool) or not isinstance(stats_samples, int) or stats_samples < 1:
            raise ValueError(f"data.stats_samples={stats_samples!r} must be an integer >= 1")
        self.layout = FolderLayout.scan(root)
        found = self.layout.classes()
        check_classes(found, self.layout.train, num_classes, class_names)
        # a fraction becomes a count in split_indices, once the number of images is known
        super().__init__(num_classes=len(found), in_channels=in_channels, image_size=image_size,
                         val_size=val_size if isinstance(val_size, int) else 1, **kwargs)
        self.root, self.class_names = Path(root), found
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        self.stats_samples = stats_samples
        self._pool: ClassFolder | None = None

    # --- the images ----------------------------------------------------------------------------
    def pool(self) -> ClassFolder:
        """The training folder's images (scanned once), every class present."""
        if self._pool is None:
            pool = ClassFolder(self.layout.train, self.class_names)
            empty = pool.empty_classes()
            if empty:
                raise FileNotFoundError(f"class folders {empty} of {self.layout.train} hold no images; every class "
                                        f"needs training images; {LAYOUT}")
            self._pool = pool
        return self._pool

    def held_out_test(self) -> tuple[list[int], list[int]]:
        """(rest, test) positions in the training folder: the test split held out by seed, unless ``test/`` exists."""
        n = len(self.pool())
        if self.layout.test is not None:
            return list(range(n)), []
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_test = split_count("test_size", self.test_spec, n)
        return sorted(perm[n_test:]), sorted(perm[:n_test])

    def split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) positions among the ``n`` images left after the test hold-out: the base class's seeded
        split, or, when ``val/`` exists, all of them (up to ``max_train_samples``) and no validation positions."""
        if self.layout.val is None:
            self.val_size = split_count("val_size", self.val_spec, n)
            return super().split_indices(n)
        train = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return train[: self.max_train_samples] if self.max_train_samples else train, train[:0]

    def train_positions(self) -> list[int]:
        """Positions in the training folder of the training split (neither validation nor test images)."""
        rest, _ = self.held_out_test()
        train, _ = self.split_indices(len(rest))
        return [rest[i] for i in train.tolist()]

    def make_dataset(self, train: bool, transform: Transform) -> Dataset:
        """``train=True``: the training folder's images not held out for testing (the base class splits validation off
        them); else ``test/``, or the held-out test images."""
        rest, test = self.held_out_test()
        if not train and self.layout.test is not None:
            return ClassFolder(self.layout.test, self.class_names, transform)
        return Subset(self.pool().with_transform(transform), rest if train else test)

    def setup(self, stage: str | None = None) -> None:
        """The base class's splits; with a ``val/`` folder the validation set is that folder (eval transforms)
        instead."""
        fresh = self.train_set is None
        super().setup(stage)
        if fresh and self.layout.val is not None:
            self.val_set = ClassFolder(self.layout.val, self.class_names, self.eval_transform())

    # --- transforms ----------------------------------------------------------------------------
    def normalization(self) -> tuple[list[float], list[float]]:
        """``(mean, std)``: as given, else computed once from a seeded sample of the training split."""
        if self.mean is None or self.std is None:   # given both or neither (__init__)
            train = self.train_positions()
            picked = sample_indices(train, self.stats_samples, self.seed)
            images = self.pool().with_transform(compose(eval_geometry(self.augment, self.image_size), self.in_channels))
            mean, std = channel_stats(images, picked, self.eval_batch_size, self.num_workers)
            self.mean, self.std = [round(v, 4) for v in mean], [round(v, 4) for v in std]
            log.info(f"data.mean={self.mean} data.std={self.std}: computed from {len(picked)} of the {len(train)} "
                     f"training images (a seeded sample of at most data.stats_samples={self.stats_samples}); "
                     f"saved with the run config")
        return self.mean, self.std

    def train_transform(self) -> Transform:
        """Channel conversion, the preset's random geometry, tensor and normalisation (:meth:`normalization`)."""
        return compose(train_geometry(self.augment, self.image_size), self.in_channels, *self.normalization())

    def eval_transform(self) -> Transform:
        """Channel conversion, the preset's resize and centre crop, tensor and normalisation (:meth:`normalization`)."""
        return compose(eval_geometry(self.augment, self.image_size), self.in_channels, *self.normalization())

    def config_from_data(self) -> dict:
        """The class count and names read from the folder, and the normalisation used."""
        mean, std = self.normalization()
        return {"num_classes": self.num_classes, "class_names": list(self.class_names), "mean": mean, "std": std}
