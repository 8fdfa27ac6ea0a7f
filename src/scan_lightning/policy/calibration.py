"""Per-exit temperature scaling (Guo et al., ICML 2017) and per-exit expected calibration error.

Each exit gets one temperature T > 0, fitted by minimising the NLL of ``softmax(logits / T)`` on data the
threshold search never sees (:func:`split_cache`). Dividing by a positive scalar never changes an exit's
argmax, so accuracy is untouched; only the confidences the thresholds are compared with move.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from scan_lightning.policy.cache import ExitCache

BOUNDS = (0.05, 20.0)   # the temperatures a fit may return


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must be (N, C) and (N,)")
    if labels.numel() == 0:
        raise ValueError("cannot fit a temperature on an empty set of samples")


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` (float64)."""
    return F.cross_entropy(logits.double() / temperature, labels.long()).item()


def _slope(z: torch.Tensor, labels: torch.Tensor, beta: float) -> tuple[float, float]:
    """First and second derivative of the NLL of ``softmax(beta * z)`` with respect to ``beta``."""
    p = torch.softmax(beta * z, dim=-1)
    m1, m2 = (p * z).sum(-1), (p * z * z).sum(-1)
    return (m1 - z.gather(1, labels[:, None])[:, 0]).mean().item(), (m2 - m1 * m1).mean().item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = BOUNDS,
                    tol: float = 1e-7, max_iter: int = 100) -> float:
    """The T in ``bounds`` minimising the NLL of ``logits / T`` (deterministic).

    The NLL is convex in beta = 1 / T, so its minimum is where the slope in beta crosses zero: Newton steps
    on beta inside a bracket that shrinks every step, bisecting when a step would leave it. A fit no
    better than T = 1 (e.g. constant logits) returns 1.0; perfectly separated data give the lower bound.
    """
    _check_logits(logits, labels)
    if not 0 < bounds[0] < bounds[1]:
        raise ValueError(f"bounds={bounds} must satisfy 0 < low < high")
    z, labels = logits.double(), labels.long()
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    if _slope(z, labels, lo)[0] >= 0:
        beta = lo
    elif _slope(z, labels, hi)[0] <= 0:
        beta = hi
    else:
        beta = min(max(1.0, lo), hi)
        for _ in range(max_iter):
            g, h = _slope(z, labels, beta)
            lo, hi = (lo, beta) if g > 0 else (beta, hi)
            step = beta - g / h if h > 0 else math.nan
            nxt = step if lo < step < hi else (lo + hi) / 2
            if abs(nxt - beta) <= tol * beta:
                beta = nxt
                break
            beta = nxt
    t = 1.0 / beta
    return t if nll(logits, labels, t) < nll(logits, labels, 1.0) else 1.0


def fit_temperatures(cache: ExitCache, bounds: tuple[float, float] = BOUNDS) -> list[float]:
    """One temperature per exit, each fitted on that exit's logits."""
    return [fit_temperature(lg, cache.labels, bounds) for lg in cache.logits]


def _check_temperatures(temperatures: Sequence[float], num_exits: int) -> list[float]:
    temps = [float(t) for t in temperatures]
    if len(temps) != num_exits or not all(t > 0 and math.isfinite(t) for t in temps):
        raise ValueError(f"temperatures {temps} must be {num_exits} finite values > 0")
    return temps


def calibrated_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` in float64 (no ties created by rounding, so the argmax is kept)."""
    return torch.softmax(logits.double() / temperature, dim=-1)


def calibration_errors(cache: ExitCache, temperatures: Sequence[float] | None = None,
                       n_bins: int = 15) -> list[float]:
    """Per-exit expected calibration error (torchmetrics, L1, ``n_bins`` equal-width bins) of the softmax at
    each exit's temperature (1 when ``temperatures`` is None)."""
    temps = _check_temperatures(temperatures if temperatures is not None else [1.0] * cache.num_exits,
                                cache.num_exits)
    metric = MulticlassCalibrationError(num_classes=cache.logits.shape[-1], n_bins=n_bins, norm="l1")
    errors = []
    for lg, t in zip(cache.logits, temps):
        metric.reset()
        # probabilities, not logits: torchmetrics skips its softmax when every value already lies in [0, 1]
        errors.append(metric(calibrated_probabilities(lg, t), cache.labels.long()).item())
    return errors


def split_cache(cache: ExitCache, fraction: float, seed: int) -> tuple[ExitCache, ExitCache]:
    """Seeded, disjoint split into (search part, calibration part); ``fraction`` of the samples calibrate.

    Each part keeps the samples in their original order.
    """
    n = cache.labels.shape[0]
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"calibration fraction={fraction} must lie strictly between 0 and 1")
    n_cal = round(n * fraction)
    if not 0 < n_cal < n:
        raise ValueError(f"calibration fraction={fraction} of {n} samples leaves {n_cal} to calibrate and "
                         f"{n - n_cal} to search: both parts must be non-empty")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    cal, search = perm[:n_cal].sort().values, perm[n_cal:].sort().values
    return (ExitCache(cache.logits[:, search], cache.labels[search]),
            ExitCache(cache.logits[:, cal], cache.labels[cal]))


@dataclass
class CalibrationResult:
    """Temperatures fitted on one part; ECE before (T = 1) and after on another part."""

    temperatures: list[float]
    ece_before: list[float]
    ece_after: list[float]
    n_bins: int = 15

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data."""
        return {"temperatures": self.temperatures, "ece_before": self.ece_before, "ece_after": self.ece_after,
                "n_bins": self.n_bins}


def calibrate(fit_on: ExitCache, report_on: ExitCache, n_bins: int = 15,
              bounds: tuple[float, float] = BOUNDS) -> CalibrationResult:
    """Temperatures fitted on ``fit_on``; per-exit ECE before and after reported on ``report_on``."""
    if fit_on.num_exits != report_on.num_exits or fit_on.logits.shape[-1] != report_on.logits.shape[-1]:
        raise ValueError(f"caches differ: {fit_on.num_exits} exits x {fit_on.logits.shape[-1]} classes vs "
                         f"{report_on.num_exits} x {report_on.logits.shape[-1]}")
    temps = fit_temperatures(fit_on, bounds)
    return CalibrationResult(temps, calibration_errors(report_on, None, n_bins),
                             calibration_errors(report_on, temps, n_bins), n_bins)
