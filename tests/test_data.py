"""DataModules (data/): real torchvision loading code on small generated files (Fashion-MNIST IDX, CIFAR-100,
synthetic); the held-out validation split; missing or broken files are one clear error, from the CLI too."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from scan_lightning.data import CIFARDataModule, FashionMNISTDataModule, SyntheticDataModule
from scan_lightning.data.fashion_mnist import IDX_FILES
from tests.helpers.images import write_cifar100
from tests.helpers.runs import run_cli

COMMON = dict(batch_size=8, num_workers=0, seed=3)


def write_idx(folder: Path, n_train: int = 60, n_test: int = 20) -> None:
    """Four gzipped IDX files in the Fashion-MNIST format, as Debian's dataset-fashion-mnist ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + labels.tobytes())


def fashion(tmp_path: Path, **kw) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(data_dir=str(tmp_path / "data"), source_dir=str(tmp_path / "debian"),
                                  num_classes=10, in_channels=1, image_size=28, val_size=10, **COMMON, **kw)


def test_fashion_mnist_from_idx_files(tmp_path):
    write_idx(tmp_path / "debian")
    dm = fashion(tmp_path)
    dm.prepare_data()
    assert all((tmp_path / "data" / "FashionMNIST" / "raw" / n).is_file() for n in IDX_FILES)
    dm.setup("fit")
    assert len(dm.train_set) == 50 and len(dm.val_set) == 10
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and y.dtype == torch.long
    assert len(dm.test_dataloader().dataset) == 20


def test_validation_split_is_seeded_disjoint_and_uses_eval_transforms(tmp_path):
    write_idx(tmp_path / "debian")
    dm = fashion(tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    train_idx, val_idx = set(dm.train_set.indices), set(dm.val_set.indices)
    assert not train_idx & val_idx and len(train_idx | val_idx) == 60
    # the validation subset is taken from a copy with the eval transforms (no random crop / flip)
    assert "RandomCrop" in repr(dm.train_set.dataset.transform)
    assert "RandomCrop" not in repr(dm.val_set.dataset.transform)
    a = dm.val_set[0][0]
    assert torch.equal(a, dm.val_set[0][0])  # deterministic: no augmentation
    again = fashion(tmp_path)
    again.setup("fit")
    assert again.val_set.indices == dm.val_set.indices
    other = fashion(tmp_path)
    other.seed = 4
    other.setup("fit")
    assert other.val_set.indices != dm.val_set.indices


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion(tmp_path).prepare_data()


def test_val_size_too_large(tmp_path):
    write_idx(tmp_path / "debian")
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "data"), source_dir=str(tmp_path / "debian"),
                                num_classes=10, in_channels=1, image_size=28, val_size=60, **COMMON)
    dm.prepare_data()
    with pytest.raises(ValueError, match="data.val_size=60 must be smaller than the training set"):
        dm.setup("fit")


def test_cifar100_through_torchvision(tmp_path, monkeypatch):
    write_cifar100(tmp_path)
    # the generated files cannot match torchvision's md5 sums of the real archive
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda *args: True)
    dm = CIFARDataModule(data_dir=str(tmp_path), variant="cifar100", num_classes=100, in_channels=3,
                         image_size=32, val_size=8, **COMMON)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 32 and len(dm.val_set) == 8
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32)
    assert "RandomCrop(size=(32, 32), padding=4)" in repr(dm.train_set.dataset.transform)
    assert "Random" not in repr(dm.val_set.dataset.transform)


def test_cifar_missing_says_where_and_what_to_do(tmp_path):
    dm = CIFARDataModule(data_dir=str(tmp_path), variant="cifar100", num_classes=100, in_channels=3, image_size=32,
                         val_size=8)
    with pytest.raises(FileNotFoundError, match="cifar100 not found in data_dir=.*cifar-100-python/.*data.download=true"):
        dm.prepare_data()


def test_cifar_bad_variant():
    with pytest.raises(ValueError, match="data.variant='cifar1000'"):
        CIFARDataModule(data_dir=".", variant="cifar1000", num_classes=100, in_channels=3, image_size=32, val_size=8)


def test_synthetic_is_deterministic_and_learnable_shape():
    kw = dict(num_classes=4, in_channels=2, image_size=8, val_size=4, train_samples=20, test_samples=6, **COMMON)
    a, b = SyntheticDataModule(**kw), SyntheticDataModule(**kw)
    a.setup(), b.setup()
    assert torch.equal(a.train_set[0][0], b.train_set[0][0])
    assert a.train_set[0][0].shape == (2, 8, 8) and len(a.test_set) == 6


@pytest.mark.parametrize("damage,needle", [
    ("truncate", "t10k-labels-idx1-ubyte is not a complete Fashion-MNIST IDX file of labels"),
    ("foreign", "train-images-idx3-ubyte is not a complete Fashion-MNIST IDX file of 28x28 images"),
])
def test_broken_idx_files_are_one_clear_error_before_training(tmp_path, damage, needle):
    write_idx(tmp_path / "debian")
    dm = fashion(tmp_path)
    dm.prepare_data()
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    if damage == "truncate":
        path = raw / "t10k-labels-idx1-ubyte"
        path.write_bytes(path.read_bytes()[:-5])
    else:
        (raw / "train-images-idx3-ubyte").write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match=needle):
        fashion(tmp_path).prepare_data()


def test_cli_missing_dataset_is_one_clear_error(tmp_path):
    proc = run_cli("data.source_dir=" + str(tmp_path / "no_debian_files"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in proc.stderr and "Traceback" not in proc.stderr
