"""End to end: train(cfg) on synthetic data, artefacts of a run, checkpoints, CLI and bad input."""
from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from scan_lightning.evaluate import evaluate
from scan_lightning.module import MultiExitModule
from scan_lightning.train import train
from tests.helpers.compose import compose_evaluate
from tests.helpers.runs import FAST, run_cli


def test_fast_dev_run_trains_and_tests(make_cfg, caplog):
    cfg = make_cfg(*FAST, "trainer.fast_dev_run=true")
    with caplog.at_level(logging.INFO, logger="scan_lightning"):
        metrics = train(cfg)
    for i in range(1, 5):
        assert f"test/acc/exit{i}" in metrics
    assert "train/loss/kd" in metrics and "val/acc/ensemble" in metrics
    logged = caplog.text   # the tables go through the package's logger (so they reach the run's log file)
    assert "Per-exit test results" in logged and "Dynamic inference" in logged
    # fast_dev_run has no best checkpoint: thresholds.json goes to the run's output dir
    assert (Path(cfg.paths.output_dir) / "thresholds.json").is_file()


def test_short_run_leaves_config_checkpoint_and_per_exit_csv(make_cfg, tmp_path):
    cfg = make_cfg(*FAST, "trainer.max_epochs=2")
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    # resolved config
    saved = yaml.safe_load((out / "config_resolved.yaml").read_text())
    assert saved["model"]["num_classes"] == 10 and saved["seed"] == 0
    # checkpoint: plain data only, restores with weights_only=True
    ckpt = out / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert raw["hyper_parameters"]["run_config"]["data"]["num_classes"] == 10
    module = MultiExitModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu")
    x = torch.randn(2, 3, 32, 32)
    assert len(module.eval()(x).logits) == 4
    # CSV metrics with one column per exit
    with open(out / "csv" / "metrics.csv") as f:
        columns = next(csv.reader(f))
    for name in ("exit1", "exit2", "exit3", "exit4", "ensemble"):
        assert f"val/acc/{name}" in columns and f"test/acc/{name}" in columns
    assert (out / "exit_table.json").is_file()
    # the synthetic classes are learnable: the deep exit beats chance (0.1) clearly
    assert metrics["test/acc/exit4"] > 0.3
    # post-fit threshold search: thresholds.json next to the best checkpoint, plots, logged metrics
    result = json.loads((out / "checkpoints" / "thresholds.json").read_text())
    assert result["num_exits"] == 4 and len(result["thresholds"]) == 4
    assert result["fallback"] in ("ensemble", "deepest")
    assert {"val", "test", "budgeted", "anytime", "costs", "wall_clock"} <= set(result)
    assert len(result["budgeted"]) == 40 and sum(result["test"]["exit_fractions"]) == pytest.approx(1.0)
    assert (out / "checkpoints" / "accuracy_vs_macs.png").stat().st_size > 1000
    assert (out / "checkpoints" / "exit_histogram.png").is_file()
    for name in ("test/dynamic/accuracy", "test/dynamic/speedup_plain", "test/dynamic/exit_frac/exit1"):
        assert name in columns
    assert metrics["test/wall/speedup_batch1"] > 0

    # the evaluate command on that checkpoint: saved thresholds, then given ones
    ev = compose_evaluate(f"ckpt_path={ckpt}", "timing.images=32", "timing.repeats=1")
    saved = evaluate(ev)
    assert saved["thresholds"] == result["thresholds"]
    assert saved["test"]["accuracy"] == pytest.approx(result["test"]["accuracy"])
    given = evaluate(compose_evaluate(f"ckpt_path={ckpt}", "thresholds=[1.0,1.0,1.0,0.01]",
                                      "timing.images=32", "timing.repeats=1"))
    assert given["test"]["exit_fractions"][3] == 1.0
    assert given["test"]["accuracy"] == pytest.approx(metrics["test/acc/exit4"])
    with pytest.raises(ValueError, match="got 3 thresholds"):
        evaluate(compose_evaluate(f"ckpt_path={ckpt}", "thresholds=[0.9,0.9,0.9]"))
    (out / "other.json").write_text(json.dumps({"num_exits": 3, "thresholds": [0.9] * 3}))
    with pytest.raises(ValueError, match="another model"):
        evaluate(compose_evaluate(f"ckpt_path={ckpt}", f"thresholds_path={out / 'other.json'}"))


def test_cli_paper_experiment_fast_dev_run_on_synthetic_data(tmp_path):
    proc = run_cli("experiment=scan_cifar100_resnet18", "data=synthetic", "data.num_classes=100", "timing.images=32",
                   "trainer.fast_dev_run=true", "logger=none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Per-exit test results (scan_cifar100_resnet18)" in proc.stdout
    assert "0.5 * ce + 0.5 * kd + 6.4e-05 * hint" in proc.stdout   # the paper overlay: Eq. 1 as printed


@pytest.mark.parametrize("override,needle", [
    ("loss.terms.kd.weight=1.5", "alpha=1.5"),
    ("loss.terms.kd.temperature=-1", "temperature=-1"),
    ("loss.terms.ce_deep.weight=-0.5", "weight=-0.5"),
    ("model=resnet7", "Available options"),
])
def test_cli_bad_input_stops_before_training(tmp_path, override, needle):
    proc = run_cli("data=synthetic", override, cwd=tmp_path)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("logs/**/checkpoints"))


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


def test_cli_evaluate_rejects_a_missing_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scan_lightning.evaluate", f"ckpt_path={tmp_path / 'nope.ckpt'}"],
                          cwd=tmp_path, env={**os.environ, "SCAN_ROOT": str(tmp_path)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "nope.ckpt does not exist" in proc.stderr


def test_cli_missing_dataset_is_one_clear_error(tmp_path):
    proc = run_cli("data.source_dir=" + str(tmp_path / "no_debian_files"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("override,needle", [
    ("search.fallback=best", "fallback='best'"),
    ("search.ga.population=1", "search.ga.population=1 is out of range"),
    ("search.ga.baseline=fastest", "search.ga.baseline='fastest'"),
])
def test_bad_search_settings_stop_before_training(make_cfg, override, needle):
    from scan_lightning.train import ConfigError

    cfg = make_cfg("data=synthetic", override)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "config_resolved.yaml").exists()  # nothing ran or was written
