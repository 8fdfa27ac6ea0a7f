"""Callbacks: the post-fit threshold search, and the checkpoint a stopped run leaves."""
from scan_lightning.callbacks.interrupt import InterruptCheckpoint
from scan_lightning.callbacks.threshold_search import ThresholdSearch

__all__ = ["InterruptCheckpoint", "ThresholdSearch"]
