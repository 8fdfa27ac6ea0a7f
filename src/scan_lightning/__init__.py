"""scan_lightning: multi-exit image classifiers (SCAN, IMTA) on PyTorch Lightning + Hydra."""
import scan_lightning.utils.config  # noqa: F401  (registers the ${sl.*} config resolvers, once)

__version__ = "0.1.0"


def __getattr__(name: str):
    """``scan_lightning.Predictor`` without importing torch code at package import."""
    if name in ("Predictor", "Predictions"):
        from scan_lightning import serving

        return getattr(serving, name)
    raise AttributeError(f"module 'scan_lightning' has no attribute {name!r}")
