"""training/checkpoints.py and the checkpoints a run writes: plain data that restores with weights_only=True; foreign or
corrupt files refused by name; last.ckpt is the latest epoch whatever the monitored metric did."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from scan_lightning.cli.train import train
from scan_lightning.training.module import MultiExitModule, load_module
from scan_lightning.utils.config import ConfigError
from tests.helpers.runs import FAST


def test_short_run_checkpoint_is_plain_data_and_restores_with_weights_only(short_run):
    raw = torch.load(short_run.ckpt, weights_only=True, map_location="cpu")
    assert raw["hyper_parameters"]["run_config"]["data"]["num_classes"] == 10
    module = MultiExitModule.load_from_checkpoint(short_run.ckpt, weights_only=True, map_location="cpu")
    x = torch.randn(2, 3, 32, 32)
    assert len(module.eval()(x).logits) == 4


def test_foreign_or_corrupt_checkpoints_are_refused_by_name(make_cfg, tmp_path):
    garbage = tmp_path / "random.ckpt"
    garbage.write_bytes(os.urandom(4096))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for path, needle in ((garbage, "cannot be read as plain data"), (foreign, "is not a scan_lightning checkpoint")):
        with pytest.raises(ConfigError, match=needle):
            train(make_cfg(*FAST, f"init_from={path}"))
        with pytest.raises(ValueError, match=needle):
            load_module(path)


def test_last_checkpoint_is_the_latest_epoch_even_when_the_metric_did_not_improve(make_cfg):
    # whichever epoch is best by the monitored metric, last.ckpt holds the latest one
    cfg = make_cfg(*FAST, "trainer.max_epochs=3", "trainer.limit_train_batches=2", "timing.enabled=false",
                   "callbacks.model_checkpoint.monitor=train/loss/total", "callbacks.model_checkpoint.mode=max",
                   "~callbacks.threshold_search", "test=false")
    train(cfg)
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 6
