"""Serving a trained or exported network: :class:`Predictor` (really exits early) and its :class:`Predictions`."""
from scan_lightning.serving.predictor import Predictions, Predictor

__all__ = ["Predictions", "Predictor"]
