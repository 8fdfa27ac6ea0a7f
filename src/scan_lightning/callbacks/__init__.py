"""Deprecated: the callbacks live in :mod:`scan_lightning.training.callbacks`."""
import warnings

from scan_lightning.training.callbacks import InterruptCheckpoint, RngState, ThresholdSearch, WandbDashboard

warnings.warn("scan_lightning.callbacks is deprecated; import scan_lightning.training.callbacks", DeprecationWarning,
              stacklevel=2)
__all__ = ["InterruptCheckpoint", "RngState", "ThresholdSearch", "WandbDashboard"]
