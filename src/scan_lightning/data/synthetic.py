"""A small learnable synthetic dataset for tests and smoke runs: class templates plus noise."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset

from scan_lightning.data.base import SplitDataModule


class SyntheticDataModule(SplitDataModule):
    """``train_samples`` / ``test_samples`` images of shape (in_channels, image_size, image_size).

    Each class has a fixed random template; images are template + Gaussian ``noise``. Deterministic in
    ``seed``; no transforms (the same tensors serve as train and eval copies).
    """

    def __init__(self, train_samples: int = 256, test_samples: int = 128, noise: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train_samples, self.test_samples, self.noise = train_samples, test_samples, noise

    def make_dataset(self, train: bool, transform) -> Dataset:
        """A TensorDataset of seeded class templates plus Gaussian noise (``transform`` is ignored); the training and
        test splits draw different samples."""
        g = torch.Generator().manual_seed(self.seed)
        shape = (self.in_channels, self.image_size, self.image_size)
        templates = torch.randn(self.num_classes, *shape, generator=g)
        n = self.train_samples if train else self.test_samples
        g.manual_seed(self.seed + (1 if train else 2))
        y = torch.randint(self.num_classes, (n,), generator=g)
        x = templates[y] + self.noise * torch.randn(n, *shape, generator=g)
        return TensorDataset(x, y)

    def train_transform(self):
        """``None``: the synthetic tensors are used as they are."""
        return None

    def eval_transform(self):
        """``None``: the synthetic tensors are used as they are."""
        return None
