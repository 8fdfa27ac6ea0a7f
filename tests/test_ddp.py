"""DDP on two CPU processes (gloo), as a user runs it: ``trainer=ddp trainer.accelerator=cpu trainer.devices=2``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scan_lightning.cli.evaluate import evaluate
from tests.helpers.compose import compose_evaluate
from tests.helpers.runs import run_cli

TEST_SAMPLES = 101   # odd: a padding sampler would evaluate one test image twice


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    proc = run_cli("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data=synthetic", "data.noise=3.0",
                   f"data.test_samples={TEST_SAMPLES}", "data.val_size=63", "model.backbone.width=0.125",
                   "model.bottleneck_width=8", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                   "timing.enabled=false", "logger=csv", cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = root.glob("logs/train/runs/*")
    return root, run_dir


def test_ddp_reports_each_test_image_once(ddp_run):
    root, run_dir = ddp_run
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["metrics"]
    # a single process evaluating the same checkpoint on the whole test set gives the same accuracies
    single = evaluate(compose_evaluate(f"ckpt_path={summary['checkpoint']}", "timing.enabled=false"))
    for row in single.anytime:
        assert 0.0 < row.accuracy < 1.0
        assert metrics[f"test/acc/{row.exit}"] == pytest.approx(row.accuracy, abs=1e-6), row.exit
    # the post-fit pass ran once, on rank 0, over the whole sets
    assert "test/dynamic/accuracy" in metrics
    assert "test/loss/total" in metrics


def test_ddp_writes_and_logs_on_rank_zero_only(ddp_run):
    _, run_dir = ddp_run
    log = (run_dir / "train.log").read_text()
    assert log.count("Per-exit test results") == 1 and log.count("Dynamic inference") == 1
    assert "sync_batchnorm: off" in log
    assert not any("Per-exit" in p.read_text() for p in run_dir.glob("*.log") if p.name != "train.log")
    assert len(list(run_dir.rglob("thresholds.json"))) == 1


def test_ddp_spawn_keeps_the_post_fit_summary(tmp_path):
    proc = run_cli("trainer=ddp", "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2",
                   "data=synthetic", f"data.test_samples={TEST_SAMPLES}", "data.val_size=63",
                   "model.backbone.width=0.125", "model.bottleneck_width=8", "trainer.max_epochs=1",
                   "trainer.limit_train_batches=2", "timing.enabled=false", "logger=csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = tmp_path.glob("logs/train/runs/*")
    assert "test/dynamic/accuracy" in json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert (run_dir / "train.log").read_text().count("Dynamic inference") == 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sdn", "pbee", "ztw", "boost"])
def test_each_method_trains_under_ddp(tmp_path, method):
    """Every parameter of each method takes part in the loss, so DDP (no find_unused_parameters) trains it."""
    proc = run_cli(f"method={method}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data=synthetic",
                   "data.val_size=63", "model.backbone.width=0.125", "model.bottleneck_width=8",
                   "trainer.max_epochs=1", "trainer.limit_train_batches=2", "timing.enabled=false",
                   "callbacks.threshold_search=null", "logger=none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = tmp_path.glob("logs/train/runs/*")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
