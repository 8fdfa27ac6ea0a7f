"""What a multi-exit network returns in training: every exit's logits and features (read by the loss terms)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class ExitOutputs(NamedTuple):
    """Per-exit logits and pooled features, shallowest first."""

    logits: list[torch.Tensor]
    features: list[torch.Tensor]

    @property
    def ensemble(self) -> torch.Tensor:
        """Mean of all exits' logits (SCAN's fallback prediction)."""
        return ensemble_logits(self.logits)


def ensemble_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(logits)).mean(0)
