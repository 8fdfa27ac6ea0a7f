"""The package's console output: one logger per module, rank 0 only, so tables reach the run's log file too.

Under Hydra (``python -m scan_lightning.train|evaluate|export|describe``) the job logging config sends these
records to the console and to ``<output_dir>/<task>.log``. Called from Python, configure ``logging`` yourself
(e.g. ``logging.basicConfig(level=logging.INFO)``) to see them.
"""
from __future__ import annotations

import io
import logging
from typing import Any

from pytorch_lightning.utilities import rank_zero_only

logging.getLogger("scan_lightning").setLevel(logging.INFO)


class RankZeroLogger(logging.LoggerAdapter):
    """A logger that speaks on the global rank-0 process only (every process under DDP imports the package)."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log the record on the global rank-0 process; other processes drop it."""
        if getattr(rank_zero_only, "rank", 0) == 0:
            super().log(level, msg, *args, **kwargs)


def get_logger(name: str) -> RankZeroLogger:
    """A logger for ``name`` (a module's ``__name__``) that speaks on rank 0 only."""
    return RankZeroLogger(logging.getLogger(name), {})


def render(*renderables: Any, width: int = 120) -> str:
    """Rich tables and markup as plain text, for a log record."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    for r in renderables:
        console.print(r)
    return buffer.getvalue().rstrip("\n")
