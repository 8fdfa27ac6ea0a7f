"""Wall-clock time of the real early-exit predictor against the full network, on the same images."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from scan_lightning.inference.cost import CostTable
from scan_lightning.inference.deploy import fold_batchnorm
from scan_lightning.inference.policy import ExitPolicy
from scan_lightning.inference.predictor import EarlyExitPredictor, full_network
from scan_lightning.models.multi_exit import MultiExitNetwork


@dataclass
class TimingResult:
    batch_size: int
    images: int
    full_ms_per_image: float
    early_exit_ms_per_image: float
    wall_speedup: float
    mac_speedup: float      # plain-network MACs / mean honest MACs of the early-exit run, same images

    @property
    def efficiency(self) -> float:
        """wall speed-up / MAC speed-up: how much of the counted saving is real."""
        return self.wall_speedup / self.mac_speedup

    def to_dict(self) -> dict:
        return {**asdict(self), "efficiency": self.efficiency}


def _pass_time(fn, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for x in batches:
        fn(x)
    return time.perf_counter() - start


def _best_times(fns: list, batches: list[torch.Tensor], repeats: int) -> list[float]:
    """Best of ``repeats`` passes of each function over ``batches``, the functions interleaved so that
    load changes on the machine hit all of them alike; one warm-up pass each first."""
    for fn in fns:
        _pass_time(fn, batches)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for j, fn in enumerate(fns):
            best[j] = min(best[j], _pass_time(fn, batches))
    return best


@torch.inference_mode()
def time_early_exit(net: MultiExitNetwork, predictor: EarlyExitPredictor, costs: CostTable, images: torch.Tensor,
                    batch_size: int, repeats: int = 3) -> TimingResult:
    """Time the plain full network and the early-exit predictor over ``images`` in batches of ``batch_size``."""
    net.eval()
    batches = list(images.split(batch_size))
    n = images.shape[0]
    full, early = _best_times([lambda x: full_network(net, x), predictor], batches, repeats)
    macs = torch.cat([predictor(x).macs for x in batches]).mean().item()
    return TimingResult(batch_size, n, 1e3 * full / n, 1e3 * early / n, full / early, costs.plain_macs / macs)


def measure_wall_clock(net: MultiExitNetwork, costs: CostTable, policy: ExitPolicy, images: torch.Tensor,
                       batch_sizes=(1, 256), repeats: int = 3) -> list[TimingResult]:
    """:func:`time_early_exit` at each batch size, for the predictor at ``thresholds``.

    Both the full network and the predictor run the deployment form of ``net``: BatchNorm folded
    into the convolutions (:func:`fold_batchnorm`).
    """
    net = fold_batchnorm(net)
    predictor = EarlyExitPredictor(net, policy, costs)
    return [time_early_exit(net, predictor, costs, images, int(bs), int(repeats)) for bs in batch_sizes]


def first_images(batches, n: int) -> torch.Tensor:
    """The first ``n`` images of an iterable of ``(x, y)`` batches."""
    taken, count = [], 0
    for x, _ in batches:
        taken.append(x)
        count += x.shape[0]
        if count >= n:
            break
    return torch.cat(taken)[:n]
