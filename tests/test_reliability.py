"""Runs that go wrong end loudly and lose nothing: divergence, signals, resume in the same directory, bad input."""
from __future__ import annotations

import csv
import json
import signal
import time
from pathlib import Path

import pytest
import torch

from scan_lightning.cli.train import train
from scan_lightning.training.module import TrainingDiverged
from scan_lightning.utils.config import ConfigError, RunStopped
from tests.helpers.compose import compose_cfg
from tests.helpers.runs import FAST, run_cli, start_run


def test_nan_loss_stops_the_run_naming_step_and_exits(make_cfg):
    cfg = make_cfg(*FAST, "optim.optimizer.lr=1e12", "trainer.max_epochs=3", "timing.enabled=false")
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+ \(epoch \d\).*exit\d"):
        train(cfg)
    out = Path(cfg.paths.output_dir)
    assert not (out / "summary.json").exists()
    for ckpt in out.rglob("*.ckpt"):   # whatever was saved before the step that broke holds finite weights
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt.name


def test_cli_diverging_run_exits_non_zero_with_the_reason(tmp_path):
    proc = run_cli(*FAST, "optim.optimizer.lr=1e12", "trainer.max_epochs=2", "timing.enabled=false", "logger=none",
                   cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Run stopped: training diverged at step" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_a_partial_summary_then_resumes(tmp_path, sig):
    proc = start_run(tmp_path, "trainer.max_epochs=200")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (ckpt_dir / "last.ckpt").is_file():   # an epoch has finished: training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + int(sig), stderr[-2000:]
    assert f"Run stopped: {sig.name} at step" in stderr and "resume with ckpt_path=" in stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == sig.name
    assert summary["checkpoint"] == str(ckpt_dir / "interrupted.ckpt") and summary["global_step"] > 0
    saved = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    assert saved["global_step"] == summary["global_step"]
    metrics_csv = tmp_path / "run" / "csv" / "metrics.csv"
    before = metrics_csv.read_text().splitlines()
    # the run resumes from it in the same directory and finishes, keeping what the first attempt wrote
    resumed = start_run(tmp_path, f"trainer.max_epochs={saved['epoch'] + 2}", f"ckpt_path={summary['checkpoint']}")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"
    with metrics_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > len(before) - 1 and any(r["epoch"] == "0" for r in rows)
    logged = [(r["epoch"], r["step"], tuple(k for k, v in r.items() if v)) for r in rows]
    assert len(logged) == len(set(logged)), "a row was logged twice"
    assert len(list((tmp_path / "run" / ".hydra").iterdir())) == 2   # both attempts' composed configs


@pytest.mark.parametrize("override,needle", [
    ("model.exit_after=[3,1]", "model.exit_after=[3, 1] must be increasing"),
    ("model.exit_after=[2,2]", "model.exit_after=[2, 2] must be increasing"),
    ("model.exit_after=[]", "model.exit_after=[] names no section"),
    ("model.num_classes=7", "model.num_classes=7 but the data has 10 classes"),
    ("data.batch_size=abc", "data.batch_size='abc' must be an integer >= 1"),
    ("data.max_train_samples=0", "data.max_train_samples=0 must be an integer >= 1 (or null"),
    ("data.batch_size=0", "data.batch_size=0 must be an integer >= 1"),
    ("data.val_size=0", "data.val_size=0 must be an integer >= 1"),
    ("data.val_size=100000", "data.val_size=100000 must be smaller than the training set (320 samples)"),
    ("ckpt_path=/nonexistent/last.ckpt", "ckpt_path=/nonexistent/last.ckpt does not exist"),
    ("callbacks.model_checkpoint.monitor=val/acc/exit9", "monitors 'val/acc/exit9', which this run never logs"),
    ("optim.optimizer.lr=-0.1", "Invalid learning rate: -0.1 (config key: optim.optimizer"),
])
def test_bad_input_is_one_clear_error_before_work_starts(make_cfg, override, needle):
    cfg = make_cfg(*FAST, override)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert needle in str(err.value)
    assert not Path(cfg.paths.output_dir).exists()   # nothing written


def test_run_killed_mid_training_resumes_to_the_same_weights_and_metrics(tmp_path):
    """SIGKILL (no handler can run) after the first epoch's checkpoint, resume from last.ckpt in the same run dir:
    the final weights and metrics equal those of an uninterrupted run of the same seed."""
    args = ("trainer.max_epochs=3", "~callbacks.threshold_search", "data.train_samples=640")
    whole = start_run(tmp_path / "whole", *args)
    assert whole.wait(timeout=300) == 0, whole.communicate()[1][-2000:]

    killed = start_run(tmp_path / "killed", *args)
    last = tmp_path / "killed" / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.is_file():
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[1][-2000:]
        time.sleep(0.05)
    time.sleep(0.5)              # let the checkpoint file be complete; training goes on into the next epoch
    killed.kill()
    killed.wait(timeout=60)
    epoch_at_kill = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    resumed = start_run(tmp_path / "killed", *args, f"ckpt_path={last}")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]

    def final(root: Path) -> tuple[dict, dict]:
        summary = json.loads((root / "run" / "summary.json").read_text())
        state = torch.load(root / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        return summary["metrics"], state["state_dict"]

    (m_whole, w_whole), (m_resumed, w_resumed) = final(tmp_path / "whole"), final(tmp_path / "killed")
    assert epoch_at_kill < 2
    assert max((w_whole[k].double() - w_resumed[k].double()).abs().max().item() for k in w_whole) <= 1e-6
    for key in ("val/acc/ensemble", "test/acc/exit1", "test/acc/ensemble", "test/loss/total"):
        assert m_resumed[key] == pytest.approx(m_whole[key], abs=1e-6), key


@pytest.mark.parametrize("override,needle", [
    ("data.batchsize=3", "Could not override 'data.batchsize'"),          # typo'd key
    ("model=resnet7", "Could not find 'model/resnet7'"),                  # unknown group option
    ("seed=[1", "no viable alternative"),                                 # an override Hydra cannot parse
    ("hydra.run.dir=/dev/null/run", "Cannot create the run directory /dev/null/run"),  # unwritable output dir
])
def test_overrides_hydra_cannot_compose_exit_with_status_2(tmp_path, override, needle):
    proc = run_cli(override, cwd=tmp_path)
    assert proc.returncode == 2 and needle in proc.stderr, (proc.returncode, proc.stderr[-1000:])
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "logs").exists()


def test_run_stopped_by_sigterm_mid_epoch_resumes_to_the_same_weights_and_generators(tmp_path):
    """SIGTERM in the middle of epoch 1 writes interrupted.ckpt; rerunning in the same directory continues that
    epoch's shuffled order where it stopped and ends with the uninterrupted run's weights, metrics and generator
    states (a resumed pass that drew a new order, or one draw more, would not)."""
    args = [*FAST, "trainer.max_epochs=2", "~callbacks.threshold_search", "timing.enabled=false", "logger=csv"]
    whole = compose_cfg(args, tmp_path / "whole")
    train(whole)
    stopped = compose_cfg([*args, "+callbacks.sigterm._target_=tests.helpers.runs.SigtermAtStep",
                           "+callbacks.sigterm.step=13"], tmp_path / "stopped")   # 8 batches per epoch
    with pytest.raises(RunStopped, match="SIGTERM at step 13"):
        train(stopped)
    out = Path(stopped.paths.output_dir)
    saved = torch.load(out / "checkpoints" / "interrupted.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1 and saved["SyntheticDataModule"]["train_order"]["samples_done"] == 5 * 32
    train(compose_cfg(args, tmp_path / "stopped"))    # resumes from interrupted.ckpt

    def final(cfg) -> tuple[dict, dict]:
        root = Path(cfg.paths.output_dir)
        state = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        return json.loads((root / "summary.json").read_text())["metrics"], state

    (m_whole, c_whole), (m_resumed, c_resumed) = final(whole), final(stopped)
    assert c_resumed["global_step"] == c_whole["global_step"] == 16
    w_whole, w_resumed = c_whole["state_dict"], c_resumed["state_dict"]
    assert max((w_whole[k].double() - w_resumed[k].double()).abs().max().item() for k in w_whole) <= 1e-6
    rng = next(k for k in c_whole["callbacks"] if k.startswith("RngState"))
    assert torch.equal(c_whole["callbacks"][rng]["torch"], c_resumed["callbacks"][rng]["torch"])
    for key in ("val/acc/ensemble", "test/acc/exit1", "test/loss/total"):
        assert m_resumed[key] == pytest.approx(m_whole[key], abs=1e-6), key


def test_a_finished_run_is_reused_only_by_the_same_config(make_cfg):
    """A sweep started again in its sweep dir skips finished jobs; a job number now holding other overrides is
    refused by name instead of handing back another run's metrics."""
    args = (*FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "~callbacks.threshold_search",
            "timing.enabled=false", "test=false")
    first = train(make_cfg(*args))
    assert train(make_cfg(*args, "logger=none")) == first          # the same run (loggers do not count): skipped
    with pytest.raises(ConfigError, match=r"holds a run of another config \(.*\bseed=0 -> 1\)"):
        train(make_cfg(*args, "seed=1"))
    saved = Path(make_cfg(*args).paths.output_dir) / "config_resolved.yaml"   # the sweep dir moved elsewhere
    saved.write_text(saved.read_text().replace("default_root_dir: ", "default_root_dir: /elsewhere"))
    assert train(make_cfg(*args)) == first
