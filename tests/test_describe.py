"""describe: a model's per-exit cost table from the command line, writing nothing; the model summary's FLOPs."""
from __future__ import annotations

import os
import subprocess
import sys

from scan_lightning.cost.macs import measure_costs
from scan_lightning.training.builders import build_module


def test_describe_prints_the_table_and_writes_nothing(tmp_path):
    env = {**os.environ, "SCAN_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "scan_lightning.describe", "data=synthetic",
                           "model.backbone.width=0.125", "model.bottleneck_width=8"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ensemble" in proc.stdout and "plain network (backbone + final classifier)" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_describe_rejects_a_bad_override_with_status_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scan_lightning.describe", "model=resnet7"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Could not find 'model/resnet7'" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_model_summary_counts_the_network_flops(make_cfg):
    """Lightning's summary reads ``example_input_array`` (one image): its FLOPs are twice the network's MACs with
    every exit run (the ensemble's cost)."""
    from pytorch_lightning.utilities.model_summary import ModelSummary

    cfg = make_cfg("data=synthetic", "model.backbone.width=0.125", "model.bottleneck_width=8")
    module = build_module(cfg)
    assert tuple(module.example_input_array.shape) == (1, 3, 32, 32)
    flops = ModelSummary(module).total_flops
    macs = measure_costs(module.net, (3, 32, 32)).exits[-1].cumulative_macs
    assert abs(flops / 2 - macs) <= 0.02 * macs
