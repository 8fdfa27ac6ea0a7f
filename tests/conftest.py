"""Shared fixtures: compose the real configs into a tmp output dir, small synthetic data by default; one short
training run shared by the tests of what a finished run leaves. The helpers they use live in ``tests/helpers``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

pytest.register_assert_rewrite("tests.helpers")   # plain asserts in the helpers report their values too

from scan_lightning.cli.train import train
from tests.helpers.compose import compose_cfg
from tests.helpers.runs import FAST, ShortRun


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str) -> DictConfig:
        return compose_cfg(list(overrides), tmp_path)
    return _make


@pytest.fixture(autouse=True)
def _small_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def short_run(tmp_path_factory) -> ShortRun:
    """Two epochs of a FAST run on synthetic data with the default callbacks (post-fit threshold search, plots,
    wall clock) and the CSV logger. Trained once per session, on first use; tests only read it (test_train,
    test_checkpoint, test_callback, test_report, test_plots, test_evaluate)."""
    cfg = compose_cfg([*FAST, "trainer.max_epochs=2"], tmp_path_factory.mktemp("short_run"))
    torch.manual_seed(0)
    metrics = train(cfg)
    return ShortRun(cfg, Path(cfg.paths.output_dir), metrics)


@pytest.fixture
def one_thread():
    """One intra-op thread: for tiny networks on a busy 2-core machine a second OpenMP thread waiting at every
    barrier made a one-epoch run ~10x slower (4 s -> 40 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
