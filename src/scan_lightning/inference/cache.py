"""All exits' logits on a dataset, computed once; threshold searches are pure tensor work on them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from scan_lightning.inference.predictor import check_fallback, choose_exits, exit_confidence
from scan_lightning.models.multi_exit import MultiExitNetwork


@dataclass
class ExitCache:
    logits: torch.Tensor   # (K, N, C)
    labels: torch.Tensor   # (N,)

    @property
    def num_exits(self) -> int:
        return self.logits.shape[0]

    def confidence(self, temperatures: Sequence[float] | None = None) -> torch.Tensor:
        """(K, N) max softmax per exit at its temperature."""
        temps = temperatures or [1.0] * self.num_exits
        return torch.stack([exit_confidence(lg, t)[0] for lg, t in zip(self.logits, temps)])

    def correct(self) -> torch.Tensor:
        """(K + 1, N) booleans: is each exit, then the ensemble, right on each sample."""
        preds = torch.cat([self.logits.argmax(-1), self.logits.mean(0).argmax(-1)[None]])
        return preds == self.labels[None]

    def outcome(self, fallback: str = "ensemble") -> torch.Tensor:
        """(K + 1, N): is each exit right, then the prediction for samples no exit claims (``fallback``)."""
        check_fallback(fallback)
        correct = self.correct()
        return correct if fallback == "ensemble" else torch.cat([correct[:-1], correct[-2:-1]])

    def accuracy(self) -> torch.Tensor:
        """(K + 1,) accuracy of each exit and of the ensemble."""
        return self.correct().float().mean(1)


@torch.no_grad()
def collect_outputs(net: MultiExitNetwork, batches: Iterable, device: torch.device | str = "cpu") -> ExitCache:
    """Run the whole network once over ``batches`` of ``(x, y)`` in eval mode."""
    was_training = net.training
    net.eval()
    logits, labels = [], []
    try:
        for x, y in batches:
            logits.append(torch.stack(net(x.to(device)).logits).float().cpu())
            labels.append(y.cpu())
    finally:
        net.train(was_training)
    return ExitCache(torch.cat(logits, dim=1), torch.cat(labels))


@dataclass
class DynamicResult:
    """Threshold-controlled inference on a cached dataset."""

    accuracy: float
    mean_macs: float
    exit_fractions: list[float]   # K exits, then the fallback (no exit claimed the sample)

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "mean_macs": self.mean_macs, "exit_fractions": self.exit_fractions}


def evaluate_thresholds(cache: ExitCache, thresholds: Sequence[float], exit_macs: torch.Tensor,
                        temperatures: Sequence[float] | None = None, fallback: str = "ensemble") -> DynamicResult:
    """What :class:`EarlyExitPredictor` would give, from cached logits. ``exit_macs``: (K + 1,)."""
    chosen = choose_exits(cache.confidence(temperatures), torch.as_tensor(thresholds, dtype=torch.float32))
    correct = cache.outcome(fallback).gather(0, chosen[None])[0]
    fractions = torch.bincount(chosen, minlength=cache.num_exits + 1).float() / chosen.numel()
    return DynamicResult(correct.float().mean().item(), exit_macs[chosen].double().mean().item(), fractions.tolist())
