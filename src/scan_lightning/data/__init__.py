"""LightningDataModules with a held-out validation split taken from the training set."""
from scan_lightning.data.base import SplitDataModule
from scan_lightning.data.cifar import CIFARDataModule
from scan_lightning.data.fashion_mnist import FashionMNISTDataModule
from scan_lightning.data.folder import FolderDataModule
from scan_lightning.data.imagenet import ImageNetDataModule
from scan_lightning.data.synthetic import SyntheticDataModule

__all__ = [
    "CIFARDataModule", "FashionMNISTDataModule", "FolderDataModule", "ImageNetDataModule", "SplitDataModule",
    "SyntheticDataModule",
]
