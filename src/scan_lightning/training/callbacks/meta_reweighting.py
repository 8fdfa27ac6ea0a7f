"""L2W's meta step as a callback: before training batches, the weight prediction network learns from a meta batch."""
from __future__ import annotations

from collections.abc import Sized
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from scan_lightning.losses.l2w import SampleWeightedCrossEntropy, meta_step


def l2w_term(module: pl.LightningModule) -> SampleWeightedCrossEntropy | None:
    """The module's L2W loss term, if it has one."""
    terms = getattr(getattr(module, "criterion", None), "terms", {})
    found = [t for t in terms.values() if isinstance(t, SampleWeightedCrossEntropy)]
    return found[0] if found else None


class MetaReweighting(pl.Callback):
    """L2W (Han et al., ECCV 2022, Alg. 1): before every ``interval``-th training batch, one meta step trains the L2W
    loss term's weight predictor (Adam at ``lr``) on :func:`~scan_lightning.losses.l2w.meta_step`'s objective, the
    look-ahead taken at the network optimiser's current learning rate.

    The meta set is ``meta_size`` images of the training split (a seeded draw; the validation split stays untouched
    for model selection and threshold search); each meta batch of ``batch_size`` images is drawn from it with a
    generator seeded by ``seed`` and the step, so a resumed run draws the same batches. One process only: under DDP
    each process would train its own predictor, so such runs are refused before training.
    """

    def __init__(self, meta_size: int = 1000, interval: int = 1, lr: float = 1e-3, batch_size: int = 128,
                 seed: int = 0) -> None:
        super().__init__()
        for name, value in (("meta_size", meta_size), ("interval", interval), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"callbacks.meta_reweighting.{name}={value!r} must be an integer >= 1")
        if not lr > 0:
            raise ValueError(f"callbacks.meta_reweighting.lr={lr} must be > 0")
        self.meta_size, self.interval, self.lr, self.batch_size, self.seed = meta_size, interval, lr, batch_size, seed
        self.optimizer: torch.optim.Optimizer | None = None
        self._saved: dict[str, Any] | None = None
        self._meta_set: Dataset | None = None
        self._meta_indices: torch.Tensor | None = None

    def check_run(self, module: pl.LightningModule, datamodule: pl.LightningDataModule, trainer: pl.Trainer) -> None:
        """ValueError, before training, unless the run has an L2W term, runs in one process and the meta set fits in
        the training split."""
        if l2w_term(module) is None:
            raise ValueError("callbacks.meta_reweighting (L2W's meta step) needs an L2W loss term "
                             "(SampleWeightedCrossEntropy: loss=l2w, or method=l2w)")
        if trainer.world_size > 1:
            raise ValueError(f"L2W's meta step runs in one process, but the trainer has {trainer.world_size}; "
                             "train L2W with one device (trainer=cpu, trainer=gpu)")
        n = len(cast(Sized, getattr(datamodule, "train_set", None) or []))
        if n and not self.meta_size <= n:
            raise ValueError(f"callbacks.meta_reweighting.meta_size={self.meta_size} is larger than the training "
                             f"split ({n} images); choose 1..{n}")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Make the predictor's optimiser (restored from a checkpoint when resuming) and draw the meta set."""
        if stage != "fit":
            return
        term = l2w_term(pl_module)
        if term is None or term.predictor is None:
            raise ValueError("callbacks.meta_reweighting needs an L2W loss term (loss=l2w)")
        self.optimizer = torch.optim.Adam(term.predictor.parameters(), lr=self.lr)
        if self._saved:
            self.optimizer.load_state_dict(self._saved)
        train_set = getattr(trainer.datamodule, "train_set", None)   # type: ignore[attr-defined]
        if train_set is None:
            raise ValueError("L2W's meta set is drawn from the data module's train_set; this data module has none")
        n = len(train_set)
        self._meta_set = train_set
        self._meta_indices = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[: self.meta_size]

    def _meta_batch(self, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._meta_indices is not None and self._meta_set is not None
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        pick = self._meta_indices[torch.randint(len(self._meta_indices), (self.batch_size,), generator=g)]
        items = [self._meta_set[int(i)] for i in pick]
        x = torch.stack([torch.as_tensor(item[0]) for item in items]).to(device)
        y = torch.as_tensor([int(item[1]) for item in items], device=device)
        return x, y

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Every ``interval``-th step: one meta step on a meta batch, then the predictor's Adam step."""
        if trainer.global_step % self.interval or self.optimizer is None:
            return
        term = l2w_term(pl_module)
        assert term is not None
        x, y = batch
        x_meta, y_meta = self._meta_batch(trainer.global_step, x.device)
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        loss = meta_step(pl_module.net, term, x, y, x_meta, y_meta, lr)   # type: ignore[arg-type]
        self.optimizer.zero_grad()
        predictor = term.predictor
        assert predictor is not None
        loss.backward(inputs=list(predictor.parameters()))
        self.optimizer.step()
        pl_module.log("train/meta/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(y_meta))

    def state_dict(self) -> dict[str, Any]:
        """The predictor's optimiser state (its weights are in the module's state)."""
        return self.optimizer.state_dict() if self.optimizer is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the predictor's optimiser state (now, or when :meth:`setup` makes it)."""
        self._saved = dict(state_dict) or None
        if self.optimizer is not None and self._saved:
            self.optimizer.load_state_dict(self._saved)
