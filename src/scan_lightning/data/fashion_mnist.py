"""Fashion-MNIST from local IDX files (Debian's dataset-fashion-mnist) or torchvision's download."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets, transforms

from scan_lightning.data.base import SplitDataModule

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = (0.2860,), (0.3530,)
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_items(path: Path) -> int:
    """The item count of a Fashion-MNIST IDX file (28x28 images or labels), after one clear error if the file is
    foreign, corrupt or truncated."""
    images = "images" in path.name
    magic, header, item_bytes = (2051, 16, 28 * 28) if images else (2049, 8, 1)
    head = path.read_bytes()[:header]
    fields = [int.from_bytes(head[i:i + 4], "big") for i in range(0, len(head) - 3, 4)]
    size = path.stat().st_size
    ok = len(fields) == header // 4 and fields[0] == magic and (not images or fields[2:] == [28, 28])
    if not ok or size != header + fields[1] * item_bytes:
        what = "28x28 images" if images else "labels"
        raise ValueError(f"{path} is not a complete Fashion-MNIST IDX file of {what} (header {fields[:4]}, {size} "
                         f"bytes). Delete {path.parent} and run `make data` (or reinstall dataset-fashion-mnist)")
    return fields[1]


def raw_folder(root: str | Path) -> Path:
    """Where torchvision's ``FashionMNIST(root)`` reads the uncompressed IDX files."""
    return Path(root) / "FashionMNIST" / "raw"


def install_idx_files(source_dir: str | Path, root: str | Path) -> bool:
    """Copy the four IDX files (``.gz`` or plain) from ``source_dir`` into torchvision's raw folder.

    Returns False, copying nothing, when ``source_dir`` does not hold all four.
    """
    source_dir, raw = Path(source_dir), raw_folder(root)
    sources = {}
    for name in IDX_FILES:
        found = [p for p in (source_dir / name, source_dir / f"{name}.gz") if p.is_file()]
        if not found:
            return False
        sources[name] = found[0]
    raw.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as fin, open(raw / f"{name}.part", "wb") as fout:
            shutil.copyfileobj(fin, fout)
        (raw / f"{name}.part").replace(raw / name)
    return True


class FashionMNISTDataModule(SplitDataModule):
    """Fashion-MNIST, 28x28 grey, 10 classes; no network needed when the Debian package is installed.

    Args:
        data_dir: torchvision root; the IDX files end up in ``data_dir/FashionMNIST/raw``.
        source_dir: a folder with the four IDX files (``.gz`` or plain), copied in when missing.
        download: fall back to torchvision's download when neither has the files.
        augment: random crop (pad 2) + horizontal flip on the training split.
    """

    def __init__(self, data_dir: str, source_dir: str = DEBIAN_DIR, download: bool = False,
                 augment: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir, self.source_dir, self.download, self.augment = data_dir, source_dir, download, augment

    def prepare_data(self) -> None:
        """Make the four IDX files present (copied from ``source_dir``, else downloaded when allowed), then check each
        is complete and every split has as many labels as images."""
        raw = raw_folder(self.data_dir)
        if not all((raw / n).is_file() for n in IDX_FILES) and not install_idx_files(self.source_dir, self.data_dir):
            if not self.download:
                raise self._missing()
            datasets.FashionMNIST(self.data_dir, train=True, download=True)
            datasets.FashionMNIST(self.data_dir, train=False, download=True)
        for images, labels in (IDX_FILES[:2], IDX_FILES[2:]):
            n_images, n_labels = idx_items(raw / images), idx_items(raw / labels)
            if n_images != n_labels:
                raise ValueError(f"{raw / images} holds {n_images} images but {raw / labels} {n_labels} labels; "
                                 f"delete {raw} and run `make data`")

    def _missing(self) -> FileNotFoundError:
        return FileNotFoundError(
            f"Fashion-MNIST IDX files are neither in {raw_folder(self.data_dir)} nor in data.source_dir="
            f"{self.source_dir}. Install them with `apt-get install dataset-fashion-mnist` (or `make data`), "
            "point data.source_dir at a folder holding them, or set data.download=true."
        )

    def make_dataset(self, train: bool, transform) -> Dataset:
        """torchvision's FashionMNIST training or test split read from ``data_dir``, with ``transform``."""
        return datasets.FashionMNIST(self.data_dir, train=train, transform=transform)

    def train_transform(self):
        """With ``augment``: random crop 28 with padding 2 and a horizontal flip, then tensor and normalisation;
        otherwise the eval transform."""
        if not self.augment:
            return self.eval_transform()
        return transforms.Compose([
            transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(MEAN, STD),
        ])

    def eval_transform(self):
        """Tensor normalised by the Fashion-MNIST mean and std."""
        return transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def ensure_files(data_dir: str, source_dir: str = DEBIAN_DIR) -> Path:
    """``make data``: the data module's own ``prepare_data`` (copy from ``source_dir``, else torchvision's download,
    then check every file), and where the files are."""
    FashionMNISTDataModule(data_dir, source_dir, download=True, num_classes=10, in_channels=1, image_size=28,
                           val_size=5000).prepare_data()
    return raw_folder(data_dir)

