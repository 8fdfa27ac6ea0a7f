"""Sweeps: the metric the Hydra main returns for a sweeper (optimized_metric)."""
from __future__ import annotations

from pathlib import Path

import pytest

from scan_lightning.config import ConfigError
from scan_lightning.train import swept_metric, train_for_sweep

# a trial that trains for a few seconds on 2 CPU cores
TINY = ("data=synthetic", "data.image_size=16", "data.batch_size=16", "model.backbone.layers=[1,1,1,1]",
        "model.backbone.width=0.125", "model.bottleneck_width=8", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "+trainer.num_sanity_val_steps=0",
        "timing.enabled=false", "logger=none", "test=false", "search.ga.population=8", "search.ga.generations=3",
        "search.budget_steps=4")


def test_swept_metric_is_the_named_float_or_one_clear_error():
    metrics = {"val/acc/ensemble": 0.75, "val/dynamic/accuracy": 0.5}
    assert swept_metric(metrics, "val/acc/ensemble") == 0.75
    assert isinstance(swept_metric({"m": 1}, "m"), float)
    assert swept_metric(metrics, None) is None
    with pytest.raises(ConfigError, match=r"optimized_metric='val/acc/ensembel' is not among this run's metrics; "
                                          r"choose one of \['val/acc/ensemble', 'val/dynamic/accuracy'\]"):
        swept_metric(metrics, "val/acc/ensembel")
    with pytest.raises(ConfigError, match="optimized_metric='test/acc/ensemble' would choose hyperparameters on "
                                          "the test set"):
        swept_metric({"test/acc/ensemble": 0.8}, "test/acc/ensemble")


def test_optimized_metric_on_the_test_set_stops_before_training(make_cfg):
    cfg = make_cfg(*TINY, "optimized_metric=test/acc/ensemble")
    with pytest.raises(ConfigError, match="optimized_metric='test/acc/ensemble' would choose hyperparameters"):
        train_for_sweep(cfg)
    assert not Path(cfg.paths.output_dir).exists()
