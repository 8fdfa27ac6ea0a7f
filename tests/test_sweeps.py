"""Sweeps: the Optuna search (hparams_search=scan_optuna) end to end and the metric the Hydra main returns."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scan_lightning.config import ConfigError
from scan_lightning.train import swept_metric, train_for_sweep

SEARCHED = {"loss.terms.kd.weight", "loss.terms.kd.temperature", "loss.terms.hint.weight", "optim.optimizer.lr"}
# a trial that trains for a few seconds on 2 CPU cores
TINY = ("data=synthetic", "data.image_size=16", "data.batch_size=16", "model.backbone.layers=[1,1,1,1]",
        "model.backbone.width=0.125", "model.bottleneck_width=8", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "+trainer.num_sanity_val_steps=0",
        "timing.enabled=false", "logger=none", "test=false", "search.ga.population=8", "search.ga.generations=3",
        "search.budget_steps=4")


def test_optuna_search_runs_two_trials_end_to_end(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the sweep extra is not installed")
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "scan_lightning.train", "hparams_search=scan_optuna", "hydra.sweeper.n_trials=2",
         f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY],
        cwd=tmp_path, env={**os.environ, "SCAN_ROOT": str(tmp_path)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # both trials ran and returned a finite value of the optimised metric to the sweeper
    trials = optuna.load_study(study_name="train", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(math.isfinite(t.value) for t in trials)
    assert all(set(t.params) == SEARCHED for t in trials)
    # each trial is a full run in <job number>_<digest>/ whose summary holds the value it returned
    runs = sorted((tmp_path / "sweep").glob("*_*/summary.json"))
    assert [p.parent.name.split("_")[0] for p in runs] == ["0", "1"]
    returned = sorted(t.value for t in trials)
    assert sorted(json.loads(p.read_text())["metrics"]["val/acc/ensemble"] for p in runs) == returned
    # the sweeper's report
    result = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert result["name"] == "optuna" and set(result["best_params"]) == SEARCHED
    assert result["best_value"] == max(returned)


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
