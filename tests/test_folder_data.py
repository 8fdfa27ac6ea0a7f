"""data=folder on small generated PNG folders: layouts, splits, mean/std, class checks, one training run, class names
in the checkpoint and from the Predictor."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import Subset

from scan_lightning import Predictor
from scan_lightning.cli.export import export
from scan_lightning.cli.task import run_entry_point
from scan_lightning.cli.train import train
from scan_lightning.data import FolderDataModule
from scan_lightning.utils.config import ConfigError, build
from tests.helpers.compose import compose_export
from tests.helpers.images import CLASSES, write_class_folders, write_split_folders

COMMON = dict(image_size=8, batch_size=4, num_workers=0, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def folder_dm(root: Path, **kw) -> FolderDataModule:
    return FolderDataModule(root=str(root), **{**COMMON, **kw})


def labels(dataset) -> list[int]:
    return [int(y) for _, y in dataset]


def files(dm: FolderDataModule, split: Subset) -> set[str]:
    """The image files of a split held out from the training folder."""
    positions = split.indices
    if isinstance(split.dataset, Subset):   # train/val: positions among the images left after the test hold-out
        positions = [split.dataset.indices[i] for i in positions]
    return {dm.pool().samples[i][0] for i in positions}


def test_train_val_test_folders_are_used_as_they_are(tmp_path):
    root = write_split_folders(tmp_path / "imgs", {"train": 4, "val": 2, "test": 3})
    for image in (root / "val" / "fox").iterdir():   # a split may lack a class: labels still follow train/
        image.unlink()
    (root / "val" / "fox").rmdir()
    dm = folder_dm(root)
    dm.setup()
    assert dm.class_names == list(CLASSES) and dm.num_classes == 3
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 4, 9)
    assert sorted(labels(dm.val_set)) == [0, 0, 1, 1]
    assert sorted(labels(dm.test_set)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 8, 8) and y.dtype == torch.long


def test_a_missing_val_folder_is_held_out_from_train_with_eval_transforms(tmp_path):
    root = write_split_folders(tmp_path / "imgs", {"train": 6, "test": 2})
    dm = folder_dm(root, val_size=4, augment="cifar")
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (14, 4, 6)
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    assert "RandomCrop" in repr(dm.train_set.dataset.dataset.transform)
    assert "RandomCrop" not in repr(dm.val_set.dataset.dataset.transform)
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])   # no augmentation


def test_one_folder_is_split_by_seed_into_disjoint_train_val_test(tmp_path):
    root = write_class_folders(tmp_path / "imgs", per_class=10)

    def splits(seed: int) -> tuple[set, set, set]:
        dm = folder_dm(root, seed=seed, val_size=0.2, test_size=6)
        dm.setup()
        return files(dm, dm.train_set), files(dm, dm.val_set), files(dm, dm.test_set)

    train_files, val_files, test_files = splits(0)
    assert (len(train_files), len(val_files), len(test_files)) == (19, 5, 6)
    assert not (train_files & val_files) and not (train_files & test_files) and not (val_files & test_files)
    assert splits(0) == (train_files, val_files, test_files)   # seeded
    assert splits(1)[2] != test_files


def test_mean_std_from_the_training_images_only_on_a_bounded_sample(tmp_path, caplog):
    root = write_split_folders(tmp_path / "imgs", {"train": 4, "val": 2})
    (root / "test").mkdir()
    write_class_folders(root / "test", per_class=2, size=8, seed=9)
    for image in (root / "test" / "cat").iterdir():   # very different test images must not move the statistics
        Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(image)
    dm = folder_dm(root, augment="none")
    mean, std = dm.normalization()
    pixels = np.concatenate([np.asarray(Image.open(p).convert("RGB").resize((8, 8)), dtype=np.float64).reshape(-1, 3)
                             for p in sorted((root / "train").glob("*/*.png"))]) / 255
    # the eval geometry resizes the short side then centre-crops; compare loosely to a plain resize
    assert np.allclose(mean, pixels.mean(0), atol=0.03) and np.allclose(std, pixels.std(0), atol=0.03)
    with caplog.at_level(logging.INFO, logger="scan_lightning"):
        bounded = folder_dm(root, stats_samples=5).normalization()
    assert "computed from 5 of the 12 training images" in caplog.text and "data.stats_samples=5" in caplog.text
    assert bounded != (mean, std)
    given = folder_dm(root, in_channels=1, mean=[0.5], std=[0.2])
    assert given.normalization() == ([0.5], [0.2])
    given.setup()
    assert given.train_set[0][0].shape == (1, 8, 8)


@pytest.mark.parametrize("augment", ["none", "cifar", "imagenet"])
def test_presets_give_square_images_and_deterministic_eval(tmp_path, augment):
    root = write_class_folders(tmp_path / "imgs", per_class=4, size=20)
    dm = folder_dm(root, augment=augment, val_size=2, test_size=2, mean=[0.5] * 3, std=[0.25] * 3)
    dm.setup()
    assert dm.train_set[0][0].shape == dm.val_set[0][0].shape == (3, 8, 8)
    assert torch.equal(dm.test_set[0][0], dm.test_set[0][0])


@pytest.mark.parametrize("make,kwargs,needle", [
    (lambda r: r, {}, "is not a folder"),
    (lambda r: r.mkdir() or r, {}, "has no subfolders"),
    (lambda r: (r / "val" / "cat").mkdir(parents=True) or r, {}, "has ['val'] but no train/"),
    (lambda r: write_class_folders(r / "train", 2).parent.joinpath("extra").mkdir() or r, {}, "and also ['extra']"),
    (lambda r: (r / "cat").mkdir(parents=True) or r, {}, "needs at least 2"),
    (lambda r: write_class_folders(r, 2), {"num_classes": 5}, "data.num_classes=5 but"),
    (lambda r: write_class_folders(r, 2), {"augment": "autoaugment"}, "data.augment='autoaugment' is not a preset"),
    (lambda r: write_class_folders(r, 2), {"in_channels": 2}, "data.in_channels=2 must be 1 (grey) or 3 (RGB)"),
    (lambda r: write_class_folders(r, 2), {"val_size": 1.5}, "data.val_size=1.5 must be a count >= 1 or a fraction"),
    (lambda r: write_class_folders(r, 2), {"mean": [0.5], "std": [0.2]}, "has 1 values but data.in_channels=3"),
])
def test_bad_folders_and_options_are_one_clear_error(tmp_path, make, kwargs, needle):
    root = make(tmp_path / "imgs")
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        folder_dm(root, **kwargs)
    assert needle in str(err.value)
    if "folder" in needle or "subfolders" in needle or "train/" in needle:
        assert "expected either <root>/train/<class>/<image>" in str(err.value)


def test_empty_class_folders_are_named(tmp_path):
    root = write_class_folders(tmp_path / "imgs", per_class=3)
    (root / "empty").mkdir()
    dm = folder_dm(root)
    with pytest.raises(FileNotFoundError, match=r"class folders \['empty'\] of .*imgs hold no images"):
        dm.setup()
    split = write_split_folders(tmp_path / "split", {"train": 3})
    (split / "test" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"split/test holds no images .*expected either"):
        folder_dm(split).setup()


TINY = ("data=folder", "data.image_size=16", "data.batch_size=8", "data.num_workers=0", "data.val_size=4",
        "data.test_size=4", "model.backbone.width=0.125", "model.bottleneck_width=8", "timing.enabled=false",
        "search.ga.population=8", "search.ga.generations=2")


def test_class_count_mismatch_is_a_config_error_with_exit_status_2(make_cfg, tmp_path, capsys):
    root = write_class_folders(tmp_path / "imgs", per_class=4)
    cfg = make_cfg(*TINY, f"data.root={root}", "data.num_classes=10", "trainer.max_epochs=1")
    with pytest.raises(ConfigError, match=r"data.num_classes=10 but .*imgs has 3 class folders \(cat, dog, fox\)"):
        train(cfg)
    with pytest.raises(SystemExit) as exit_:
        run_entry_point(train, cfg)
    assert exit_.value.code == 2 and "data.num_classes=10 but" in capsys.readouterr().err
    assert not Path(cfg.paths.output_dir).exists()   # before any work


def test_one_epoch_on_a_folder_saves_class_names_for_the_predictor(make_cfg, tmp_path):
    root = write_class_folders(tmp_path / "imgs", per_class=10)
    cfg = make_cfg(*TINY, f"data.root={root}", "trainer.max_epochs=1")
    assert cfg.data.num_classes is None   # taken from the folder
    metrics = train(cfg)
    assert "test/acc/exit4" in metrics and "val/acc/ensemble" in metrics
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["run_config"]
    assert saved["data"]["class_names"] == list(CLASSES) and saved["data"]["num_classes"] == 3
    assert saved["model"]["num_classes"] == 3 and len(saved["data"]["mean"]) == 3
    # the saved data config rebuilds the same data (evaluate does this), class names and mean/std checked, not redone
    again = build(OmegaConf.create(saved["data"]))
    assert again.class_names == list(CLASSES) and again.normalization() == (saved["data"]["mean"], saved["data"]["std"])
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.class_names == list(CLASSES)
    again.setup("test")
    x = torch.stack([again.test_set[i][0] for i in range(len(again.test_set))])
    out = predictor.predict(x)
    assert len(out.names) == 4 and set(out.names) <= set(CLASSES)
    assert out.names == [CLASSES[i] for i in out.labels.tolist()]
    # an exported artefact carries them too
    exported = export(compose_export(f"ckpt_path={ckpt}", "format=torchscript", f"output={tmp_path / 'net.pt'}"))
    assert Predictor.from_export(exported["output"]).class_names == list(CLASSES)


def test_describe_asks_the_folder_for_its_class_count(make_cfg, tmp_path):
    from scan_lightning.cli.describe import describe

    root = write_class_folders(tmp_path / "imgs", per_class=4)
    costs = describe(make_cfg(*TINY, f"data.root={root}"))
    assert len(costs.exits) == 4
