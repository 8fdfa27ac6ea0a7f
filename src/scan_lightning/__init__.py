"""scan_lightning: multi-exit image classifiers (SCAN, IMTA) on PyTorch Lightning + Hydra."""
from scan_lightning.config import register_resolvers

register_resolvers()
__version__ = "0.1.0"
