"""Wall-clock time of the real early-exit predictor against the plain network, on the same images.

Both sides run the same deployment form (:mod:`scan_lightning.runtime.forms`), interleaved pass by pass so
that load changes on the machine hit both alike; every call is timed alone (an accelerator is synchronised
before the clock is read), so each side gets throughput (median pass, with its spread) and per-batch
latency percentiles. Speed is said as "1.30x faster" or "0.80x the speed", never "x fewer".
"""
from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from scan_lightning.cost.latency import LatencyTable
from scan_lightning.cost.macs import CostTable
from scan_lightning.models.multi_exit import SectionOutput, plain_runs_every_exit
from scan_lightning.policy.exit_policy import ExitPolicy
from scan_lightning.runtime.backend import Backend, run_plain
from scan_lightning.runtime.early_exit import EarlyExitRunner


def speed_phrase(ratio: float) -> str:
    """``1.30x faster`` or ``0.80x the speed``."""
    return f"{ratio:.2f}x faster" if ratio >= 1.0 else f"{ratio:.2f}x the speed"


def mac_phrase(ratio: float) -> str:
    """A MAC ratio (plain / early exit) as ``2.43x fewer MACs`` or, below 1, ``1.27x more MACs``."""
    return f"{ratio:.2f}x fewer MACs" if ratio >= 1.0 else f"{1.0 / ratio:.2f}x more MACs"


class Stopwatch:
    """Times calls on ``device``, synchronising an accelerator before reading the clock."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def sync(self) -> None:
        """Wait for the accelerator's queued work (a no-op on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def ms(self, fn: Callable[[], object]) -> float:
        """Milliseconds one call of ``fn`` takes, the accelerator synchronised on both sides."""
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return 1e3 * (time.perf_counter() - start)

    def median_ms(self, fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
        """Median milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
        for _ in range(warmup):
            fn()
        return statistics.median(self.ms(fn) for _ in range(repeats))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@dataclass
class SideTiming:
    """One side's passes over the same images: ms per image (median pass, quartiles), per-call latency."""

    ms_per_image: float
    ms_per_image_q1: float
    ms_per_image_q3: float
    call_p50_ms: float
    call_p95_ms: float

    @property
    def images_per_s(self) -> float:
        """Throughput of the median pass."""
        return 1e3 / self.ms_per_image

    @classmethod
    def from_calls(cls, passes: list[list[float]], images: int) -> SideTiming:
        """From the per-call milliseconds of every pass over ``images`` images."""
        per_image = [sum(p) / images for p in passes]
        q = statistics.quantiles(per_image, n=4) if len(per_image) > 1 else per_image * 3
        calls = [c for p in passes for c in p]
        return cls(statistics.median(per_image), q[0], q[-1], _percentile(calls, 50), _percentile(calls, 95))


def interleaved_calls(fns: list[Callable[[torch.Tensor], object]], batches: list[torch.Tensor], repeats: int,
                      watch: Stopwatch) -> list[list[list[float]]]:
    """``repeats`` timed passes of every function over ``batches`` (one warm-up pass each first), the functions
    alternating pass by pass (their order flipped every round). Returns, per function, per pass, the ms of
    every call."""
    for fn in fns:
        for x in batches:
            fn(x)
    out: list[list[list[float]]] = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for j in order:
            out[j].append([watch.ms(functools.partial(fns[j], x)) for x in batches])
    return out


@dataclass
class TimingResult:
    """Both sides timed on the same images at one batch size, with the MAC speed-up of the early-exit side."""
    batch_size: int
    images: int
    device: str
    plain: SideTiming
    early_exit: SideTiming
    mac_speedup: float      # plain-network MACs / mean honest MACs of the early-exit run, same images

    @property
    def wall_speedup(self) -> float:
        """Plain network's ms per image / early exit's (> 1: early exit is faster)."""
        return self.plain.ms_per_image / self.early_exit.ms_per_image

    @property
    def efficiency(self) -> float:
        """wall speed-up / MAC speed-up: how much of the counted saving is real."""
        return self.wall_speedup / self.mac_speedup

    @property
    def plain_ms_per_image(self) -> float:
        """The plain network's ms per image (median pass)."""
        return self.plain.ms_per_image

    @property
    def early_exit_ms_per_image(self) -> float:
        """The early-exit predictor's ms per image (median pass)."""
        return self.early_exit.ms_per_image

    def to_dict(self) -> dict:
        """JSON layout, derived figures included."""
        return {"batch_size": self.batch_size, "images": self.images, "device": self.device,
                "plain": {**asdict(self.plain), "images_per_s": self.plain.images_per_s},
                "early_exit": {**asdict(self.early_exit), "images_per_s": self.early_exit.images_per_s},
                "plain_ms_per_image": self.plain_ms_per_image, "early_exit_ms_per_image": self.early_exit_ms_per_image,
                "wall_speedup": self.wall_speedup, "mac_speedup": self.mac_speedup, "efficiency": self.efficiency}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimingResult:
        """From :meth:`to_dict`'s layout (the derived figures are recomputed)."""
        def side(d: Mapping[str, Any]) -> SideTiming:
            return SideTiming(**{k: float(d[k]) for k in SideTiming.__dataclass_fields__})

        plain = data["plain"] if "plain" in data else data["full"]     # "full": files written before the redesign
        return cls(int(data["batch_size"]), int(data["images"]), str(data["device"]), side(plain),
                   side(data["early_exit"]), float(data["mac_speedup"]))


@torch.inference_mode()
def time_early_exit(net: Backend, predictor: EarlyExitRunner, costs: CostTable, images: torch.Tensor,
                    batch_size: int, repeats: int = 5) -> TimingResult:
    """Time the plain network and the early-exit predictor over ``images`` in batches of ``batch_size``."""
    device = net.device
    batches = list(images.to(device).split(batch_size))
    n = images.shape[0]
    plain, early = interleaved_calls([functools.partial(run_plain, net), predictor], batches, repeats,
                                   Stopwatch(device))
    macs = torch.cat([predictor(x).macs for x in batches]).double().mean().item()
    return TimingResult(batch_size, n, str(device), SideTiming.from_calls(plain, n), SideTiming.from_calls(early, n),
                        costs.plain_macs / macs)


def measure_wall_clock(net: Backend, costs: CostTable, policy: ExitPolicy, images: torch.Tensor,
                       batch_sizes: Iterable[int] = (1, 256), repeats: int = 5) -> list[TimingResult]:
    """:func:`time_early_exit` at each batch size, the predictor at ``policy``, both sides in ``net``'s form."""
    predictor = EarlyExitRunner(net, policy, costs)
    return [time_early_exit(net, predictor, costs, images, int(bs), int(repeats)) for bs in batch_sizes]


def first_images(batches: Iterable, n: int) -> torch.Tensor:
    """The first ``n`` images of an iterable of ``(x, y)`` batches."""
    taken, count = [], 0
    for x, _ in batches:
        taken.append(x)
        count += x.shape[0]
        if count >= n:
            break
    return torch.cat(taken)[:n]


@torch.inference_mode()
def measure_latency(net: Backend, images: torch.Tensor, batch_size: int = 1, repeats: int = 20
                    ) -> LatencyTable:
    """Time each section and each exit of ``net`` on ``batch_size`` of ``images`` (median of ``repeats``)."""
    x = net.prepare(images[:batch_size])
    watch = Stopwatch(x.device)
    hs: list[SectionOutput] = []
    h: SectionOutput = x
    for i in range(net.num_exits):      # the input each section sees
        hs.append(h)
        h = net.section(i, h)
    sections: list[float] = []
    exits: list[float] = []
    previous: torch.Tensor | None = None
    for i in range(net.num_exits):
        h_in = hs[i]
        out = net.section(i, h_in)
        sections.append(watch.median_ms(functools.partial(net.section, i, h_in), repeats) / batch_size)
        exits.append(watch.median_ms(functools.partial(net.exit, i, out, previous), repeats) / batch_size)
        previous = net.exit(i, out, previous)
    every_exit = plain_runs_every_exit(net.isc)        # no deep head stands alone: the plain network is every exit
    deep = 0.0 if every_exit else watch.median_ms(functools.partial(net.deep, out), repeats) / batch_size
    return LatencyTable(batch_size, str(x.device), sections, exits, deep, every_exit)
