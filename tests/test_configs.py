"""Every config in conf/ composes, and every object it describes instantiates."""
from __future__ import annotations

import pytest
import torch
from hydra.errors import MissingConfigException

from scan_lightning.training.builders import build_group, build_module
from scan_lightning.utils.config import build
from tests.helpers.compose import CONF, options
from tests.helpers.images import write_class_folders


def test_every_group_has_options():
    for group in ("model", "data", "loss", "optim", "trainer", "logger", "callbacks", "paths", "hydra", "experiment"):
        assert options(group), group


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_instantiate(make_cfg, tmp_path, name):
    folder = [f"data.root={write_class_folders(tmp_path / 'images', per_class=2)}"] if name == "folder" else []
    dm = build(make_cfg(f"data={name}", *folder).data)
    assert dm.num_classes >= 2 and dm.val_size >= 1


@pytest.mark.parametrize("loss", options("loss"))
@pytest.mark.parametrize("optim", options("optim"))
def test_module_instantiates_with_every_loss_and_optim(make_cfg, loss, optim):
    cfg = make_cfg(f"loss={loss}", f"optim={optim}", "data=synthetic")
    module = build_module(cfg)
    opt = module.configure_optimizers()
    optimizer = opt["optimizer"] if isinstance(opt, dict) else opt
    # every trainable parameter of the network is optimised, once, at the configured learning rate
    optimised = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(optimised) == len({id(p) for p in optimised})
    assert {id(p) for p in optimised} == {id(p) for p in module.net.parameters() if p.requires_grad}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optim.optimizer.lr)
    if cfg.optim.get("scheduler"):
        assert opt["lr_scheduler"]["scheduler"].optimizer is optimizer
    # the composer holds the configured terms with their configured weights
    terms = {name: float(term.weight) for name, term in module.criterion.terms.items()}
    assert terms == pytest.approx({name: float(cfg.loss.terms[name].weight) for name in cfg.loss.terms})


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_configs(make_cfg, name):
    cfg = make_cfg(f"trainer={name}")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("no GPU on this machine: composed only")
    trainer = build(cfg.trainer, logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("name", options("logger"))
def test_logger_configs(make_cfg, name):
    loggers = build_group(make_cfg(f"logger={name}").logger)
    assert (name == "none") == (loggers == [])
    if name == "wandb":
        assert {type(lg).__name__ for lg in loggers} == {"CSVLogger", "WandbLogger"}


@pytest.mark.parametrize("name", options("callbacks"))
def test_callback_configs(make_cfg, name):
    callbacks = build_group(make_cfg(f"callbacks={name}").callbacks)
    assert (name == "none") == (callbacks == [])


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    build(cfg.data)
    build_module(cfg)


def test_scan_cifar100_recipe(make_cfg):
    cfg = make_cfg("experiment=scan_cifar100_resnet18")
    assert cfg.data.num_classes == 100 and cfg.data.batch_size == 128 and cfg.data.val_size == 5000
    assert cfg.trainer.max_epochs == 200
    assert list(cfg.optim.scheduler.milestones) == [75, 130, 180]
    assert cfg.optim.optimizer.lr == 0.1 and cfg.optim.optimizer.momentum == 0.9
    assert cfg.optim.optimizer.weight_decay == 5e-4
    assert cfg.model.backbone.width == 1.0 and cfg.model.backbone.stem == "cifar"


@pytest.mark.parametrize("group,bad", [("model", "resnet999"), ("data", "mnist_typo")])
def test_unknown_group_option_lists_the_available_ones(make_cfg, group, bad):
    with pytest.raises(MissingConfigException) as err:
        make_cfg(f"{group}={bad}")
    msg = str(err.value)
    assert bad in msg and "Available options" in msg
    for opt in options(group):
        assert opt in msg


def test_slurm_cluster_settings_reach_the_trainer():
    """cluster=slurm: the node and GPU counts given to the launcher are Lightning's num_nodes and devices."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra is not installed")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from scan_lightning.training.builders import trainer_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            "cluster=slurm", "experiment=scan_cifar100_resnet18", "hydra.launcher.nodes=4",
            "hydra.launcher.gpus_per_node=8", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=2880"])
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (4, 8, 8)
    assert (launcher.partition, launcher.timeout_min) == ("gpu", 2880)
    HydraConfig.instance().set_config(cfg)   # what the launched job sees: ${hydra:launcher.*} resolves
    trainer_cfg = OmegaConf.create(OmegaConf.to_container(cfg.trainer, resolve=True))
    assert trainer_cfg.accelerator == "gpu" and trainer_cfg.strategy == "ddp"
    trainer_cfg.accelerator = "cpu"          # no GPU here: the same counts on CPU processes
    trainer = build(trainer_config(trainer_cfg), logger=False)
    assert trainer.num_nodes == 4 and trainer.num_devices == 8


@pytest.mark.parametrize("name", options("debug"))
def test_debug_configs_run_a_tiny_training(make_cfg, name):
    """debug=<name>: one process, no logger, anomaly detection, a short run that goes through to the summary."""
    from scan_lightning.cli.train import train

    cfg = make_cfg(f"debug={name}", "data=synthetic", "model.backbone.width=0.125", "model.bottleneck_width=8",
                   "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    assert cfg.task_name == "debug" and cfg.trainer.detect_anomaly is True and cfg.logger is None
    if name == "overfit":
        assert cfg.trainer.overfit_batches == 3
    metrics = train(cfg)
    assert "val/acc/ensemble" in metrics
