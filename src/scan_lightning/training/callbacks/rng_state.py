"""Random-number-generator state in every checkpoint, so a resumed run draws what the uninterrupted run drew."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


def rng_states() -> dict[str, Any]:
    """The global generators of Python, NumPy and torch (CPU and every GPU) as plain data (loads with
    ``weights_only=True``: NumPy's key array is kept as a tensor)."""
    state = np.random.get_state()
    if not isinstance(state, tuple):   # the legacy tuple, as long as the global generator is numpy's MT19937
        raise TypeError(f"numpy's global generator state is a {type(state).__name__}, not MT19937's tuple")
    kind, keys, pos, has_gauss, gauss = state
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore the global generators of Python, NumPy and torch (and of the GPUs, when there are any) from
    :func:`rng_states`' output."""
    random.setstate(tuple(states["python"][:1]) + (tuple(states["python"][1]),) + tuple(states["python"][2:]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RngState(pl.Callback):
    """Saves the generators' state with every checkpoint and restores it on resume. Lightning restores the
    weights, optimiser, scheduler and loop counters but not the generators, so a resumed run shuffled and
    augmented differently from the run it continues."""

    def state_dict(self) -> dict[str, Any]:
        """The generators' states, saved in the checkpoint (:func:`rng_states`)."""
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the generators from a checkpoint's states; an empty state (none saved) changes nothing."""
        if state_dict:
            set_rng_states(state_dict)
