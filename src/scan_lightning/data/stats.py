"""Per-channel mean and standard deviation of images, on a bounded seeded sample."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset


def sample_indices(indices: Sequence[int], max_samples: int, seed: int) -> list[int]:
    """At most ``max_samples`` of ``indices``, drawn by ``seed`` (all of them, in order, when they fit)."""
    indices = list(indices)
    if len(indices) <= max_samples:
        return indices
    pick = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:max_samples]
    return [indices[i] for i in sorted(pick.tolist())]


def channel_stats(dataset: Dataset, indices: Sequence[int], batch_size: int = 64,
                  num_workers: int = 0) -> tuple[list[float], list[float]]:
    """Mean and std per channel over every pixel of ``dataset[i]`` for ``i`` in ``indices`` (images as (C, H, W)
    tensors in [0, 1] of one size), accumulated in float64."""
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    pixels = 0
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=num_workers)
    for x, _ in loader:
        x = x.double().transpose(0, 1).flatten(1)   # (C, N*H*W)
        total = x.sum(1) if total is None else total + x.sum(1)
        squares = (x * x).sum(1) if squares is None else squares + (x * x).sum(1)
        pixels += x.shape[1]
    if total is None or squares is None:   # both are set by the first batch
        raise ValueError("no images to compute data.mean / data.std from")
    mean = total / pixels
    std = (squares / pixels - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)   # a constant channel: no blow-up
    return mean.tolist(), std.tolist()
