"""checkpoints.py and the checkpoints a run writes: plain data that restores with weights_only=True; foreign or
corrupt files refused by name; last.ckpt is the latest epoch whatever the monitored metric did."""
from __future__ import annotations

import torch

from scan_lightning.module import MultiExitModule


def test_short_run_checkpoint_is_plain_data_and_restores_with_weights_only(short_run):
    raw = torch.load(short_run.ckpt, weights_only=True, map_location="cpu")
    assert raw["hyper_parameters"]["run_config"]["data"]["num_classes"] == 10
    module = MultiExitModule.load_from_checkpoint(short_run.ckpt, weights_only=True, map_location="cpu")
    x = torch.randn(2, 3, 32, 32)
    assert len(module.eval()(x).logits) == 4
