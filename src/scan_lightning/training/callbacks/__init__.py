"""Callbacks: the post-fit threshold search, the checkpoint a stopped run leaves, generator state for resume, the
W&B dashboard during fit."""
from scan_lightning.training.callbacks.interrupt import InterruptCheckpoint
from scan_lightning.training.callbacks.meta_reweighting import MetaReweighting
from scan_lightning.training.callbacks.rng_state import RngState
from scan_lightning.training.callbacks.threshold_search import ThresholdSearch
from scan_lightning.training.callbacks.wandb_dashboard import WandbDashboard

__all__ = ["InterruptCheckpoint", "MetaReweighting", "RngState", "ThresholdSearch", "WandbDashboard"]
