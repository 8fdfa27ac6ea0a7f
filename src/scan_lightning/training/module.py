"""LightningModule glue: build network and loss from plain config, step, log per-exit metrics."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from scan_lightning.losses import LossComposer
from scan_lightning.models.multi_exit import MultiExitNetwork
from scan_lightning.models.outputs import ExitOutputs, exit_name, exit_names
from scan_lightning.training.checkpoints import architecture_only, read_checkpoint
from scan_lightning.training.finetune import freeze_except, frozen_batchnorms
from scan_lightning.utils.config import RunStopped, build
from scan_lightning.utils.logs import get_logger

STAGES = ("train", "val", "test")


class TrainingDiverged(RunStopped):
    """The training loss became NaN or infinite: the run stops at that step, naming the broken terms and exits."""


log = get_logger(__name__)


class MultiExitModule(pl.LightningModule):
    """Trains a :class:`MultiExitNetwork` with a :class:`LossComposer`.

    Args are plain dicts (Hydra nodes converted by the caller) so checkpoints hold only plain data:
        model: config of the network (``_target_`` MultiExitNetwork).
        loss: config of the composer (``_target_`` LossComposer with named ``terms``).
        optim: ``optimizer`` and optional ``scheduler`` partial configs.
        run_config: the whole resolved run config, stored for reproducibility and evaluation.
        trainable: glob patterns of the parameters to train (e.g. ``heads.*.fc.*``); the rest is frozen,
            BatchNorm running statistics included. ``None`` = train everything.
        teacher_model: config of a frozen network whose deepest exit teaches ``OneForAll(teacher="frozen")``
            terms; its weights are loaded by the caller (and saved in this module's checkpoints).
        compile: run the training forward through ``torch.compile`` (validation, testing and the post-fit pass
            stay eager; the weights and checkpoints are the same either way).
        channels_last: keep weights and batches in channels-last memory (faster convolutions with mixed
            precision on GPUs); outputs and checkpoints are unchanged.
    """

    def __init__(self, model: dict, loss: dict, optim: dict, run_config: dict | None = None,
                 trainable: list[str] | None = None, teacher_model: dict | None = None, compile: bool = False,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)   # train() gives the loggers the whole resolved run config instead
        self.net: MultiExitNetwork = build(model, key="model")
        self.criterion: LossComposer = build(loss, key="loss")
        self.criterion.check(self.net.num_exits, self.net.feature_widths)
        self.trainable_names = freeze_except(self.net, trainable) if trainable else None
        self._frozen_norms = frozen_batchnorms(self.net) if trainable else []  # plain list: not submodules
        self.teacher = self._build_teacher(teacher_model)
        self._hold_frozen_in_eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=self.memory_format)
        self._train_forward = torch.compile(self.net.forward) if compile else self.net.forward
        n = self.net.num_exits
        # one accuracy per exit and for the ensemble, per stage (keys avoid nn.Module.train)
        self.accuracy = nn.ModuleDict({
            f"{stage}_acc": nn.ModuleList([MulticlassAccuracy(self.net.num_classes, average="micro") for _ in range(n + 1)])
            for stage in STAGES
        })

    def _build_teacher(self, teacher_model: dict | None) -> MultiExitNetwork | None:
        wants = [name for name, term in self.criterion.terms.items() if getattr(term, "teacher", None) == "frozen"]
        if wants and teacher_model is None:
            raise ValueError(f"loss term {wants[0]!r} has teacher='frozen' but no teacher network is set "
                             f"(config key: teacher, a checkpoint or an earlier phase's name)")
        if teacher_model is None:
            return None
        if not wants:
            raise ValueError("a teacher network is set but no loss term uses it; set teacher=null or a "
                             "OneForAll term's teacher to 'frozen'")
        teacher: MultiExitNetwork = build(teacher_model, key="teacher")
        return teacher.requires_grad_(False).eval()

    def _hold_frozen_in_eval(self) -> None:
        """The teacher and the frozen BatchNorm layers stay in eval mode: their statistics never change."""
        for module in [*self._frozen_norms, *([self.teacher] if self.teacher is not None else [])]:
            module.eval()

    def train(self, mode: bool = True) -> MultiExitModule:
        """Set training or eval mode as ``nn.Module.train`` does, keeping the teacher and the frozen BatchNorm layers in
        eval."""
        super().train(mode)
        self._hold_frozen_in_eval()
        return self

    def on_train_epoch_start(self) -> None:  # Lightning restores per-module modes itself, without train()
        """Put the teacher and the frozen BatchNorm layers back in eval mode, and move scheduled loss weights (SDN's
        ramp) to this epoch."""
        self._hold_frozen_in_eval()
        self.criterion.set_progress(self.current_epoch, self.trainer.max_epochs)

    def logged_metrics(self) -> set[str]:
        """Every name this module logs during fit, which a callback may monitor (``val/acc/exit1``, ...)."""
        per_stage = ["loss/total", *(f"loss/{t}" for t in self.criterion.terms), *(f"acc/{n}" for n in self.metric_names)]
        return {f"{stage}/{name}" for stage in ("train", "val") for name in per_stage} | {
            "train/loss/total_step", "train/loss/total_epoch"}

    @property
    def metric_names(self) -> list[str]:
        """The names accuracies are logged under: ``exit1..exitK``, then ``ensemble``."""
        return exit_names(self.net.num_exits)

    def forward(self, x: torch.Tensor) -> ExitOutputs:
        """Every exit's logits and features for ``x``."""
        return self.net(x)

    def on_train_start(self) -> None:   # the loops are restored by now
        """On a resumed fit, on rank 0: loggers that can (``keep_rows_before``) drop the rows logged after the
        checkpoint, which come again."""
        if self.trainer.ckpt_path and self.trainer.is_global_zero:   # resumed: rows after the checkpoint come again
            for logger in self.trainer.loggers:
                if hasattr(logger, "keep_rows_before"):
                    logger.keep_rows_before(self.trainer.current_epoch, self.trainer.global_step)

    def on_fit_start(self) -> None:
        """Log the objective and, when only some parameters train, how many tensors train and how many BatchNorm layers
        are frozen."""
        log.info(f"objective: {self.criterion}")
        if self.trainable_names is not None:
            total = sum(1 for _ in self.net.parameters())
            log.info(f"trainable: {len(self.trainable_names)} of {total} parameter tensors "
                     f"({self.hparams['trainable']}); {len(self._frozen_norms)} BatchNorm layers frozen")

    def _shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        x = x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x
        outputs = self._train_forward(x) if stage == "train" else self.net(x)
        teacher = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher(x).logits[-1]
        total, terms = self.criterion(outputs, y, teacher)
        if stage == "train" and not torch.isfinite(total):
            raise TrainingDiverged(self._divergence_message(total, terms, outputs, y))
        on_step = stage == "train"
        # losses are means over every process under DDP (a no-op in one process)
        self.log(f"{stage}/loss/total", total, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=len(y))
        for name, value in terms.items():
            self.log(f"{stage}/loss/{name}", value, on_step=on_step, on_epoch=True, sync_dist=True, batch_size=len(y))
        accuracies = cast(Iterable[MulticlassAccuracy], self.accuracy[f"{stage}_acc"])   # the ModuleList of __init__
        for metric, logits, name in zip(accuracies, [*outputs.logits, outputs.ensemble], self.metric_names):
            metric(logits.detach(), y)
            self.log(f"{stage}/acc/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "ensemble")
        return total

    def _divergence_message(self, total: torch.Tensor, terms: dict[str, torch.Tensor], outputs: ExitOutputs,
                            y: torch.Tensor) -> str:
        broken_terms = [name for name, value in terms.items() if not torch.isfinite(value)]
        broken_exits = [exit_name(i) for i, logits in enumerate(outputs.logits)
                        if not torch.isfinite(logits).all() or not torch.isfinite(F.cross_entropy(logits, y))]
        return (f"training diverged at step {self.global_step} (epoch {self.current_epoch}): loss {total.item()}; "
                f"non-finite loss terms: {broken_terms or 'none'}; exits whose outputs or cross-entropy are not "
                f"finite: {broken_exits or 'none'}. No checkpoint was written from this step; the selected "
                f"checkpoint is the last good one. Lower optim.optimizer.lr or check the data.")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Log a training batch's losses and per-exit and ensemble accuracies and return its total loss;
        TrainingDiverged if that is not finite."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Log a validation batch's losses and per-exit and ensemble accuracies."""
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Log a test batch's losses and per-exit and ensemble accuracies."""
        self._shared_step(batch, "test")

    def configure_optimizers(self) -> Any:
        """The optimiser over the trainable parameters and, when ``optim.scheduler`` is set, its scheduler stepped every
        epoch."""
        optim = self.hparams["optim"]
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = build(optim["optimizer"], key="optim.optimizer")(trainable)
        if not optim.get("scheduler"):
            return optimizer
        scheduler = build(optim["scheduler"], key="optim.scheduler")(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def load_module(path: str | Path, map_location: str | torch.device = "cpu"):
    """The :class:`~scan_lightning.training.module.MultiExitModule` of a checkpoint: read once as plain data (one clear
    error for a missing, truncated or foreign file), rebuilt from its hyper-parameters, weights loaded."""
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint["hyper_parameters"])
    hparams["model"] = architecture_only(hparams["model"])
    if hparams.get("teacher_model"):
        hparams["teacher_model"] = architecture_only(hparams["teacher_model"])
    module = MultiExitModule(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    return module.to(map_location).eval()
