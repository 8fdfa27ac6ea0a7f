"""The Hydra entry points: ``train``, ``evaluate``, ``export``, ``describe`` (``python -m scan_lightning.<entry>``)."""
