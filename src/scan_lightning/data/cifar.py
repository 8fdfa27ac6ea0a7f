"""CIFAR-10 / CIFAR-100 through torchvision, with the standard pad-4 crop + flip augmentation."""
from __future__ import annotations

from torch.utils.data import Dataset
from torchvision import datasets, transforms

from scan_lightning.data.base import SplitDataModule

STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DATASETS = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}


class CIFARDataModule(SplitDataModule):
    """``variant`` = ``"cifar10"`` or ``"cifar100"``; files under ``data_dir`` in torchvision's layout."""

    def __init__(self, data_dir: str, variant: str = "cifar100", download: bool = False, **kwargs) -> None:
        if variant not in DATASETS:
            raise ValueError(f"data.variant={variant!r} is not allowed; choose one of {tuple(DATASETS)}")
        super().__init__(**kwargs)
        self.data_dir, self.variant, self.download = data_dir, variant, download

    def prepare_data(self) -> None:
        """Check both splits are under ``data_dir`` (with ``download``: fetch them); FileNotFoundError saying what to
        put there otherwise."""
        for train in (True, False):
            try:
                DATASETS[self.variant](self.data_dir, train=train, download=self.download)
            except RuntimeError:  # torchvision's "Dataset not found or corrupted"
                folder = DATASETS[self.variant].base_folder
                raise FileNotFoundError(
                    f"{self.variant} not found in data_dir={self.data_dir!r}: put torchvision's python version there "
                    f"({folder}/), or set data.download=true where the internet is reachable") from None

    def make_dataset(self, train: bool, transform) -> Dataset:
        """torchvision's CIFAR-10 or CIFAR-100 training or test split with ``transform``."""
        return DATASETS[self.variant](self.data_dir, train=train, transform=transform)

    def _normalize(self):
        return transforms.Normalize(*STATS[self.variant])

    def train_transform(self):
        """Random crop 32 with padding 4, horizontal flip, tensor, normalised by the variant's mean and std."""
        return transforms.Compose([
            transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), self._normalize(),
        ])

    def eval_transform(self):
        """Tensor normalised by the variant's mean and std."""
        return transforms.Compose([transforms.ToTensor(), self._normalize()])
