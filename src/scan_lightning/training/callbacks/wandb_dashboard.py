"""The W&B dashboard during fit: per-exit curves on the epoch axis, attention maps every N epochs."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch

from scan_lightning.models.attention_maps import attention_exits, attention_maps
from scan_lightning.reporting.dashboard import define_exit_metrics, wandb_loggers
from scan_lightning.reporting.plots import figure_attention_maps, run_title
from scan_lightning.utils.modes import eval_mode

if TYPE_CHECKING:
    from scan_lightning.training.module import MultiExitModule


class WandbDashboard(pl.Callback):
    """Does nothing without a ``WandbLogger``. With one, on rank 0:

    - at setup: the per-exit validation / test accuracies and losses are plotted against ``epoch``, the best
      validation accuracy per exit kept in the summary (:func:`~scan_lightning.reporting.dashboard.define_exit_metrics`);
    - every ``attention_every_n_epochs`` epochs (``None`` / 0: never): each attention exit's mask on the first
      ``attention_images`` validation images (a fixed set: the validation split is not shuffled) as
      ``attention/maps``; networks without attention modules log none;
    - ``log_checkpoint``: after the run, ``train()`` logs the selected checkpoint with its ``thresholds.json`` as a
      ``model`` artifact (:func:`~scan_lightning.reporting.dashboard.log_checkpoint`).
    """

    def __init__(self, attention_every_n_epochs: int | None = 5, attention_images: int = 8,
                 log_checkpoint: bool = False) -> None:
        super().__init__()
        if attention_every_n_epochs is not None and attention_every_n_epochs < 0:
            raise ValueError(f"attention_every_n_epochs={attention_every_n_epochs} must be >= 0 (0 or null: off)")
        if attention_images < 1:
            raise ValueError(f"attention_images={attention_images} must be >= 1")
        self.every = attention_every_n_epochs or 0
        self.attention_images = attention_images
        self.log_checkpoint = log_checkpoint
        self.images: torch.Tensor | None = None

    def _active(self, trainer: pl.Trainer) -> bool:
        return trainer.is_global_zero and bool(wandb_loggers(trainer.loggers))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """At the start of fit, on rank 0 with a W&B logger: define the per-exit metrics against ``epoch``."""
        if stage == "fit" and self._active(trainer):
            module = cast("MultiExitModule", pl_module)
            define_exit_metrics(trainer.loggers, module.metric_names, list(module.criterion.terms))

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        """Keep the first ``attention_images`` images of the first validation batch, once, when attention maps are to be
        logged."""
        if self.images is None and batch_idx == 0 and self.every and self._active(trainer):
            self.images = batch[0][: self.attention_images].detach().cpu()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Every ``attention_every_n_epochs`` epochs: log the attention maps of the kept images to W&B (not in the
        sanity check, not for networks without attention)."""
        due = self.every and (trainer.current_epoch + 1) % self.every == 0
        if not due or trainer.sanity_checking or self.images is None or not self._active(trainer):
            return
        net = cast("MultiExitModule", pl_module).net
        if not attention_exits(net):
            return
        with eval_mode(net):
            maps = attention_maps(net, self.images.to(pl_module.device))
        title = f"{run_title(pl_module.hparams.get('run_config'))} | epoch {trainer.current_epoch}".lstrip(" |")
        fig = figure_attention_maps(self.images, maps, title)
        for lg in wandb_loggers(trainer.loggers):
            lg.log_image("attention/maps", [fig], step=trainer.global_step)
        plt.close(fig)
