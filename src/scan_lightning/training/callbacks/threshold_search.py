"""Post-fit threshold search on the held-out validation split; thresholds applied to the test set."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from scan_lightning.evaluation.analysis import check_search
from scan_lightning.evaluation.pipeline import check_timing, run_post_fit
from scan_lightning.models.multi_exit import MultiExitNetwork
from scan_lightning.models.outputs import exit_name, exit_names
from scan_lightning.reporting.dashboard import log_post_fit
from scan_lightning.reporting.plots import run_title
from scan_lightning.reporting.tables import render_dynamic_summary
from scan_lightning.training.checkpoints import network_state, selected_checkpoint
from scan_lightning.utils.logs import get_logger

log = get_logger(__name__)


def best_network(trainer: pl.Trainer, pl_module: pl.LightningModule) -> MultiExitNetwork:
    """The network with the selected (best) checkpoint's weights; the current ones under fast_dev_run."""
    best = selected_checkpoint(trainer)
    if not best:
        return pl_module.net
    net = copy.deepcopy(pl_module.net)
    net.load_state_dict(network_state(torch.load(best, map_location=pl_module.device, weights_only=True)))
    return net


class ThresholdSearch(pl.Callback):
    """After fit, on rank 0: the post-fit pipeline (:func:`run_post_fit`) on the selected network.

    Writes ``thresholds.json`` (:meth:`result_path`: next to the best checkpoint, or in the run's output dir under
    fast_dev_run) plus two PNG plots, logs the summary, and logs ``test/dynamic/*`` (and ``test/wall/*`` with
    ``timing.enabled``) through ``trainer.loggers``; W&B loggers also get the figures, the budgeted curve and the
    policy (:func:`~scan_lightning.reporting.dashboard.log_post_fit`). Under DDP it reads the whole validation and test sets on
    rank 0 alone, so every number counts every sample once.
    """

    def __init__(self, search: dict[str, Any], input_shape: list[int], timing: dict[str, Any] | None = None) -> None:
        super().__init__()
        check_search(search)
        self.timing = dict(timing or {"enabled": False})
        check_timing(self.timing)
        self.search = dict(search)
        self.input_shape = tuple(input_shape)
        self.result: dict[str, Any] | None = None
        self.metrics: dict[str, float] = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or trainer.datamodule is None:
            return
        dm = trainer.datamodule
        dm.setup("test")
        out_dir = self.result_path(trainer).parent
        val, test = ((dm.eval_dataloader("val"), dm.eval_dataloader("test")) if hasattr(dm, "eval_dataloader")
                     else (dm.val_dataloader(), dm.test_dataloader()))
        title = run_title(pl_module.hparams.get("run_config"))
        self.result = run_post_fit(best_network(trainer, pl_module), val, test, self.input_shape, self.search,
                                   self.timing, out_dir=out_dir, device=pl_module.device, title=title)
        log.info(render_dynamic_summary(self.result))
        self.metrics = dynamic_metrics(self.result)
        log_post_fit(trainer.loggers, self.result, title, step=trainer.global_step)
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics, step=trainer.global_step)
            logger.save()


    @staticmethod
    def result_path(trainer: pl.Trainer) -> Path:
        """Where the post-fit result (``thresholds.json``) of this trainer's run is written."""
        best = selected_checkpoint(trainer)
        return (Path(best).parent if best else Path(trainer.default_root_dir)) / "thresholds.json"


def dynamic_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The scalars worth logging from a post-fit result."""
    t = result["test"]
    metrics = {f"test/dynamic/{k}": t[k] for k in ("accuracy", "mean_macs", "speedup_plain", "speedup_deepest",
                                                    "mean_ms", "latency_speedup_plain") if k in t}
    names = exit_names(result["num_exits"], "fallback")
    metrics.update({f"test/dynamic/exit_frac/{n}": f for n, f in zip(names, t["exit_fractions"])})
    metrics.update({f"val/dynamic/{k}": result["val"][k] for k in ("accuracy", "mean_macs", "speedup_plain")})
    for i, temp in enumerate(result["temperatures"]):
        metrics[f"val/calibration/temperature/{exit_name(i)}"] = temp
    for w in result.get("wall_clock", []):
        metrics[f"test/wall/speedup_batch{w['batch_size']}"] = w["wall_speedup"]
        metrics[f"test/wall/early_exit_images_per_s_batch{w['batch_size']}"] = w["early_exit"]["images_per_s"]
    return metrics
