"""Shared fixtures: compose the real configs into a tmp output dir, small synthetic data by default."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from scan_lightning.config import config_dir

CONF = config_dir()


def compose_cfg(overrides: list[str], tmp_path: Path) -> DictConfig:
    """Compose ``train.yaml`` with overrides; outputs and data under ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.paths.data_dir = str(tmp_path / "data")
        cfg.paths.log_dir = str(tmp_path / "logs")
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str) -> DictConfig:
        return compose_cfg(list(overrides), tmp_path)
    return _make


@pytest.fixture(autouse=True)
def _small_torch():
    torch.manual_seed(0)
    yield
