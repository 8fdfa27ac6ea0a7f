"""Composing the real configs in ``conf/`` (train, evaluate, export) the way the entry points do."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from scan_lightning.utils.defaults import config_dir

CONF = config_dir()


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with ``overrides`` (Hydra's global state cleared before and after)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def compose_cfg(overrides: list[str], tmp_path: Path) -> DictConfig:
    """Compose ``train.yaml`` with overrides; outputs and data under ``tmp_path``."""
    cfg = compose_config("train", overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.paths.data_dir = str(tmp_path / "data")
        cfg.paths.log_dir = str(tmp_path / "logs")
    return cfg


def compose_evaluate(*overrides: str) -> DictConfig:
    """Compose ``evaluate.yaml`` (the evaluate command writes nothing unless ``output=`` is given)."""
    return compose_config("evaluate", list(overrides))


def compose_export(*overrides: str) -> DictConfig:
    """Compose ``export.yaml``."""
    return compose_config("export", list(overrides))


def options(group: str) -> list[str]:
    """The options of a config group: the names of ``conf/<group>/*.yaml``."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))
