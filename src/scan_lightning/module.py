"""Deprecated: ``MultiExitModule`` lives in :mod:`scan_lightning.training.module`."""
import warnings

from scan_lightning.training.module import MultiExitModule

warnings.warn("scan_lightning.module is deprecated; import scan_lightning.training.module", DeprecationWarning,
              stacklevel=2)
__all__ = ["MultiExitModule"]
