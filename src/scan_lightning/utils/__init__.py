"""The bottom layer: building objects from config (Hydra ``instantiate``), config errors, the package's logger."""
