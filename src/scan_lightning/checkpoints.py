"""Reading Lightning checkpoints of :class:`~scan_lightning.module.MultiExitModule` as plain data."""
from __future__ import annotations

from pathlib import Path

import torch


def read_checkpoint(path: str | Path) -> dict:
    """A module checkpoint, loaded as plain data (``weights_only=True``) on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # truncated, corrupt, or pickled objects beyond plain data
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {str(path)!r} cannot be read as plain data: it is truncated, corrupt or not a "
                         f"scan_lightning checkpoint ({reason[:160]})") from None
    missing = [k for k in ("state_dict", "hyper_parameters") if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} is not a scan_lightning checkpoint (it has no {missing[0]!r}); "
                         f"use one written by python -m scan_lightning.train")
    return checkpoint


def load_module(path: str | Path, map_location: str | torch.device = "cpu"):
    """The :class:`~scan_lightning.module.MultiExitModule` of a checkpoint: read once as plain data (one clear
    error for a missing, truncated or foreign file), rebuilt from its hyper-parameters, weights loaded."""
    from scan_lightning.module import MultiExitModule

    checkpoint = read_checkpoint(path)
    module = MultiExitModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return module.to(map_location).eval()


def network_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The multi-exit network's weights (``net.*``) from a module checkpoint, prefix removed."""
    return {k[4:]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
