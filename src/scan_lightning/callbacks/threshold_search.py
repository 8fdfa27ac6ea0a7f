"""Post-fit threshold search on the held-out validation split; thresholds applied to the test set."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from scan_lightning.finetune import network_state
from scan_lightning.inference.analysis import (
    check_search,
    save_thresholds,
    search_and_score,
)
from scan_lightning.inference.cache import ExitCache, collect_outputs
from scan_lightning.inference.cost import CostTable, measure_costs
from scan_lightning.models.multi_exit import MultiExitNetwork
from scan_lightning.plots import plot_accuracy_vs_macs, plot_exit_histogram


def best_network(trainer: pl.Trainer, pl_module: pl.LightningModule) -> MultiExitNetwork:
    """The network with the selected (best) checkpoint's weights; the current ones under fast_dev_run."""
    cb = trainer.checkpoint_callback
    best = cb.best_model_path if cb is not None else ""
    if not best:
        return pl_module.net
    net = copy.deepcopy(pl_module.net)
    net.load_state_dict(network_state(torch.load(best, map_location=pl_module.device, weights_only=True)))
    return net


class ThresholdSearch(pl.Callback):
    """After fit, on rank 0: GA + budgeted search on validation outputs, scored on test, logged and saved.

    Writes ``thresholds.json`` next to the best checkpoint (the run's output dir under fast_dev_run)
    plus two PNG plots, and logs ``test/dynamic/*`` metrics through ``trainer.loggers``.
    """

    def __init__(self, search: dict[str, Any], input_shape: list[int]) -> None:
        super().__init__()
        check_search(search)
        self.search = dict(search)
        self.input_shape = tuple(input_shape)
        self.result: dict[str, Any] | None = None
        self.caches: tuple[ExitCache, ExitCache] | None = None
        self.net: MultiExitNetwork | None = None
        self.costs: CostTable | None = None
        self.path: Path | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or trainer.datamodule is None:
            return
        dm = trainer.datamodule
        net = best_network(trainer, pl_module)
        dm.setup("test")
        val = collect_outputs(net, dm.val_dataloader(), pl_module.device)
        test = collect_outputs(net, dm.test_dataloader(), pl_module.device)
        costs = measure_costs(net, self.input_shape)
        result = search_and_score(val, test, costs, self.search)
        cb = trainer.checkpoint_callback
        out_dir = Path(cb.best_model_path).parent if cb is not None and cb.best_model_path else Path(trainer.default_root_dir)
        self.path = out_dir / "thresholds.json"
        save_thresholds(result, self.path)
        self.result, self.caches, self.net, self.costs = result, (val, test), net, costs
        self._log(trainer, result, out_dir)

    def _log(self, trainer: pl.Trainer, result: dict[str, Any], out_dir: Path) -> None:
        t = result["test"]
        metrics = {f"test/dynamic/{k}": t[k] for k in ("accuracy", "mean_macs", "speedup_plain", "speedup_deepest")}
        names = [f"exit{i + 1}" for i in range(result["num_exits"])] + ["fallback"]
        metrics.update({f"test/dynamic/exit_frac/{n}": f for n, f in zip(names, t["exit_fractions"])})
        metrics.update({f"val/dynamic/{k}": result["val"][k] for k in ("accuracy", "mean_macs", "speedup_plain")})
        plots = [plot_accuracy_vs_macs(result, out_dir / "accuracy_vs_macs.png"),
                 plot_exit_histogram(result, out_dir / "exit_histogram.png")]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if hasattr(logger, "log_image"):
                for p in plots:
                    logger.log_image(key=f"dynamic/{p.stem}", images=[str(p)], step=trainer.global_step)
            logger.save()
