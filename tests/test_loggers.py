"""Loggers: the W&B logger's run id follows the run directory (a resumed run continues its W&B run), and a
multirun records one offline W&B run per job. The CSV logger continuing a resumed run's file is checked in
test_reliability's signal test."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import open_dict


def test_wandb_run_id_follows_the_run_directory(make_cfg, tmp_path):
    """A run resumed in its own directory continues its W&B run; any other directory starts its own."""
    first = make_cfg("logger=wandb")
    again = make_cfg("logger=wandb")
    other = make_cfg("logger=wandb")
    with open_dict(other):
        other.paths.output_dir = str(tmp_path / "elsewhere")
    assert first.logger.wandb.id == again.logger.wandb.id != other.logger.wandb.id
    assert first.logger.wandb.resume == "allow"


@pytest.mark.slow
def test_wandb_multirun_records_one_offline_run_per_job(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scan_lightning.train", "-m", "data=synthetic", "logger=wandb",
         "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "model.backbone.width=0.125", "timing.enabled=false", "loss.terms.kd.weight=0.3,0.7"],
        cwd=tmp_path, env={**os.environ, "SCAN_ROOT": str(tmp_path), "WANDB_SILENT": "true"},
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(tmp_path.glob("logs/train/multiruns/*/*/wandb/offline-run-*"))
    assert len(runs) == 2 and runs[0].parent.parent != runs[1].parent.parent
