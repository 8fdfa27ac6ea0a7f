"""Save a resumable checkpoint when a run is stopped by SIGTERM (what SLURM sends before its kill) or SIGINT."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import OnExceptionCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Lightning's :class:`OnExceptionCheckpoint`, for signals only: a run that failed for another reason (e.g. a
    diverged loss) leaves no checkpoint of its broken state. Resume with ``ckpt_path=<dirpath>/interrupted.ckpt``."""

    def __init__(self, dirpath: str, filename: str = "interrupted") -> None:
        super().__init__(dirpath, filename)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Save the checkpoint only for a signal: Lightning's SIGTERMException or a KeyboardInterrupt (SIGINT)."""
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            super().on_exception(trainer, pl_module, exception)
