"""Shared LightningDataModule logic: a seeded held-out validation split taken from the training set.

Under DDP the validation and test sets are split across processes without the padding Lightning's default
sampler adds (duplicates would enter the synced metrics); the post-fit pass reads them whole on rank 0
(:meth:`SplitDataModule.eval_dataloader`).

The validation subset is drawn from a second copy of the training set that carries the *eval*
transforms, so model selection and threshold search never see augmented images, and never the test set.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sized
from typing import Any, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from scan_lightning.data.order import ResumableRandomSampler, train_order_state

Transform = Callable


def input_shape(data: Mapping[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of one image, from a data config (``in_channels``, square ``image_size``)."""
    return int(data["in_channels"]), int(data["image_size"]), int(data["image_size"])


class SplitDataModule(pl.LightningDataModule):
    """Subclasses implement ``make_dataset(train, transform)`` and the two transforms."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        val_size: int,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        max_train_samples: int | None = None,
        stem: str = "cifar",
    ) -> None:
        """``stem`` is metadata for the model configs (``${data.stem}``): the stem suited to the image size."""
        super().__init__()
        sizes = {"batch_size": batch_size, "val_size": val_size, "num_classes": num_classes,
                 "in_channels": in_channels, "image_size": image_size}
        sizes.update({k: v for k, v in (("eval_batch_size", eval_batch_size),
                                        ("max_train_samples", max_train_samples)) if v is not None})
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name}={value!r} must be an integer >= 1"
                                 + (" (or null: every training sample)" if name == "max_train_samples" else ""))
        if num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers} must be >= 0")
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.val_size, self.seed, self.max_train_samples = val_size, seed, max_train_samples
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self._train_sampler: ResumableRandomSampler | None = None
        self._resume_order: dict = {}
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # --- what a dataset provides ---------------------------------------------------------------
    def make_dataset(self, train: bool, transform: Transform) -> Dataset:
        """The training (``train=True``) or test images with ``transform`` applied; subclasses implement it."""
        raise NotImplementedError

    def train_transform(self) -> Transform:
        """The transform of the training images, augmentation included; subclasses implement it."""
        raise NotImplementedError

    def eval_transform(self) -> Transform:
        """The deterministic transform of validation and test images; subclasses implement it."""
        raise NotImplementedError

    def config_from_data(self) -> dict:
        """Config values only the data can tell (an image folder's class count and names, its mean and std), for
        ``cfg.data`` before the model is built; none here."""
        return {}

    # --- split and loaders ---------------------------------------------------------------------
    def split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded (train, val) index split of ``n`` training samples."""
        if self.val_size >= n:
            raise ValueError(f"data.val_size={self.val_size} must be smaller than the training set ({n} samples)")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        val, train = perm[: self.val_size], perm[self.val_size:]
        if self.max_train_samples is not None:
            train = train[: self.max_train_samples]
        return train, val

    def setup(self, stage: str | None = None) -> None:
        """Build the seeded train/val split once (the validation subset from a copy with the eval transforms) and, for
        ``test``, ``predict`` or ``stage=None``, the test set."""
        if self.train_set is None:
            train_aug = self.make_dataset(train=True, transform=self.train_transform())
            train_eval = self.make_dataset(train=True, transform=self.eval_transform())
            train_idx, val_idx = self.split_indices(len(cast(Sized, train_aug)))   # map-style: it has a length
            self.train_set = Subset(train_aug, train_idx.tolist())
            self.val_set = Subset(train_eval, val_idx.tolist())
        if self.test_set is None and stage in (None, "test", "predict"):
            self.test_set = self.make_dataset(train=False, transform=self.eval_transform())

    @staticmethod
    def _ready(dataset: Dataset | None, split: str) -> Dataset:
        """``dataset`` once :meth:`setup` has made it."""
        if dataset is None:
            raise RuntimeError(f"the {split} set is made by setup(); call it before asking for its loader")
        return dataset

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def _eval_sampler(self, dataset: Dataset) -> Sampler | None:
        """This process's share of an evaluation set under a multi-process trainer: every sample exactly once
        across processes (shares may differ by one), no padding."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size < 2:
            return None
        return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                            shuffle=False)

    def train_dataloader(self) -> DataLoader:
        """The shuffled training loader; its resumable sampler continues a mid-epoch checkpoint's order when one was
        loaded."""
        train_set = self._ready(self.train_set, "training")
        self._train_sampler = ResumableRandomSampler(train_set)
        if self._resume_order:
            self._train_sampler.resume(self._resume_order)
            self._resume_order = {}
        return self._loader(train_set, False, self.batch_size, self._train_sampler)

    def state_dict(self) -> dict:
        """Saved with every checkpoint: where a checkpoint written mid-epoch is in the shuffled order."""
        trainer = getattr(self, "trainer", None)
        return {"train_order": train_order_state(trainer, self._train_sampler, self.batch_size) if trainer else {}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Keep a checkpoint's position in the training order for the next :meth:`train_dataloader`."""
        self._resume_order = dict(state_dict.get("train_order") or {})
        if self._resume_order:   # Lightning looks for the position on the loader, not here: its warning is wrong
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    def val_dataloader(self) -> DataLoader:
        """The validation loader, unshuffled; under DDP this process's share of it, without padding."""
        val_set = self._ready(self.val_set, "validation")
        return self._loader(val_set, False, self.eval_batch_size, self._eval_sampler(val_set))

    def test_dataloader(self) -> DataLoader:
        """The test loader (the test set set up first), unshuffled; under DDP this process's share, without padding."""
        self.setup("test")
        test_set = self._ready(self.test_set, "test")
        return self._loader(test_set, False, self.eval_batch_size, self._eval_sampler(test_set))

    def eval_dataloader(self, split: str) -> DataLoader:
        """The whole ``"val"`` or ``"test"`` set in one process (the post-fit pass and ``evaluate``)."""
        if split not in ("val", "test"):
            raise ValueError(f"split={split!r} is not an evaluation split; choose 'val' or 'test'")
        self.setup("test")
        dataset = self._ready(self.val_set if split == "val" else self.test_set, split)
        return self._loader(dataset, False, self.eval_batch_size)
