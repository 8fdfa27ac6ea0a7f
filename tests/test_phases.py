"""IMTA two-phase schedule: phase II trains only the classifiers' last layers, BN statistics frozen; resumable."""
from __future__ import annotations

import json
from fnmatch import fnmatch

import pytest
import torch

from scan_lightning.cli.train import train
from scan_lightning.utils.config import ConfigError

TINY = ["experiment=imta_ablation_fashion", "data=synthetic", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "phases.phase2.trainer.max_epochs=1", "data.batch_size=16"]


def net_state(path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k[4:]: v for k, v in state.items() if k.startswith("net.")}


def phase_checkpoint(out, phase: str) -> str:
    return json.loads((out / phase / "summary.json").read_text())["checkpoint"]


@pytest.mark.parametrize("isc", ["identity", "linear"])
def test_phase_two_changes_only_the_last_layers(make_cfg, tmp_path, isc):
    cfg = make_cfg(*TINY, f"imta.isc={isc}")
    metrics = train(cfg)
    assert "test/acc/exit5" in metrics
    out = tmp_path / "out"
    before, after = net_state(phase_checkpoint(out, "phase1")), net_state(out / "phase2" / "checkpoints" / "last.ckpt")
    trainable = ["heads.*.fc.*", "isc_transfers.*"]
    frozen = [k for k in after if not any(fnmatch(k, p) for p in trainable)]
    assert any("running_mean" in k for k in frozen) and any(k.startswith("backbone.") for k in frozen)
    for k in frozen:            # every frozen parameter and BatchNorm buffer, bit for bit
        assert torch.equal(before[k], after[k]), k
    assert all(not torch.equal(before[k], after[k]) for k in after if fnmatch(k, "heads.*.fc.weight") and k in before
               and before[k].shape == after[k].shape)
    if isc == "linear":         # new modules, not in phase I, trained in phase II
        assert any(k.startswith("isc_transfers.") for k in after) and not any(k.startswith("isc_") for k in before)
    assert "ofa" in (out / "phase2" / "config_resolved.yaml").read_text()


def test_rerun_skips_finished_phases_and_resumes_an_interrupted_one(make_cfg, tmp_path):
    out = tmp_path / "out"
    train(make_cfg(*TINY))
    phase1 = phase_checkpoint(out, "phase1")
    stamp = (out / "phase1" / "summary.json").stat().st_mtime_ns
    (out / "phase2" / "summary.json").unlink()           # phase II "crashed" after its first epoch
    first = torch.load(out / "phase2" / "checkpoints" / "last.ckpt", weights_only=True)
    train(make_cfg(*TINY[:-2], "phases.phase2.trainer.max_epochs=2", "data.batch_size=16"))
    assert (out / "phase1" / "summary.json").stat().st_mtime_ns == stamp   # phase I was not run again
    assert phase_checkpoint(out, "phase1") == phase1
    resumed = torch.load(out / "phase2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] > first["epoch"]                                 # continued, did not restart
    assert resumed["global_step"] == 2 * first["global_step"]


def test_a_bad_later_phase_is_rejected_before_the_first_starts(make_cfg, tmp_path, monkeypatch):
    from scan_lightning.data import SyntheticDataModule

    with pytest.raises(ConfigError, match="phase phase2: alpha=1.5 must lie in"):
        train(make_cfg(*TINY, "imta.alpha=1.5"))
    assert not (tmp_path / "out" / "phase1").exists()
    # linear ISC adds transfer modules phase I lacks; leaving them out of trainable would keep them random
    with pytest.raises(ConfigError, match="phase phase2: 28 tensors are not in the checkpoint and would stay frozen.*isc_transfers.0.0.bias"):
        train(make_cfg(*TINY, "imta.isc=linear", "phases.phase2.trainable=[heads.*.fc.*]"))
    assert not (tmp_path / "out" / "phase1").exists()
    def missing_if_noisy(self) -> None:  # stands for a phase-II dataset that is not installed
        if self.noise == 2.0:
            raise FileNotFoundError("no data for noise=2.0")

    monkeypatch.setattr(SyntheticDataModule, "prepare_data", missing_if_noisy)
    with pytest.raises(ConfigError, match="phase phase2: no data for noise=2.0"):  # checked before phase I starts
        train(make_cfg(*TINY, "+phases.phase2.data={noise: 2.0}"))
    assert not (tmp_path / "out" / "phase1").exists()
    with pytest.raises(ConfigError, match="phases.phase2.init_from='phase3' must name an earlier phase"):
        train(make_cfg(*TINY, "+phases.phase3={}", "phases.phase2.init_from=phase3"))


def test_frozen_phase_one_teacher(make_cfg, tmp_path):
    out = tmp_path / "out"
    train(make_cfg(*TINY, "phases.phase2.teacher=phase1", "phases.phase2.loss.terms.ofa.teacher=frozen"))
    teacher = torch.load(out / "phase2" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    teacher = {k[8:]: v for k, v in teacher.items() if k.startswith("teacher.")}
    phase1 = net_state(phase_checkpoint(out, "phase1"))
    assert teacher.keys() == phase1.keys() and all(torch.equal(teacher[k], phase1[k]) for k in phase1)
    with pytest.raises(ConfigError, match="loss term 'ofa' has teacher='frozen' but no teacher network is set"):
        train(make_cfg(*TINY, "phases.phase2.loss.terms.ofa.teacher=frozen"))
    with pytest.raises(ConfigError, match="a teacher network is set but no loss term uses it"):
        train(make_cfg(*TINY, "phases.phase2.teacher=phase1"))


def test_paper_recipe_composes(make_cfg):
    cfg = make_cfg("experiment=imta_msdnet_cifar100")
    assert cfg.model.backbone.num_blocks == 7 and cfg.model.gradient_equilibrium is True
    assert cfg.trainer.max_epochs == 300 and list(cfg.optim.scheduler.milestones) == [150, 225]
    assert cfg.data.batch_size == 64 and cfg.optim.optimizer.nesterov and cfg.optim.optimizer.weight_decay == 1e-4
    p2 = cfg.phases.phase2
    assert p2.trainer.max_epochs == 180 and list(p2.optim.scheduler.milestones) == [90, 135]
    assert p2.init_from == "phase1" and list(p2.trainable) == ["heads.*.fc.*", "isc_transfers.*"]
    assert p2.model.isc == "identity" and p2.loss.terms.ofa.alpha == 0.9 and p2.loss.terms.ce.exits == "deepest"
    off = make_cfg("experiment=imta_msdnet_cifar100", "imta.ofa=false")
    assert off.phases.phase2.loss.terms.ofa.alpha == 1.0     # OFA off = plain CE on the shallow exits


def test_ablation_table_script(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("table", Path(__file__).parents[1] / "experiments" / "imta_ablation_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    sweep = tmp_path / "sweep"
    for job, (ge, isc, ofa, acc) in enumerate([(True, "identity", True, 0.9), (False, None, False, 0.5)]):
        (sweep / str(job) / "phase1").mkdir(parents=True)
        (sweep / str(job) / "phase2").mkdir()
        (sweep / str(job) / "config_resolved.yaml").write_text(
            f"imta:\n  ge: {str(ge).lower()}\n  isc: {isc or 'null'}\n  ofa: {str(ofa).lower()}\n")
        for phase, a in (("phase1", acc - 0.1), ("phase2", acc)):
            metrics = {f"test/acc/exit{i}": a + i / 1000 for i in (1, 2)} | {"test/acc/ensemble": a}
            (sweep / str(job) / phase / "summary.json").write_text(json.dumps({"metrics": metrics}))
    assert table.main([str(sweep), "--out", str(tmp_path / "t")]) == 0
    rows = (tmp_path / "t.md").read_text().splitlines()[-2:]
    assert rows[0].startswith("|  |  |  | 50.10 | 50.20 | 50.00 |")          # baseline first
    assert rows[1].startswith("| x | identity | x | 90.10 | 90.20 | 90.00 |")
    assert json.loads((tmp_path / "t.json").read_text())["rows"][1]["phase1"] == [80.1, 80.2]
    assert table.main([str(tmp_path / "nowhere")]) == 2


def test_paper_experiment_smoke_runs_both_phases_under_fast_dev_run(make_cfg, tmp_path):
    cfg = make_cfg("experiment=imta_msdnet_cifar100", "data=synthetic", "data.num_classes=100", "data.batch_size=8",
                   "trainer.fast_dev_run=true", "timing.enabled=false")
    metrics = train(cfg)
    assert "test/acc/exit7" in metrics
    out = tmp_path / "out"
    phase1 = phase_checkpoint(out, "phase1")        # no best checkpoint under fast_dev_run: the final weights
    assert torch.load(phase1, weights_only=True)["hyper_parameters"]["model"]["gradient_equilibrium"] is True
    assert (out / "phase2" / "summary.json").is_file()
