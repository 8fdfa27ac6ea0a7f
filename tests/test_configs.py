"""Every config in conf/ composes, and every object it describes instantiates."""
from __future__ import annotations

import pytest
import torch
from hydra.errors import MissingConfigException

from scan_lightning.config import build
from scan_lightning.train import _build_group, build_module
from tests.conftest import CONF


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in ("model", "data", "loss", "optim", "trainer", "logger", "callbacks", "paths", "hydra", "experiment"):
        assert options(group), group


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_instantiate(make_cfg, name):
    dm = build(make_cfg(f"data={name}").data)
    assert dm.num_classes >= 2 and dm.val_size >= 1


@pytest.mark.parametrize("loss", options("loss"))
@pytest.mark.parametrize("optim", options("optim"))
def test_module_instantiates_with_every_loss_and_optim(make_cfg, loss, optim):
    module = build_module(make_cfg(f"loss={loss}", f"optim={optim}", "data=synthetic"))
    opt = module.configure_optimizers()
    assert opt is not None
    assert str(module.criterion)


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_configs(make_cfg, name):
    cfg = make_cfg(f"trainer={name}")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("no GPU on this machine: composed only")
    trainer = build(cfg.trainer, logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("name", options("logger"))
def test_logger_configs(make_cfg, name):
    loggers = _build_group(make_cfg(f"logger={name}").logger)
    assert (name == "none") == (loggers == [])
    if name == "wandb":
        assert {type(lg).__name__ for lg in loggers} == {"CSVLogger", "WandbLogger"}


@pytest.mark.parametrize("name", options("callbacks"))
def test_callback_configs(make_cfg, name):
    callbacks = _build_group(make_cfg(f"callbacks={name}").callbacks)
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
