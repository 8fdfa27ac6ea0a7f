"""cli/train.py end to end on synthetic data: a fast_dev_run, what the shared two-epoch run leaves (resolved config,
one CSV column per exit, learned classes), the CLI (a paper overlay; bad input stops before training). Slow: a
short real Fashion-MNIST run beats chance at every exit (needs `make data`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from scan_lightning.cli.train import train
from scan_lightning.data.fashion_mnist import DEBIAN_DIR, IDX_FILES
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


def test_short_run_saves_the_resolved_config(short_run):
    saved = yaml.safe_load((short_run.out / "config_resolved.yaml").read_text())
    assert saved["model"]["num_classes"] == 10 and saved["seed"] == 0


def test_short_run_logs_one_csv_column_per_exit(short_run):
    columns = short_run.csv_columns
    for name in ("exit1", "exit2", "exit3", "exit4", "ensemble"):
        assert f"val/acc/{name}" in columns and f"test/acc/{name}" in columns


def test_short_run_learns_the_synthetic_classes(short_run):
    # the synthetic classes are learnable: the deep exit beats chance (0.1) clearly
    assert short_run.metrics["test/acc/exit4"] > 0.3


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


@pytest.fixture
def fashion_source() -> str:
    if not all((Path(DEBIAN_DIR) / f"{n}.gz").is_file() for n in IDX_FILES):
        pytest.skip("Fashion-MNIST is not installed (make data)")
    return DEBIAN_DIR


@pytest.mark.slow
def test_short_fashion_mnist_run_beats_chance_at_every_exit(make_cfg, fashion_source):
    cfg = make_cfg("data.max_train_samples=6000", "trainer.max_epochs=2", "timing.images=256")
    metrics = train(cfg)
    for i in range(1, 5):
        assert metrics[f"test/acc/exit{i}"] > 0.5  # chance is 0.1
    result = json.loads(next(Path(cfg.paths.output_dir).rglob("thresholds.json")).read_text())
    assert result["test"]["speedup_plain"] > 1.0
