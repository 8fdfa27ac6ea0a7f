"""Slow: real Fashion-MNIST training (needs `make data`). Run with `make test-slow`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scan_lightning.data.fashion_mnist import DEBIAN_DIR, IDX_FILES
from scan_lightning.train import train

pytestmark = pytest.mark.slow


@pytest.fixture
def fashion_source() -> str:
    if not all((Path(DEBIAN_DIR) / f"{n}.gz").is_file() for n in IDX_FILES):
        pytest.skip("Fashion-MNIST is not installed (make data)")
    return DEBIAN_DIR


def test_short_fashion_mnist_run_beats_chance_at_every_exit(make_cfg, fashion_source):
    cfg = make_cfg("data.max_train_samples=6000", "trainer.max_epochs=2", "timing.images=256")
    metrics = train(cfg)
    for i in range(1, 5):
        assert metrics[f"test/acc/exit{i}"] > 0.5  # chance is 0.1
    result = json.loads(next(Path(cfg.paths.output_dir).rglob("thresholds.json")).read_text())
    assert result["test"]["speedup_plain"] > 1.0
