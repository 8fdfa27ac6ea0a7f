"""Running modules in eval mode for a while, each one's training flag restored afterwards (also on errors)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """``modules`` in eval mode inside the block; each one's own train/eval flags (submodules too) back after it."""
    flags = [[(m, m.training) for m in module.modules()] for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for saved in flags:
            for m, training in saved:
                m.training = training
