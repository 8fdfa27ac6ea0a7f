"""Shared fixtures: compose the real configs into a tmp output dir, small synthetic data by default. The helpers
they use live in ``tests/helpers``."""
from __future__ import annotations

import pytest
import torch
from omegaconf import DictConfig

pytest.register_assert_rewrite("tests.helpers")   # plain asserts in the helpers report their values too

from tests.helpers.compose import compose_cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str) -> DictConfig:
        return compose_cfg(list(overrides), tmp_path)
    return _make


@pytest.fixture(autouse=True)
def _small_torch():
    torch.manual_seed(0)
    yield
