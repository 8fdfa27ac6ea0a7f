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
    """The element-wise mean of the given exits' logits."""
    return torch.stack(list(logits)).mean(0)


def exit_name(index: int) -> str:
    """The name of exit ``index`` (0-based) in metrics, tables and figures: ``exit1`` is the shallowest."""
    return f"exit{index + 1}"


def exit_names(num_exits: int, last: str | None = "ensemble") -> list[str]:
    """``exit1 .. exitK``, then ``last`` (``ensemble``, ``fallback``, ...) unless it is ``None``."""
    return [exit_name(i) for i in range(num_exits)] + ([last] if last is not None else [])
