"""Post-fit callbacks."""
from scan_lightning.callbacks.threshold_search import ThresholdSearch

__all__ = ["ThresholdSearch"]
