"""Loggers: the W&B logger's run id follows the run directory (a resumed run continues its W&B run), and a
multirun records one offline W&B run per job. The CSV logger continuing a resumed run's file is checked in
test_reliability's signal test."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import open_dict

from tests.helpers.wandb_offline import read_run


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
    records = [read_run(r).run for r in runs]   # one W&B group per sweep, each job named by its own overrides
    sweep_dir = runs[0].parent.parent.parent.name
    assert {r.run_group for r in records} == {f"train-{sweep_dir}"}
    names = sorted(r.display_name for r in records)
    assert "loss.terms.kd.weight=0.3" in names[0] and "loss.terms.kd.weight=0.7" in names[1]
    assert "data=synthetic" in names[0] and "logger=" not in names[0]
    assert all(list(r.tags) == ["multirun"] for r in records)
