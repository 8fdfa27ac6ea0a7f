"""Gradient rescaling: IMTA's Gradient Equilibrium as an autograd function."""
from __future__ import annotations

import torch


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the incoming gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, but the gradient flowing back through it is multiplied by ``scale``."""
    return _ScaleGradient.apply(x, scale)


def equilibrium_scales(i: int, num_exits: int) -> tuple[float, float]:
    """GE scales for the feature after section ``i`` (0-based) of ``num_exits``: (to exit i, to the next section).

    With 1-based j = i + 1 of k exits: 1 / (k - j + 1) towards exit j and (k - j) / (k - j + 1) onwards, so
    every section receives the mean, not the sum, of the exit gradients that pass through it.
    """
    remaining = num_exits - i
    return 1.0 / remaining, (remaining - 1) / remaining
