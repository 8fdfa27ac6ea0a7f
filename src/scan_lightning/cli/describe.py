"""Print a model's per-exit cost table without training: ``python -m scan_lightning.describe model=... data=...``.

``+count_elementwise=true`` counts like the MSDNet/IMTA op counter (ReLU, pooling and bias ops on top of
conv/linear MACs), the unit of their published figures.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from scan_lightning.cli.task import cli as run_cli
from scan_lightning.cli.task import run_entry_point
from scan_lightning.cost.macs import CostTable, count_params, measure_costs
from scan_lightning.data.base import input_shape
from scan_lightning.reporting.tables import exit_rows, render_exit_table
from scan_lightning.training.builders import fill_from_data
from scan_lightning.utils.config import build
from scan_lightning.utils.defaults import config_dir
from scan_lightning.utils.logs import get_logger

log = get_logger(__name__)


def describe(cfg: DictConfig) -> CostTable:
    """Build ``cfg.model`` for ``cfg.data``'s input shape; log cumulative MACs and params per exit. A data config
    that leaves the class count to the data (``data=folder``) is asked for it first."""
    if cfg.data.get("num_classes") is None:
        fill_from_data(cfg, build(cfg.data))
    net = build(cfg.model)
    elementwise = bool(cfg.get("count_elementwise"))
    costs = measure_costs(net, input_shape(cfg.data), elementwise)
    name = cfg.model.backbone.get("model") or cfg.model.backbone.name
    unit = " (MSDNet op-counter convention)" if elementwise else ""
    log.info(render_exit_table(exit_rows(costs, {}), f"{name} at {cfg.data.image_size}px, {cfg.data.num_classes} "
                               f"classes{unit}", costs.plain_macs))
    plain_params = count_params(net.backbone) + count_params(net.heads[-1])
    log.info(f"plain network (backbone + final classifier): {plain_params / 1e6:.2f} M params, "
          f"{costs.plain_macs / 1e9:.3f} G MACs; backbone alone {costs.backbone_macs / 1e9:.3f} G MACs")
    return costs


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="describe")
def main(cfg: DictConfig) -> None:
    """The Hydra main of ``describe``."""
    run_entry_point(describe, cfg)


def cli() -> None:
    """The console command (``scan-describe``, ``python -m scan_lightning.describe``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
